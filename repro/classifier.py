"""A restored model in its own graph and session: images in, logits out."""
import logging

import numpy as np

from repro import checkpoints
from repro.models import model_function, preprocess
from repro.tfcompat import tf

log = logging.getLogger(__name__)


def model_variables(spec):
    """(name, shape) of every variable the model's graph holds, in creation order."""
    graph = tf.Graph()
    with graph.as_default():
        size = spec.arch.input_size
        model_function(spec)(tf.zeros([1, 3, size, size]))
        return [(variable.name, variable.shape.as_list()) for variable in tf.global_variables()]


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


class Classifier:
    """``spec``'s network restored strictly from ``checkpoint`` (a path or ``checkpoints.Checkpoint``)."""

    def __init__(self, spec, checkpoint):
        self.spec = spec
        if not isinstance(checkpoint, checkpoints.Checkpoint):
            checkpoint = checkpoints.read_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        self.graph = tf.Graph()
        with self.graph.as_default():
            size = spec.arch.input_size
            self.images = tf.placeholder(tf.float32, [None, size, size, 3], name="images_bgr")
            self.logits = model_function(spec)(preprocess(self.images))
            self.session = tf.Session(config=session_config())
        checkpoints.restore(self.session, checkpoint, spec)

    def predict_logits(self, images_bgr, batch_size=16):
        """Logits (float32, N × classes) for BGR uint8 images of the model's input size."""
        outputs = []
        for start in range(0, len(images_bgr), batch_size):
            feed = {self.images: images_bgr[start:start + batch_size]}
            outputs.append(self.session.run(self.logits, feed))
        if not outputs:
            return np.zeros((0, self.spec.arch.num_classes), np.float32)
        return np.concatenate(outputs).astype(np.float32)

    def features(self, images_bgr, names, batch_size=16):
        """{tap name: (N, C, H, W) float32} of the named tensors (e.g. ``group0/block0/block_output``)."""
        tensors = {}
        for name in names:
            try:
                tensors[name] = self.graph.get_tensor_by_name(name + ":0")
            except KeyError:
                raise ValueError("{} has no tensor {!r}: ask for block outputs (groupG/blockB/block_output) or, "
                                 "in denoising models, denoised outputs".format(self.spec.name, name)) from None
        parts = [self.session.run(tensors, {self.images: images_bgr[start:start + batch_size]})
                 for start in range(0, len(images_bgr), batch_size)]
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    def close(self):
        self.session.close()
