"""One batch of the study: perturb → forward → taps → metrics → per-(image, block, channel) scalars.

One graph per model holds
- the tapped forward pass on the concatenation [clean; random; adversarial] of a batch, built first so
  its ops carry the checkpoints' names (``groupG/blockB/block_output``), with every metric computed in
  the graph for (clean, random) and (clean, adversarial) — only (N, C) arrays leave the session, from
  one session run per batch;
- the targeted PGD attack (`repro.engines.tensorflow.attacks.attack_in_graph`, in ``--precision``'s arithmetic) in its
  own name scope, sharing the variables, run in chunks of steps so that progress can be shown.
The batch's flow around these graphs (draws, chunking, timings) is the engine-neutral `StudyFlow`.
"""
from repro.engines.tensorflow.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.tfutils.tower import TowerContext

from repro import checkpoints
from repro.engines.tensorflow import attacks, metrics as metric_ops_module
from repro.engines.tensorflow.attacks import attack_in_graph
from repro.engines.tensorflow.models import model_function
from repro.engines.tensorflow.session import PrecisionMixin, restore, session_config
from repro.engines.tensorflow.taps import block_taps
from repro.protocol import PERTURBATIONS, StudyConfig, StudyFlow


class StudyGraph(StudyFlow, PrecisionMixin):
    """The study's graph and session for one model, restored strictly from its checkpoint."""

    def __init__(self, spec, checkpoint, config: StudyConfig, precision="float32"):
        self.spec, self.config, self.precision = spec, config, precision
        size = spec.arch.input_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.clean = tf.placeholder(tf.float32, [None, 3, size, size], name="clean")
            self.random_noise = tf.placeholder(tf.float32, [None, 3, size, size], name="random_noise")
            self.adversarial = tf.placeholder(tf.float32, [None, 3, size, size], name="adversarial")
            self.target = tf.placeholder(tf.int64, [None], name="target")
            self.steps = tf.placeholder(tf.int32, [], name="steps")
            model = model_function(spec)
            # One inference-mode tower around everything: tensorpack's TowerContext must be entered at
            # the root name scope, and the attack's model calls live inside attack/attack_loop/while.
            with TowerContext("", is_training=False):
                self._build(model, config)
            self.session = tf.Session(config=session_config())
        self.checkpoint = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) \
            else checkpoints.read_checkpoint(checkpoint)
        restore(self.session, self.checkpoint, spec)
        self.graph.finalize()

    def _build(self, model, config):
        """The tapped forward pass with its metrics first (canonical op names), then the attack."""
        randomised = attacks.random_perturbation(self.clean, self.random_noise, config.epsilon)
        batch = tf.shape(self.clean)[0]
        logits = model(tf.concat([self.clean, randomised, self.adversarial], axis=0))
        predictions = tf.argmax(logits, axis=1)
        self.predictions = {name: predictions[i * batch:(i + 1) * batch]
                            for i, name in enumerate(("clean",) + PERTURBATIONS)}
        self.randomised = randomised
        self.taps = block_taps(self.graph, config.tap)
        self.metric_values = {}
        self.tap_tensors = {}
        with tf.name_scope("metrics"):
            # Per clean image: are its logits and all its tapped maps finite? (A damaged checkpoint must
            # stop the run, not leave every metric NaN and excluded.)
            clean_finite = [tf.reduce_all(tf.is_finite(logits[:batch]), axis=1)]
            measured = []                       # per tap: the ops that finish its measurement
            for tap in self.taps:
                features = self.graph.get_tensor_by_name(tap.tensor)
                parts = [features[i * batch:(i + 1) * batch] for i in range(3)]
                self.tap_tensors[tap.block_index] = features
                clean_finite.append(tf.reduce_all(tf.is_finite(parts[0]), axis=[1, 2, 3]))
                measured.append([clean_finite[-1].op])
                for perturbation, perturbed in zip(PERTURBATIONS, parts[1:]):
                    ops = metric_ops_module.metric_ops(parts[0], perturbed, config.metrics,
                                                       data_range=config.ssim_data_range)
                    for metric, op in ops.items():
                        self.metric_values[(perturbation, metric, tap.block_index)] = op
                        measured[-1].append(op.op)
            self.clean_finite = tf.reduce_all(tf.stack(clean_finite, axis=1), axis=1)
        self._measure_as_the_maps_appear(measured)

        with tf.name_scope("attack"):
            self.attack = attack_in_graph(self.spec, self.precision, self.clean, self.adversarial, self.target,
                                          config.epsilon, config.step_size, self.steps,
                                          config.attack)   # (adversarial, finite)
        with tf.name_scope("clean_check"):
            self.clean_logits_tensor = model(self.clean)

    def _measure_as_the_maps_appear(self, measured):
        """Memory bounded by the network, not by the taps: the forward pass may not run more than two blocks ahead
        of the measurements. The ops that read tap b + 2 get the ops that finish tap b's metrics as control inputs
        (added after the model is built: its ops keep the checkpoints' names), so TensorFlow cannot compute every
        block first and hold all their maps while the metric functions, one at a time, catch up."""
        tensors = [self.graph.get_tensor_by_name(tap.tensor) for tap in self.taps]
        for index in range(2, len(tensors)):
            for consumer in tensors[index].consumers():
                if not consumer.name.startswith("metrics/"):
                    consumer._add_control_inputs(measured[index - 2])   # noqa: SLF001  (TF1 graphs offer no public way)

    def clean_logits(self, clean):
        return self.session.run(self.clean_logits_tensor, {self.clean: clean})

    def attack_steps(self, clean, adversarial, targets, steps):
        """(adversarial, finite) after ``steps`` PGD steps (`StudyFlow.attack_steps`)."""
        return self.attack_in_precision(lambda: self.session.run(self.attack, {
            self.clean: clean, self.adversarial: adversarial, self.target: targets, self.steps: steps}))

    def measure(self, clean, random_noise, adversarial, feature_blocks=()):
        fetches = {"predictions": self.predictions, "values": self.metric_values, "clean_finite": self.clean_finite}
        if feature_blocks:
            fetches["features"] = {b: self.tap_tensors[b] for b in feature_blocks}
        return self.session.run(fetches, {self.clean: clean, self.random_noise: random_noise,
                                          self.adversarial: adversarial})

    def close(self):
        self.session.close()
