"""A restored model in its own graph and session: images in, logits out."""
import logging

import numpy as np

from repro import checkpoints
from repro.engines.tensorflow.models import model_function, preprocess
from repro.engines.tensorflow.session import restore, session_config
from repro.engines.tensorflow.tfcompat import tf

log = logging.getLogger(__name__)


def model_variables(spec):
    """(name, shape) of every variable the model's graph holds, in creation order."""
    graph = tf.Graph()
    with graph.as_default():
        size = spec.arch.input_size
        model_function(spec)(tf.zeros([1, 3, size, size]))
        return [(variable.name, variable.shape.as_list()) for variable in tf.global_variables()]


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
        restore(self.session, checkpoint, spec)

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
