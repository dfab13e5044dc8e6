"""Where the project's files are, in a checkout or in an installed package.

A checkout has ``mini_zoo/`` and ``third_party/`` beside ``repro/``; an installed package carries them inside
``repro/`` (pyproject.toml maps them in as package data). ImageNet checkpoints are never shipped: they are
looked for in ``$REPRO_CHECKPOINTS``, else ``checkpoints/`` of the checkout, else ``checkpoints/`` of the
current directory (an installed package has no checkout).
"""
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent


def data_dir(name):
    """The folder ``name`` (``mini_zoo`` or ``third_party``) of this installation."""
    for candidate in (PACKAGE / name, CHECKOUT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the package's {} folder is missing (looked in {} and {}): reinstall repro".format(
        name, PACKAGE / name, CHECKOUT / name))


def in_checkout():
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "repro" / "__init__.py").is_file()


def checkpoint_dir():
    """Where the ImageNet checkpoints are looked for and downloaded to."""
    if os.environ.get("REPRO_CHECKPOINTS"):
        return Path(os.environ["REPRO_CHECKPOINTS"])
    return (CHECKOUT if in_checkout() else Path.cwd()) / "checkpoints"
