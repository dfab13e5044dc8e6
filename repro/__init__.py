"""Reproduction toolkit: how adversarial perturbations propagate through feature-denoising networks.

TensorFlow reads these settings once, when it is first imported — by this package or by tensorpack —
so they are set here, before any submodule can import either (SPEC §8):
- ``TF_USE_LEGACY_KERAS=1``: tensorpack's layers need the legacy ``tf.layers`` of ``tf_keras``;
- ``TF_ENABLE_ONEDNN_OPTS=1``: the stock CPU kernels run convolutions in NHWC only, the oneDNN ones
  also in the NCHW layout of the checkpoints' graphs.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
