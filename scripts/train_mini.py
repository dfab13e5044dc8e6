#!/usr/bin/env python
"""Adversarially train one network of the miniature zoo and write its checkpoint and model card.

    python scripts/train_mini.py --model ResNet --minutes 15
    python scripts/train_mini.py --model ResNeXtDenoiseAll --steps 1500 --batch 32 --seed 0 --out mini_zoo/

Adversarial training as in Feature Denoising (Xie et al. 2019), Sec. 5, scaled down to the 32×32, 10-class
task of `repro.minidata` and a few CPU minutes:
- every training batch is replaced by its targeted PGD adversarial examples — random target classes, as
  in the evaluation attack — at ε = 16 pixels; "20% of training batches use clean images to initialize
  PGD, and 80% use random points within the allowed ε-ball" (Sec. 5);
- the attacker runs the model with BatchNorm in inference mode and without EMA updates, like the
  released code (``argscope(BatchNorm, training=False)`` inside ``freeze_collection(UPDATE_OPS)``); the
  training step then runs BatchNorm on the adversarial batch in training mode;
- Xie et al. take 30 PGD steps of α = 1 (a path of 30 ≈ 2ε). Here K = ``--attack-steps`` (default 3)
  steps of α = 2ε/K (10.7 pixels) keep that path length at a tenth of the cost;
- label smoothing 0.1 (Sec. 5), momentum SGD (0.9, Nesterov, as tensorpack's ImageNet models) with a
  linear warm-up then cosine decay (Goyal et al., ImageNet in 1 Hour), weight decay 1e-4 on every
  convolution and fully connected weight (``.*/W``), the learning rate scaled linearly with the batch.

``--minutes`` is a wall-clock budget: the schedule's progress is max(step / steps, elapsed / budget), so
the learning rate anneals to its end by the deadline whichever comes first, and training stops cleanly
there; evaluation and writing follow. The checkpoint is the model's variables only (no optimizer state),
in tensorpack's ``.npz`` naming (`repro.checkpoints.save_checkpoint`), at ``<out>/<NAME>.npz``; the model
card ``<out>/<NAME>.json`` records the configuration, the run and the robustness on the test split
(`repro.robustness`: clean, PGD-10 and PGD-100 accuracy and targeted success, 95% Wilson intervals).
"""
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so `python scripts/train_mini.py` finds `repro`

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import time

import numpy as np
from tqdm import tqdm

log = logging.getLogger("train_mini")

DEFAULT_OUT = REPO_ROOT / "mini_zoo"


@dataclasses.dataclass
class TrainConfig:
    """Every hyperparameter of a run; written to the model card as is."""
    steps: int = 1500
    batch: int = 32
    seed: int = 0
    minutes: float = None                  # wall-clock budget for training (None: run all steps)
    base_learning_rate: float = 0.1        # at batch 64; scaled by batch / 64 (linear scaling rule)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4             # on '.*/W' (convolutions, fully connected)
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.05          # linear warm-up from 0 over this fraction of training
    schedule: str = "cosine"
    attack_epsilon: float = 16.0           # pixels
    attack_steps: int = 3
    attack_step_size: float = None         # pixels; None: 2ε / steps
    prob_start_from_clean: float = 0.2     # per batch (Xie et al. Sec. 5)
    attack_targeted: bool = True
    attack_batchnorm: str = "inference mode, EMA updates frozen"
    clean_accuracy_every: int = 20         # steps between inference-mode clean accuracy readings

    @property
    def step_size(self):
        return self.attack_step_size if self.attack_step_size else 2.0 * self.attack_epsilon / self.attack_steps

    @property
    def peak_learning_rate(self):
        return self.base_learning_rate * self.batch / 64.0

    def as_dict(self):
        record = dataclasses.asdict(self)
        record.update(attack_step_size=self.step_size, peak_learning_rate=self.peak_learning_rate)
        return record


def schedule_progress(step, elapsed_seconds, config):
    """How far training is, in [0, ∞): step / steps, or with a time budget max(step / steps, elapsed / budget)
    — so the schedule reaches its end at the deadline when the steps would not fit."""
    progress = step / config.steps
    if config.minutes:
        progress = max(progress, elapsed_seconds / (config.minutes * 60.0))
    return progress


