"""One batch of the study: perturb → forward → taps → metrics → per-(image, block, channel) scalars.

One graph per model holds
- the tapped forward pass on the concatenation [clean; random; adversarial] of a batch, built first so
  its ops carry the checkpoints' names (``groupG/blockB/block_output``), with every metric computed in
  the graph for (clean, random) and (clean, adversarial) — only (N, C) arrays leave the session, from
  one session run per batch;
- the targeted PGD attack (`repro.attacks.pgd_targeted`) in its own name scope, sharing the variables,
  run in chunks of steps so that progress can be shown.
"""
import logging
import time

import numpy as np
from repro.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.tfutils.tower import TowerContext

from repro import attacks, checkpoints, metrics as metric_ops_module
from repro.protocol import PERTURBATIONS, BatchResult, StudyConfig, perturbation_draws, random_targets
from repro.classifier import session_config
from repro.data import to_model_space
from repro.models import model_function
from repro.taps import block_taps

log = logging.getLogger(__name__)


class StudyGraph:
    """The study's graph and session for one model, restored strictly from its checkpoint."""

    def __init__(self, spec, checkpoint, config: StudyConfig):
        self.spec, self.config = spec, config
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
        checkpoints.restore(self.session, self.checkpoint, spec)
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
            for tap in self.taps:
                features = self.graph.get_tensor_by_name(tap.tensor)
                parts = [features[i * batch:(i + 1) * batch] for i in range(3)]
                self.tap_tensors[tap.block_index] = features
                clean_finite.append(tf.reduce_all(tf.is_finite(parts[0]), axis=[1, 2, 3]))
                for perturbation, perturbed in zip(PERTURBATIONS, parts[1:]):
                    ops = metric_ops_module.metric_ops(parts[0], perturbed, config.metrics,
                                                       data_range=config.ssim_data_range)
                    for metric, op in ops.items():
                        self.metric_values[(perturbation, metric, tap.block_index)] = op
            self.clean_finite = tf.reduce_all(tf.stack(clean_finite, axis=1), axis=1)

        with tf.name_scope("attack"):
            self.attack = attacks.pgd_targeted(model, self.clean, self.adversarial, self.target,
                                               config.epsilon, config.step_size, self.steps)
        with tf.name_scope("clean_check"):
            self.clean_logits = model(self.clean)

    def clean_logits_of(self, images_bgr, batch_size=16):
        """Logits of clean images (BGR uint8), for the sanity check before a long run."""
        return np.concatenate([self.session.run(self.clean_logits, {self.clean: to_model_space(
            images_bgr[start:start + batch_size])}) for start in range(0, len(images_bgr), batch_size)])

    def run_attack(self, clean, start, targets, on_steps=None):
        """PGD from ``start`` for the configured number of steps, in chunks; ``on_steps(k)`` after each."""
        adversarial, remaining = start, self.config.attack_iterations
        if remaining == 0:
            return self.session.run(self.attack, {self.clean: clean, self.adversarial: start,
                                                  self.target: targets, self.steps: 0})
        while remaining > 0:
            steps = min(self.config.attack_chunk, remaining)
            adversarial = self.session.run(self.attack, {self.clean: clean, self.adversarial: adversarial,
                                                         self.target: targets, self.steps: steps})
            remaining -= steps
            if on_steps:
                on_steps(steps)
        return adversarial

    def run_batch(self, images_bgr, labels, image_ids, on_steps=None, feature_blocks=()):
        """The whole study for one batch of BGR uint8 images; see `BatchResult`."""
        config = self.config
        clean = to_model_space(images_bgr)
        draws = perturbation_draws(config.seed, image_ids, clean.shape[1:], self.spec.arch.num_classes, config.noise)
        targets = random_targets(labels, draws["target_offset"], self.spec.arch.num_classes)
        epsilon = config.epsilon * 2.0 / 255
        start = clean + draws["start"] * np.float32(epsilon)
        timings = {}
        began = time.perf_counter()
        adversarial = self.run_attack(clean, start, targets, on_steps)
        timings["attack"] = time.perf_counter() - began
        broken = [image_id for image_id, image in zip(image_ids, adversarial) if not np.isfinite(image).all()]
        if broken:
            log.warning("%s: the attack's gradient overflowed for image(s) %s (non-finite adversarial images); "
                        "their adversarial metrics will be excluded as non-finite", self.spec.name, broken)

        began = time.perf_counter()
        fetches = {"predictions": self.predictions, "values": self.metric_values, "clean_finite": self.clean_finite}
        if feature_blocks:
            fetches["features"] = {b: self.tap_tensors[b] for b in feature_blocks}
        out = self.session.run(fetches, {self.clean: clean, self.random_noise: draws["random"],
                                         self.adversarial: adversarial})
        timings["taps_metrics"] = time.perf_counter() - began
        n = len(image_ids)
        features = {b: value.reshape((3, n) + value.shape[1:]) for b, value in out.get("features", {}).items()}
        return BatchResult(image_ids=list(image_ids), labels=np.asarray(labels), targets=targets,
                           predictions=out["predictions"], values=out["values"], adversarial=adversarial,
                           clean_finite=out["clean_finite"], timings=timings, feature_maps=features)

    def close(self):
        self.session.close()
