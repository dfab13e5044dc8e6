"""Synthetic checkpoints with the real names and shapes, for tests and dry runs without the released files.

Random weights alone do not make a usable network: the dot-product non-local block is cubic in its
input, so with placeholder BatchNorm statistics activations explode within a few blocks. Here the
statistics are calibrated the way a trained network's are: one forward pass in training mode (each BN
normalises with its batch statistics) on random images, whose batch statistics then become the
``mean/EMA`` and ``variance/EMA`` of the checkpoint. Inference on those images then reproduces the
normalised activations, as in a trained network.
"""
import numpy as np

from repro.engines.tensorflow.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.models import BatchNorm
from tensorpack.tfutils.argscope import argscope

from repro import checkpoints
from repro.engines.tensorflow.classifier_graph import model_variables
from repro.engines.tensorflow.models import model_function
from repro.engines.tensorflow.session import restore


def synthetic_checkpoint(spec, seed=0, calibration_images=4, **gains):
    """Arrays (name → float32) for ``spec``: ``checkpoints.synthetic_arrays`` (``gains``: its
    ``residual_gain`` / ``non_local_gain``) plus BN statistics calibrated on ``calibration_images``
    seeded random images."""
    arrays = checkpoints.synthetic_arrays(model_variables(spec), seed=seed, **gains)
    size = spec.arch.input_size
    images = np.random.default_rng(seed).uniform(-1, 1, (calibration_images, 3, size, size)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        # momentum 0: one update sets every moving statistic to the batch statistic.
        with argscope(BatchNorm, momentum=0.0):
            model_function(spec, training=True)(tf.constant(images))
        updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        variables = tf.global_variables()
        with tf.Session() as session:
            restore(session, checkpoints.Checkpoint(None, "", arrays), variables=variables)
            session.run(updates)
            values = session.run(variables)
    return {checkpoints.variable_key(v.name): value.astype(np.float32) for v, value in zip(variables, values)}


def write_synthetic_checkpoint(spec, path, seed=0):
    """Write a calibrated synthetic checkpoint for ``spec`` to ``path``; returns the path."""
    return checkpoints.save_checkpoint(synthetic_checkpoint(spec, seed), path)