def learning_rate(progress, config):
    """Linear warm-up from 0 over ``warmup_fraction``, then cosine decay to 0 at progress 1
    (Loshchilov & Hutter, SGDR: lr = peak · ½(1 + cos(π·t)), t the post-warm-up fraction)."""
    peak = config.peak_learning_rate
    if progress < config.warmup_fraction:
        return peak * progress / config.warmup_fraction
    t = min(1.0, (progress - config.warmup_fraction) / (1.0 - config.warmup_fraction))
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


# --- the training graph -------------------------------------------------------------------------------

class TrainingGraph:
    """Placeholders, adversarial example generation, loss and train op for one mini-zoo model."""

    def __init__(self, spec, config):
        from tensorpack.models import BatchNorm
        from tensorpack.tfutils.argscope import argscope
        from tensorpack.tfutils.collection import freeze_collection
        from tensorpack.tfutils.tower import TowerContext

        from repro.engines.tensorflow import attacks
        from repro.engines.tensorflow.models import model_function, preprocess
        from repro.engines.tensorflow.tfcompat import tf

        self.graph = tf.Graph()
        size, classes = spec.arch.input_size, spec.arch.num_classes
        with self.graph.as_default():
            tf.set_random_seed(config.seed)
            self.images = tf.placeholder(tf.uint8, [None, size, size, 3], name="images_bgr")
            self.labels = tf.placeholder(tf.int64, [None], name="labels")
            self.learning_rate = tf.placeholder(tf.float32, [], name="learning_rate")
            model = model_function(spec, training=True)
            # One training tower entered at the root name scope; the attack loop's model calls run
            # inside attack/attack_loop/while, where no TowerContext may be opened.
            with TowerContext("", is_training=True):
                clean = preprocess(self.images)
                # The attacker's view of the model: BatchNorm on its moving averages, no EMA updates
                # (released adv_model.py: "We use the testing mode of it during attack").
                with freeze_collection([tf.GraphKeys.UPDATE_OPS]), argscope(BatchNorm, training=False):
                    # First call outside the loop: variables cannot be created inside a while_loop.
                    clean_logits = model(clean)
                    self.adversarial = self._adversarial(model, clean, self.labels, classes, config, attacks, tf)
                logits = model(tf.stop_gradient(self.adversarial, name="adv_training_sample"))
            self.loss = self._loss(logits, self.labels, classes, config, tf)
            self.weight_decay = tf.multiply(config.weight_decay, tf.add_n(
                [tf.nn.l2_loss(v) for v in tf.trainable_variables() if v.name.endswith("/W:0")]),
                name="weight_decay")
            self.total_loss = tf.add(self.loss, self.weight_decay, name="total_loss")
            self.accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), self.labels), tf.float32))
            self.clean_accuracy = tf.reduce_mean(
                tf.cast(tf.equal(tf.argmax(clean_logits, 1), self.labels), tf.float32))
            optimizer = tf.train.MomentumOptimizer(self.learning_rate, config.momentum,
                                                   use_nesterov=config.nesterov)
            # BatchNorm's moving averages follow the training forward pass (the attacker's are frozen).
            with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
                self.train_op = optimizer.minimize(self.total_loss)
            self.initializer = tf.global_variables_initializer()
            self.variables = {v.name[:-2]: v for v in tf.global_variables()}

    @staticmethod
    def _adversarial(model, clean, labels, classes, config, attacks, tf):
        """Targeted PGD to random other classes from a clean (20% of batches) or a random start."""
        epsilon = config.attack_epsilon * (2.0 / 255)
        # The graph form of repro.protocol.random_targets: (label + U{1..K-1}) mod K.
        offsets = tf.random_uniform(tf.shape(labels), 1, classes, dtype=tf.int64)
        target = tf.floormod(labels + offsets, classes)
        from_noise = tf.cast(tf.random_uniform([]) >= config.prob_start_from_clean, tf.float32)
        start = clean + from_noise * tf.random_uniform(tf.shape(clean), -epsilon, epsilon)
        with tf.name_scope("attack"):
            adversarial, _ = attacks.pgd_targeted(model, clean, start, target, config.attack_epsilon,
                                                  config.step_size, config.attack_steps)
            return adversarial

    @staticmethod
    def _loss(logits, labels, classes, config, tf):
        """Cross-entropy to labels smoothed by s: (1 − s)·one-hot + s/K (Szegedy et al. 2016)."""
        smoothed = tf.one_hot(labels, classes) * (1.0 - config.label_smoothing) + config.label_smoothing / classes
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(labels=smoothed, logits=logits),
                              name="cross_entropy")


