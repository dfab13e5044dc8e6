"""Shared pieces of the command-line entry points: logging, one-line errors, checkpoint lookup."""
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad input from the command line; shown as one line, exit status 2."""


class RunFailed(RuntimeError):
    """A run failed for a reason its message states in full (e.g. a worker process); exit status 1."""


def setup_logging(verbose=False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("fontTools", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def checkpoint_path(spec, load=None):
    """``--load`` if given, else the bundled file (miniature zoo), else the zoo's file name under
    ``$REPRO_CHECKPOINTS`` or ``checkpoints/``."""
    if load:
        return Path(load)
    if spec.bundled_dir:
        return REPO_ROOT / spec.bundled_dir / spec.checkpoint
    directory = Path(os.environ.get("REPRO_CHECKPOINTS", REPO_ROOT / "checkpoints"))
    return directory / spec.checkpoint


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


def run_main(main, argv=None):
    """Run ``main(argv)``; expected failures become one line on stderr and a non-zero exit status."""
    from repro.checkpoints import CheckpointError
    from repro.data import UnreadableImageError
    from repro.runner import RunConfigMismatch
    from repro.zoo import UnknownModelError
    try:
        return main(argv) or 0
    except (UsageError, UnknownModelError, RunConfigMismatch) as error:
        print("error: {}".format(error), file=sys.stderr)
        return 2
    except (CheckpointError, UnreadableImageError, FileNotFoundError, ValueError, RunFailed) as error:
        if os.environ.get("REPRO_DEBUG"):
            raise
        print("error: {}".format(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: results committed so far are kept; re-run the same command to continue",
              file=sys.stderr)
        return 130
