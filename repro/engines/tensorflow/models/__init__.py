"""Model definitions (tensorpack, NCHW) and the graph entry points used by every pipeline."""
import contextlib

from repro.engines.tensorflow.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.tfutils.tower import TowerContext, get_current_tower_context

from repro.engines.tensorflow.models.nets import BUILDERS

IMAGE_SCALE = 2.0 / 255
"""Pixels (BGR, 0..255) map to the model's input space by x · 2/255 − 1 (SPEC §2)."""


def preprocess(images_bgr_nhwc):
    """BGR NHWC images in [0, 255] (uint8 or float) → NCHW float32 in [-1, 1] (SPEC §2)."""
    with tf.name_scope("image_preprocess"):
        images = tf.cast(images_bgr_nhwc, tf.float32) * IMAGE_SCALE - 1.0
        return tf.transpose(images, [0, 3, 1, 2])


def model_function(spec, training=False, compute_dtype=None):
    """A function image_nchw → logits for ``spec`` (a ``repro.zoo.ModelSpec``), callable any number of
    times in one graph: the first call creates the variables, later calls (the attack's loop body,
    the tapped forward pass) share them. BatchNorm runs in inference mode unless ``training`` — also
    during the attack (SPEC §3). Inside an enclosing tensorpack TowerContext, that context decides.

    With ``compute_dtype`` (tf.bfloat16 or tf.float16: the reduced-precision attack of
    `repro.engines.tensorflow`) the image is cast to it and the network runs in it on the same float32
    variables — read through `float32_variables`, so none is created — and the logits come back as float32.
    """
    builder = BUILDERS[spec.arch.family]

    def logits_of(image_nchw):
        tower = contextlib.nullcontext() if get_current_tower_context() is not None \
            else TowerContext("", is_training=training)
        getter = float32_variables if compute_dtype is not None else None
        with tower, tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE, custom_getter=getter):
            if compute_dtype is None:
                return builder(image_nchw, spec.arch)
            return tf.cast(builder(tf.cast(image_nchw, compute_dtype), spec.arch), tf.float32)

    return logits_of


def float32_variables(getter, name, *args, dtype=None, **kwargs):
    """Variable-scope custom getter: the float32 variable ``name`` (the checkpoint's), read as the dtype
    the layer asks for. Convolutions and the classifier ask for their input's half dtype and get a cast;
    tensorpack's BatchNorm asks for float32 on a half input (``fused_batch_norm`` takes float32 scale,
    offset, mean and variance whatever its input's dtype), so its variables are used as stored."""
    variable = getter(name, *args, dtype=tf.float32, **kwargs)
    return variable if dtype is None or tf.as_dtype(dtype) == tf.float32 else tf.cast(variable, dtype)
