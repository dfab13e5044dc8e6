"""TensorFlow in TF1 graph mode, set up the way tensorpack 0.11 needs it.

tensorpack's layers use the legacy ``tf.layers``, which TensorFlow 2.16+ only provides through
``tf_keras`` when ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported (SPEC §8).
Every module of this project imports TensorFlow from here.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as _tf  # noqa: E402

tf = _tf.compat.v1
tf.disable_v2_behavior()
tf.logging.set_verbosity(tf.logging.ERROR)

__all__ = ["tf"]
