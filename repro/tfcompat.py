"""TensorFlow in TF1 graph mode (``tf.compat.v1``, v2 behaviour off), as tensorpack 0.11 needs it.

Every module of this project imports TensorFlow from here; the environment TensorFlow must see at its
first import is set in ``repro/__init__.py``.
"""
import logging
import repro  # noqa: F401  (sets TensorFlow's environment)

import tensorflow as _tf  # noqa: E402

_tf.get_logger().setLevel(logging.ERROR)
tf = _tf.compat.v1
tf.disable_v2_behavior()

from tensorpack.utils import logger as _tensorpack_logger  # noqa: E402

# tensorpack logs every layer's shapes while a graph is built: hundreds of lines per model.
_tensorpack_logger._logger.setLevel(logging.WARNING)

__all__ = ["tf"]
