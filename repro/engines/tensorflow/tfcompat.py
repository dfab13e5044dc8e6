"""TensorFlow in TF1 graph mode (``tf.compat.v1``, v2 behaviour off), as tensorpack 0.11 needs it.

Every module of this project imports TensorFlow from here; the environment TensorFlow must see at its
first import is set in ``repro/__init__.py``.

TensorFlow's C++ libraries log a few lines while they load ("oneDNN custom operations are on", "Could not
find cuda drivers", …) through absl before absl's logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL``
does not filter them. They are captured at the file-descriptor level during the import and only the
lines at or above that level are passed on (all of them if the import fails). The import also opens
one empty session, because the first session's device search logs "failed call to cuInit" as an
error on every machine without a GPU; that line is passed on only at level 0.
"""
import logging
import os
import re
import sys
import tempfile

import repro  # noqa: F401  (sets TensorFlow's environment)

_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _shown(line, level):
    match = _ABSL_LINE.match(line)
    if match:
        if "failed call to cuInit" in line:          # no GPU on this machine: not an error here
            return level < 1
        return _SEVERITY[match.group(1)] >= level
    return not (line.startswith(_ABSL_PREAMBLE) and level >= 1)


def _import_filtering_native_logs():
    """Import tensorflow and tensorpack with the native libraries' stderr filtered by TF_CPP_MIN_LOG_LEVEL."""
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level < 1:
        import tensorflow  # noqa: F401
        import tensorpack  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
            import tensorpack  # noqa: F401
            with tensorflow.compat.v1.Session(graph=tensorflow.Graph()):
                pass
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if failed or _shown(line, level)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


if os.environ.get("REPRO_THREADS"):
    # $REPRO_THREADS (a worker's share of the cores) sizes the session's thread pools (`session.session_config`),
    # but some kernels run on TensorFlow's process-wide pools, sized by these variables when TensorFlow starts: left
    # at the default (every core), a "single-threaded" worker kept 1.7 cores busy, and two workers on 2 cores slowed
    # each other by 1.5× (the demo's attack: 146 s per worker against 93 s alone).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", os.environ["REPRO_THREADS"])
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", os.environ["REPRO_THREADS"])
_import_filtering_native_logs()

import tensorflow as _tf  # noqa: E402

_tf.get_logger().setLevel(logging.ERROR)
tf = _tf.compat.v1
tf.disable_v2_behavior()

from tensorpack.utils import logger as _tensorpack_logger  # noqa: E402

# tensorpack logs every layer's shapes while a graph is built: hundreds of lines per model.
_tensorpack_logger._logger.setLevel(logging.WARNING)

__all__ = ["tf"]
