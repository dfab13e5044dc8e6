"""The evaluation attack's graph (`repro.robustness`, validate, the model cards): a restored network with its
clean forward pass and targeted PGD in one graph."""
from repro.engines.tensorflow.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.tfutils.tower import TowerContext

from repro import checkpoints
from repro.engines.tensorflow.attacks import attack_in_graph
from repro.engines.tensorflow.models import model_function, preprocess
from repro.engines.tensorflow.session import PrecisionMixin, restore, session_config, set_tf32


class AttackGraph(PrecisionMixin):
    """``spec``'s network restored strictly from ``checkpoint`` with the evaluation attack in its graph: the
    clean forward pass and targeted PGD (`repro.engines.tensorflow.attacks.pgd_targeted`, SPEC §3) with the attack's ε, step
    size and number of steps fed at run time, so clean, PGD-10 and PGD-100 share one restored session."""

    def __init__(self, spec, checkpoint, precision="float32", attack="targeted"):
        set_tf32(False)
        self.spec, self.precision = spec, precision
        size = spec.arch.input_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf.placeholder(tf.float32, [None, size, size, 3], name="images_bgr")
            self.clean = tf.placeholder(tf.float32, [None, 3, size, size], name="clean")
            self.start = tf.placeholder(tf.float32, [None, 3, size, size], name="adversarial_start")
            self.target = tf.placeholder(tf.int64, [None], name="target")
            self.steps = tf.placeholder(tf.int32, [], name="steps")
            self.epsilon = tf.placeholder(tf.float32, [], name="epsilon_pixels")
            self.step_size = tf.placeholder(tf.float32, [], name="step_size_pixels")
            model = model_function(spec)
            # One inference-mode tower entered at the root name scope: the attack's model calls live
            # inside attack/attack_loop/while, where a TowerContext may not be opened.
            with TowerContext("", is_training=False):
                # Clean predictions by the same ops as repro.engines.tensorflow.classifier.Classifier, so both agree exactly.
                self.clean_prediction_op = tf.argmax(model(preprocess(self.images)), axis=1)
                with tf.name_scope("attack"):
                    adversarial, self.attack_finite = attack_in_graph(
                        spec, precision, self.clean, self.start, self.target, self.epsilon, self.step_size, self.steps,
                        attack)
                self.adversarial_prediction_op = tf.argmax(model(adversarial), axis=1)
            self.session = tf.Session(config=session_config())
        self.checkpoint = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) \
            else checkpoints.read_checkpoint(checkpoint)
        restore(self.session, self.checkpoint, spec)
        self.graph.finalize()

    def clean_predictions(self, images_bgr):
        return self.session.run(self.clean_prediction_op, {self.images: images_bgr})

    def adversarial_predictions(self, clean, start, targets, steps, epsilon, step_size):
        return self.attack_in_precision(lambda: self.session.run((self.adversarial_prediction_op, self.attack_finite), {
            self.clean: clean, self.start: start, self.target: targets, self.steps: steps,
            self.epsilon: epsilon, self.step_size: step_size}))

    def close(self):
        self.session.close()
