"""Shared pieces of the command-line entry points: logging, one-line errors, checkpoint lookup, option
types and output checks. Imports no engine, so that ``--help`` and bad arguments answer at once."""
import argparse
import contextlib
import contextvars
import errno
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path


class UsageError(ValueError):
    """Bad input from the command line; shown as one line, exit status 2."""


class RunFailed(RuntimeError):
    """A run failed for a reason its message states in full (e.g. a worker process); exit status 1."""


_RAISE_USAGE_ERRORS = contextvars.ContextVar("raise_usage_errors", default=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors become `UsageError` (with argparse's message) inside
    `usage_errors_raised` — the Python API — and exit with status 2 as usual on the command line."""

    def error(self, message):
        if _RAISE_USAGE_ERRORS.get():
            raise UsageError("invalid settings: {}".format(message))
        super().error(message)


@contextlib.contextmanager
def usage_errors_raised():
    token = _RAISE_USAGE_ERRORS.set(True)
    try:
        yield
    finally:
        _RAISE_USAGE_ERRORS.reset(token)


def finite_float(text):
    """An argparse type: a finite number (``nan`` and ``inf`` parse as floats but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number".format(text)) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("{!r} is not a finite number".format(text))
    return value


def _unwritable_folder(path):
    """Why a folder cannot be written at ``path`` (it need not exist yet), or None when it can."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "{} is a file, not a folder".format(path)
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            return "{} is a broken symbolic link".format(existing)
        existing = existing.parent
    if not existing.is_dir():
        return "{} is a file, not a folder".format(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return "{} is not writable by this user".format(existing)
    return None


def check_writable_folder(path, option="--out"):
    """Raise UsageError unless ``path`` is, or can be created as, a folder this process may write in.
    Creates nothing: a run whose inputs turn out to be bad leaves no trace."""
    problem = _unwritable_folder(path)
    if problem:
        raise UsageError("{} {}: {}; choose another {}".format(option, path, problem, option))


def check_writable_file(path, option):
    """Raise UsageError unless a file can be written at ``path`` (its folder exists or can be made)."""
    path = Path(path)
    problem = ("{} is a folder: give a file name".format(path) if path.is_dir() else
               _unwritable_folder(path.parent) or (
                   "{} exists and is not writable".format(path) if path.exists() and not os.access(path, os.W_OK)
                   else None))
    if problem:
        raise UsageError("{} {}: {}".format(option, path, problem))


def os_error_message(error):
    """One line for a file-system error: what failed, on which file, and what to do."""
    where = " ".join(str(name) for name in (error.filename, error.filename2) if name)
    advice = {errno.ENOSPC: "free some space (or choose another output folder) and re-run the same command",
              errno.EDQUOT: "free some space (or choose another output folder) and re-run the same command",
              errno.EACCES: "check the permissions or choose another output folder",
              errno.EPERM: "check the permissions or choose another output folder",
              errno.EROFS: "choose an output folder on a writable file system"}.get(
        error.errno, "check the path and re-run the same command")
    return "{}{}: {}; results committed so far are kept".format(
        error.strerror or error, " ({})".format(where) if where else "", advice)


def setup_logging(verbose=False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("fontTools", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def checkpoint_path(spec, load=None):
    """``--load`` if given, else the bundled file (miniature zoo), else the zoo's file name under
    ``$REPRO_CHECKPOINTS`` or ``checkpoints/`` (`repro.resources.checkpoint_dir`)."""
    from repro import resources
    if load:
        return Path(load)
    if getattr(spec, "weights", None):          # a library model (repro.external): its file, or 'pretrained'
        return Path(spec.weights)
    if spec.bundled_dir:
        return resources.data_dir(spec.bundled_dir) / spec.checkpoint
    return resources.checkpoint_dir() / spec.checkpoint


def missing_checkpoint_message(spec, path):
    """What to do when a checkpoint is not on this machine (a few lines, no traceback)."""
    lines = ["checkpoint for {} not found at {}.".format(spec.name, path)]
    if spec.url:
        lines.append("Download it with:  python scripts/download_checkpoints.py --model {}".format(spec.name))
        lines.append("  (or fetch {} yourself and pass --load PATH, or set REPRO_CHECKPOINTS=DIR)".format(spec.url))
    else:
        lines.append("Pass --load PATH with a checkpoint of this architecture.")
    if spec.zoo == "imagenet":
        lines.append("Or run the same study on the miniature zoo this repository ships (no download):")
        lines.append("  python repro/evaluate.py --zoo mini --model ResNet ResNetDenoise ResNeXtDenoiseAll   (or: make demo)")
    return "\n".join(lines)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so that both end the same way."""

    def __init__(self, signal_name):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises `Interrupted` in the main thread (Python's default would end the process at once, without
    the one line and the cleanup an interrupt gets). Elsewhere than the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(main, argv=None):
    """Run ``main(argv)``; expected failures become one line on stderr and a non-zero exit status; SIGINT and
    SIGTERM one line saying what is kept (exit status 130 and 143)."""
    with sigterm_as_interrupt():
        return _run_main(main, argv)


def _run_main(main, argv=None):
    from repro.checkpoints import CheckpointError
    from repro.data import UnreadableImageError
    from repro.engines import DeviceUnavailable, EngineUnavailable, PrecisionUnavailable
    from repro.protocol import NonFiniteAttack
    from repro.runner import DamagedBatch, RunConfigMismatch
    from repro.zoo import UnknownModelError
    try:
        return main(argv) or 0
    except (UsageError, UnknownModelError, RunConfigMismatch, EngineUnavailable, PrecisionUnavailable,
            DeviceUnavailable) as error:
        print("error: {}".format(error), file=sys.stderr)
        return 2
    except (CheckpointError, UnreadableImageError, DamagedBatch, ValueError, RunFailed, NonFiniteAttack) as error:
        if os.environ.get("REPRO_DEBUG"):
            raise
        print("error: {}".format(error), file=sys.stderr)
        return 1
    except OSError as error:          # a full disk, a read-only folder, a file where a folder should be
        if os.environ.get("REPRO_DEBUG"):
            raise
        print("error: {}".format(os_error_message(error) if error.errno else error), file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        name = getattr(error, "signal_name", None)
        print("interrupted{}: results committed so far are kept; re-run the same command to continue".format(
            " ({})".format(name) if name else ""), file=sys.stderr)
        return 128 + (signal.Signals[name].value if name else signal.SIGINT.value)
