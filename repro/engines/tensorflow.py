"""The TensorFlow engine (the reference): tensorpack graphs in TF1 graph mode (`repro.study.StudyGraph`,
`repro.classifier.Classifier`, and `AttackGraph` below), with TF32 off unless the attack opts in, and the
attack's model in bfloat16 or float16 where ``--precision`` asks (`attack_in_graph`)."""
from repro.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.tfutils.tower import TowerContext

from repro import attacks, checkpoints
from repro.classifier import Classifier, session_config
from repro.engines import loss_scale
from repro.models import model_function, preprocess

PRECISIONS = ("float32", "tf32", "bf16", "fp16")
COMPUTE_DTYPES = {"bf16": tf.bfloat16, "fp16": tf.float16}
"""The attack's model in these dtypes; float32 and tf32 build the float32 graph (TF32 is switched at run time)."""


def precision_unavailable(precision):
    """The CPU build runs bfloat16 NCHW convolutions (grouped ones too), but float16 ones only on AVX-512
    machines and then only NHWC: float16 needs a GPU."""
    if precision == "fp16" and not tf.config.list_physical_devices("GPU"):
        return ("--precision fp16 needs a GPU (TensorFlow has no float16 convolution on CPU); use bf16 or "
                "float32")
    return None


def attack_in_graph(spec, precision, image, start, target, epsilon_pixels, step_size_pixels, iterations):
    """Targeted PGD (`repro.attacks.pgd_targeted`, SPEC §3) on ``spec``'s network in ``precision``'s arithmetic:
    the model in bfloat16 or float16 on the same float32 variables (`repro.models.model_function`), the
    cross-entropy on float32 logits, float16's loss scaled (`repro.engines.FP16_LOSS_SCALE`). Like the original
    code's half-precision attack, for speed on GPUs; build it inside the graph's inference TowerContext."""
    model = model_function(spec, compute_dtype=COMPUTE_DTYPES.get(precision))
    return attacks.pgd_targeted(model, image, start, target, epsilon_pixels, step_size_pixels, iterations,
                                loss_scale=loss_scale(precision))


def set_tf32(enabled):
    """TensorFlow runs float32 matmuls and convolutions in TF32 on Ampere and newer GPUs by default, which
    changes feature maps by about 1e-3 relative: off everywhere unless the attack asks for it."""
    tf.config.experimental.enable_tensor_float_32_execution(bool(enabled))


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


class AttackGraph(PrecisionMixin):
    """``spec``'s network restored strictly from ``checkpoint`` with the evaluation attack in its graph: the
    clean forward pass and targeted PGD (`repro.attacks.pgd_targeted`, SPEC §3) with the attack's ε, step
    size and number of steps fed at run time, so clean, PGD-10 and PGD-100 share one restored session."""

    def __init__(self, spec, checkpoint, precision="float32"):
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
                # Clean predictions by the same ops as repro.classifier.Classifier, so both agree exactly.
                self.clean_prediction_op = tf.argmax(model(preprocess(self.images)), axis=1)
                with tf.name_scope("attack"):
                    adversarial = attack_in_graph(spec, precision, self.clean, self.start, self.target,
                                                  self.epsilon, self.step_size, self.steps)
                self.adversarial_prediction_op = tf.argmax(model(adversarial), axis=1)
            self.session = tf.Session(config=session_config())
        self.checkpoint = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) \
            else checkpoints.read_checkpoint(checkpoint)
        checkpoints.restore(self.session, self.checkpoint, spec)
        self.graph.finalize()

    def clean_predictions(self, images_bgr):
        return self.session.run(self.clean_prediction_op, {self.images: images_bgr})

    def adversarial_predictions(self, clean, start, targets, steps, epsilon, step_size):
        return self.attack_in_precision(lambda: self.session.run(self.adversarial_prediction_op, {
            self.clean: clean, self.start: start, self.target: targets, self.steps: steps,
            self.epsilon: epsilon, self.step_size: step_size}))

    def close(self):
        self.session.close()


def study(spec, checkpoint, config, precision="float32", device=None):
    from repro.study import StudyGraph
    set_tf32(False)
    return StudyGraph(spec, checkpoint, config, precision=precision)


def classifier(spec, checkpoint, device=None):
    set_tf32(False)
    return Classifier(spec, checkpoint)


def attack_model(spec, checkpoint, precision="float32", device=None):
    return AttackGraph(spec, checkpoint, precision)


def per_channel(metric, reference, perturbed, **options):
    from repro.metrics import per_channel as graph_per_channel
    return graph_per_channel(metric, reference, perturbed, **options)


def describe(device=None):
    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    import tensorflow
    return {"framework": "tensorflow " + tensorflow.__version__,
            "device": ", ".join(gpus) if gpus else "cpu",
            "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled())}