def residual_gamma_at_start(session, built):
    """The initial γ of each residual branch's last BatchNorm (``conv3/bn``, ``non_local/conv/bn``,
    ``*_denoise/conv/bn``) — 0 when the branches start as the identity (Goyal et al. Sec. 5.1) — as
    the distinct values found, for the model card."""
    names = [name for name in built.variables
             if name.endswith("conv3/bn/gamma") or name.endswith("/conv/bn/gamma")]
    values = np.unique(np.concatenate([session.run(built.variables[name]).ravel() for name in names]))
    return [float(value) for value in values]


def source_revision():
    """The git commit of the code that trained the model and which of its files differed from it."""
    from repro.runner import git_state
    return git_state(paths=("repro", "scripts/train_mini.py"))


def train(spec, config, stream):
    """Run the training loop; returns (model arrays by name, run record)."""
    from repro.engines.tensorflow.classifier_graph import model_variables
    from repro.engines.tensorflow.session import session_config
    from repro.engines.tensorflow.tfcompat import tf

    built = TrainingGraph(spec, config)
    names = [name[:-2] if name.endswith(":0") else name for name, _ in model_variables(spec)]
    missing = [name for name in names if name not in built.variables]
    if missing:
        raise RuntimeError("the training graph lacks model variables {}".format(missing[:5]))
    session = tf.Session(graph=built.graph, config=session_config())
    session.run(built.initializer)
    built.graph.finalize()
    initial_residual_gamma = residual_gamma_at_start(session, built)

    budget = config.minutes * 60.0 if config.minutes else None
    began = time.perf_counter()
    step, progress, stopped_by = 0, 0.0, "steps"
    clean_accuracy, losses = float("nan"), []
    with tqdm(total=config.steps, desc=spec.name, unit="step", dynamic_ncols=True) as bar:
        try:
            while step < config.steps:
                progress = schedule_progress(step, time.perf_counter() - began, config)
                if progress >= 1.0 and budget:
                    stopped_by = "deadline"
                    break
                rate = learning_rate(progress, config)
                images, labels = stream.batch(config.batch)
                feed = {built.images: images, built.labels: labels, built.learning_rate: rate}
                if step % config.clean_accuracy_every == 0:
                    # Before the update, on the same batch: inference-mode BatchNorm, clean images.
                    clean_accuracy = float(session.run(built.clean_accuracy, feed))
                _, loss, accuracy = session.run([built.train_op, built.loss, built.accuracy], feed)
                if not np.isfinite(loss):
                    raise FloatingPointError("training loss became {} at step {}: lower --lr".format(loss, step))
                losses.append(float(loss))
                step += 1
                bar.update(1)
                bar.set_postfix(loss="{:.3f}".format(loss), adv_acc="{:.2f}".format(accuracy),
                                clean_acc="{:.2f}".format(clean_accuracy), lr="{:.4f}".format(rate))
        except KeyboardInterrupt:
            # Ctrl-C ends training early like the deadline does: the model so far is evaluated and written.
            stopped_by = "interrupted"
    seconds = time.perf_counter() - began
    arrays = session.run({name: built.variables[name] for name in names})
    session.close()
    tail = losses[-50:]
    record = {"steps": step, "examples": step * config.batch, "wall_time_seconds": round(seconds, 1),
              "stopped_by": stopped_by,
              "final_progress": round(min(1.0, schedule_progress(step, seconds, config)), 4),
              "mean_loss_last_50_steps": float(np.mean(tail)) if tail else None,
              "residual_bn_gamma_init": initial_residual_gamma,
              "last_clean_train_accuracy": clean_accuracy}
    return arrays, record


