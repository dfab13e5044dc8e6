"""The TensorFlow engine's sessions: their options, TF32, and the strict restore of a checkpoint into a graph."""
from typing import List, Optional, Sequence

import numpy as np

from repro import checkpoints
from repro.engines.tensorflow.tfcompat import tf


def session_config():
    """Session options for every graph of the project.

    Grappler's remapper fuses ops (e.g. convolution + BatchNorm + ReLU) into kernels that, with the
    oneDNN NCHW path this CPU build needs, made the forward pass much slower: ResNet-50 on 6 images took
    30.5 s with it and 2.4 s without, logits equal to 6e-7 (measured side by side in one process on a
    loaded 2-core machine, 2026-11-26). It changes no result beyond float round-off, so it is off.

    ``$REPRO_THREADS``, when set, fixes the intra- and inter-op thread pools (``evaluate.py --workers``
    gives each of its processes its share of the cores).
    """
    import os

    from tensorflow.core.protobuf import rewriter_config_pb2
    config = tf.ConfigProto(allow_soft_placement=True)
    config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    threads = os.environ.get("REPRO_THREADS")
    if threads:
        config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = int(threads)
    return config



def set_tf32(enabled):
    """TensorFlow runs float32 matmuls and convolutions in TF32 on Ampere and newer GPUs by default, which
    changes feature maps by about 1e-3 relative: off everywhere unless the attack asks for it."""
    tf.config.experimental.enable_tensor_float_32_execution(bool(enabled))


def set_determinism(deterministic):
    """On GPUs, TensorFlow's deterministic kernels (op determinism: the same batch gives the same bits on every
    run) unless asked otherwise. TensorFlow cannot switch it off again within a process; CPU kernels are
    deterministic either way. (Not exercised here: the GPU machines this project is checked on have no
    TensorFlow.)"""
    if deterministic and tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()


class PrecisionMixin:
    """TF32 around the attack's session runs where asked, float32 with TF32 off for everything else (bfloat16
    and float16 are in the attack's graph)."""

    def attack_in_precision(self, run):
        if self.precision == "tf32":
            set_tf32(True)
            try:
                return run()
            finally:
                set_tf32(False)
        return run()



def restore(session, checkpoint: checkpoints.Checkpoint, spec=None, variables: Optional[Sequence] = None) -> List[str]:
    """Assign every model variable of the session's graph from ``checkpoint``, strictly.

    A missing variable or a shape mismatch raises, naming it; when ``spec`` is given, a checkpoint of
    another architecture is recognised first. Extra keys are logged as a warning and returned.
    Afterwards no variable of the graph may remain uninitialized.
    """
    if spec is not None:
        checkpoints.check_architecture(checkpoint, spec)
    graph = session.graph
    if variables is None:
        with graph.as_default():
            variables = tf.global_variables()
    extra = checkpoints.check_variables(checkpoint, [(checkpoints.variable_key(v.name), v.shape.as_list()) for v in variables])
    with graph.as_default():
        # One session run assigns everything: per-variable runs cost seconds each on a 150-layer graph.
        with tf.name_scope("restore"):
            feeds = {}
            assignments = []
            for variable in variables:
                placeholder = tf.placeholder(variable.dtype.base_dtype, variable.shape)
                value = checkpoint.arrays[checkpoints.variable_key(variable.name)]
                feeds[placeholder] = np.asarray(value, dtype=variable.dtype.base_dtype.as_numpy_dtype)
                assignments.append(tf.assign(variable, placeholder, validate_shape=True).op)
            session.run(tf.group(*assignments), feeds)
        left = session.run(tf.report_uninitialized_variables(variables))
    if len(left):
        raise checkpoints.CheckpointError("variables left uninitialized after restoring {}: {}".format(
            checkpoint.path, ", ".join(name.decode() for name in left[:5])))
    return extra
