"""Model definitions (tensorpack, NCHW) and the graph entry points used by every pipeline."""
from tensorpack.tfutils.tower import TowerContext

from repro.models.nets import BUILDERS
from repro.tfcompat import tf

IMAGE_SCALE = 2.0 / 255
"""Pixels (BGR, 0..255) map to the model's input space by x · 2/255 − 1 (SPEC §2)."""


def preprocess(images_bgr_nhwc):
    """BGR NHWC images in [0, 255] (uint8 or float) → NCHW float32 in [-1, 1] (SPEC §2)."""
    with tf.name_scope("image_preprocess"):
        images = tf.cast(images_bgr_nhwc, tf.float32) * IMAGE_SCALE - 1.0
        return tf.transpose(images, [0, 3, 1, 2])


def model_function(spec):
    """A function image_nchw → logits for ``spec`` (a ``repro.zoo.ModelSpec``), callable any number of
    times in one graph: the first call creates the variables, later calls (the attack's loop body,
    the tapped forward pass) share them. BatchNorm always runs in inference mode, also during the
    attack (SPEC §3)."""
    builder = BUILDERS[spec.arch.family]

    def logits_of(image_nchw):
        with TowerContext("", is_training=False), \
                tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            return builder(image_nchw, spec.arch)

    return logits_of