# --- evaluation and model card -------------------------------------------------------------------------

def evaluate(spec, checkpoint_path, attack_iterations, eval_limit, epsilon, seed, batch):
    """Clean accuracy and each attack's accuracy/success on the test split (first ``eval_limit`` images)."""
    from repro import minidata
    from repro.robustness import RobustnessEvaluator, summarise

    images, labels = minidata.load_split("test")
    if eval_limit:
        images, labels = images[:eval_limit], labels[:eval_limit]
    evaluator = RobustnessEvaluator(spec, checkpoint_path)
    results, began = {}, time.perf_counter()
    try:
        for iterations in [0] + list(attack_iterations):
            key = "clean" if iterations == 0 else "pgd{}".format(iterations)
            with tqdm(total=len(images), desc="{} {}".format(spec.name, key), unit="image",
                      dynamic_ncols=True) as bar:
                result = evaluator.evaluate(images, labels, iterations, epsilon=epsilon, seed=seed,
                                            batch=batch, on_batch=bar.update)
            results[key] = dict(summarise(result), iterations=iterations, seconds=round(result["seconds"], 1))
            log.info("%s %s: accuracy %.1f%%%s", spec.name, key, results[key]["top1_accuracy"]["percent"],
                     "" if iterations == 0 else ", targeted success {:.1f}%".format(
                         results[key]["attack_success"]["percent"]))
    finally:
        evaluator.close()
    return {
        "split": "test (repro.minidata.load_split('test'), class-interleaved, first n images)",
        "n": int(len(images)), "epsilon": epsilon, "seed": seed, "batch": batch,
        "attack": "targeted PGD (repro.engines.tensorflow.attacks.pgd_targeted), BatchNorm in inference mode, random start "
                  "x + U(-eps, eps) and target (label + offset) mod 10 per image from "
                  "repro.protocol.perturbation_draws(seed, image index); step size "
                  "repro.protocol.step_size_rule(eps, iterations)",
        "results": results, "wall_time_seconds": round(time.perf_counter() - began, 1),
    }


def package_versions():
    """Versions of what the numbers depend on, for the model card."""
    import cv2
    import matplotlib
    import skimage
    import tensorflow  # already imported, configured, by repro.engines.tensorflow.tfcompat
    import tensorpack
    return {"python": platform.python_version(), "tensorflow": tensorflow.__version__,
            "tensorpack": tensorpack.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "scikit-image": skimage.__version__, "matplotlib": matplotlib.__version__}


def architecture_record(spec, arrays):
    return {"description": spec.description, "depth": spec.depth, **dataclasses.asdict(spec.arch),
            "parameters": int(sum(a.size for name, a in arrays.items()
                                  if not name.endswith("/EMA"))),
            "variables": len(arrays)}


def model_card(spec, config, run, arrays, checkpoint_path, evaluation, source):
    from repro import minidata
    from repro.checkpoints import sha256_of
    return {
        "zoo": spec.zoo, "model": spec.name,
        "architecture": architecture_record(spec, arrays),
        "checkpoint": {"file": checkpoint_path.name, "sha256": sha256_of(checkpoint_path),
                       "bytes": checkpoint_path.stat().st_size,
                       "format": "tensorpack .npz (name:0 -> array), model variables only"},
        "dataset": {"module": "repro.minidata", "classes": [name for name, _ in minidata.CLASSES],
                    "patch": minidata.PATCH, "channel_order": "BGR",
                    "train": "repro.minidata.TrainStream(seed) (augmented crops of the train tiles)",
                    "test_images": evaluation["n"]},
        "training": {**config.as_dict(),
                     "method": "adversarial training (Xie et al. 2019, Sec. 5): every batch replaced by "
                               "targeted PGD examples to random targets"},
        "seed": config.seed,
        "source": source,
        "run": {**run, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "cpus": os.cpu_count()},
        "evaluation": evaluation,
        "versions": package_versions(),
    }


def parse_args(argv=None):
    from repro import zoo
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=zoo.model_names("mini"), help="mini-zoo model name")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="training steps (default %(default)s)")
    parser.add_argument("--batch", type=int, default=TrainConfig.batch, help="batch size (default %(default)s)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget for training; stops cleanly there, then evaluates and writes")
    parser.add_argument("--lr", type=float, default=TrainConfig.base_learning_rate,
                        help="learning rate at batch 64, scaled linearly with --batch (default %(default)s)")
    parser.add_argument("--attack-steps", type=int, default=TrainConfig.attack_steps,
                        help="PGD steps per training batch (default %(default)s); step size 2ε/steps")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default mini_zoo/)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on the first N test images only (default: all 1000)")
    parser.add_argument("--eval-attacks", default="10,100",
                        help="comma-separated PGD iteration counts to evaluate (default %(default)s)")
    parser.add_argument("--eval-batch", type=int, default=100, help="evaluation batch size (default %(default)s)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation attack's draws")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: re-measure the existing checkpoint in --out and replace its model "
                             "card's evaluation (e.g. on all test images after a first card on a subset)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    try:
        args.eval_attacks = [int(part) for part in args.eval_attacks.split(",") if part.strip()]
    except ValueError:
        parser.error("--eval-attacks takes comma-separated integers, e.g. 10,100")
    if any(k < 1 for k in args.eval_attacks):
        parser.error("--eval-attacks: iteration counts must be at least 1")
    return args


def main(argv=None):
    from repro import minidata, zoo
    from repro.checkpoints import save_checkpoint
    from repro.cli import setup_logging

    args = parse_args(argv)
    setup_logging()
    spec = zoo.get_model(args.model, zoo="mini")
    config = TrainConfig(steps=args.steps, batch=args.batch, seed=args.seed, minutes=args.minutes,
                         base_learning_rate=args.lr, attack_steps=args.attack_steps)
    out = pathlib.Path(args.out)
    card_path = out / (pathlib.Path(spec.checkpoint).stem + ".json")
    if args.evaluate_only:
        return reevaluate(spec, out / spec.checkpoint, card_path, args)
    source = source_revision()          # before training: the code as it was when the run started
    arrays, run = train(spec, config, minidata.TrainStream(args.seed))
    log.info("%s: %d steps in %.0f s (%s)", spec.name, run["steps"], run["wall_time_seconds"], run["stopped_by"])
    checkpoint_path = save_checkpoint(arrays, out / spec.checkpoint)
    evaluation = evaluate(spec, checkpoint_path, args.eval_attacks, args.eval_limit, 16.0,
                          args.eval_seed, args.eval_batch)
    card = model_card(spec, config, run, arrays, checkpoint_path, evaluation, source)
    write_card(card, card_path)
    log.info("wrote %s and %s", checkpoint_path, card_path)
    return 0


def write_card(card, card_path):
    from repro.fileio import atomic_write_text
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")


def reevaluate(spec, checkpoint_path, card_path, args):
    """``--evaluate-only``: a new evaluation of an existing checkpoint in its card (the training record is
    kept; the replaced evaluation's size is noted)."""
    from repro.checkpoints import sha256_of
    from repro.cli import RunFailed
    if not checkpoint_path.is_file() or not card_path.is_file():
        raise RunFailed("--evaluate-only needs {} and its card {}: train it first".format(checkpoint_path, card_path))
    card = json.loads(card_path.read_text())
    if card.get("checkpoint", {}).get("sha256") not in (None, sha256_of(checkpoint_path)):
        raise RunFailed("{} is not the checkpoint its card {} describes (SHA-256 differs)".format(
            checkpoint_path, card_path))
    evaluation = evaluate(spec, checkpoint_path, args.eval_attacks, args.eval_limit, 16.0, args.eval_seed,
                          args.eval_batch)
    evaluation["re_evaluated"] = {"replaces_evaluation_on_n": card.get("evaluation", {}).get("n"),
                                  "source": source_revision(), "versions": package_versions(),
                                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    card["evaluation"] = evaluation
    write_card(card, card_path)
    log.info("re-evaluated %s on %d test images; wrote %s", spec.name, evaluation["n"], card_path)
    return 0


if __name__ == "__main__":
    from repro.cli import run_main
    sys.exit(run_main(main))
