"""The project's evaluation attack as a robustness number: top-1 accuracy and targeted attack success.

One restored model per evaluator holds the clean forward pass and targeted PGD (SPEC §3) with the attack's
ε, step size and number of steps given at run time, so clean, PGD-10 and PGD-100 share it (the TensorFlow
engine's `repro.engines.tensorflow.AttackGraph`, or the PyTorch engine's). The randomness is the study's: the target and the random
start of image ``i`` come from ``repro.protocol.perturbation_draws(seed, [image_ids[i]], ...)`` whatever the
batch, so these numbers are exactly those of the study's adversarial predictions on the same images.
Used by ``scripts/train_mini.py`` for the model cards and by ``repro/validate.py``.
"""
import time

import numpy as np

from repro import engines, protocol
from repro.aggregate import wilson_interval
from repro.data import to_model_space


class RobustnessEvaluator:
    """``spec``'s network restored strictly from ``checkpoint`` with the evaluation attack, on ``engine``
    (`repro.engines`); the draws and the counting here are the same for every engine."""

    def __init__(self, spec, checkpoint, engine=engines.DEFAULT_ENGINE, precision="float32", device=None,
                 deterministic=True, attack="targeted"):
        self.spec, self.precision, self.attack = spec, precision, attack
        self.model = engines.attack_model(engine, spec, checkpoint, precision=precision, device=device,
                                          deterministic=deterministic, attack=attack)
        self.checkpoint = self.model.checkpoint

    def evaluate(self, images, labels, iterations, epsilon=16.0, seed=0, batch=50, image_ids=None,
                 step_size=1.0, on_batch=None):
        """Top-1 correct count and targeted success count on BGR uint8 ``images`` (N×H×W×3).

        ``iterations`` = 0 classifies the clean images (no perturbation; ``success`` is None). Otherwise
        targeted PGD with ε = ``epsilon`` pixels, α = ``protocol.step_size_rule(epsilon, iterations,
        step_size)`` (1 at 100 steps, 1.6 at 10), a random start x + U(−ε, ε) and target (label + offset)
        mod classes, both drawn per image from (seed, image id); ``image_ids`` default to 0 … N−1.
        An attack succeeds when the prediction is the target (SPEC §3). ``on_batch(k)`` after k images.

        Returns dict(n, correct, success, predictions, targets, step_size, seconds).
        """
        images, labels = np.asarray(images), np.asarray(labels, np.int64)
        if len(images) != len(labels):
            raise ValueError("got {} images but {} labels: pass one label per image".format(
                len(images), len(labels)))
        image_ids = np.arange(len(images)) if image_ids is None else np.asarray(image_ids)
        num_classes = self.spec.arch.num_classes
        alpha = protocol.step_size_rule(epsilon, iterations, step_size)
        predictions, targets = [], []
        began = time.perf_counter()
        for first in range(0, len(images), batch):
            clean = to_model_space(images[first:first + batch])
            if iterations == 0:
                predictions.append(self.model.clean_predictions(images[first:first + batch]))
            else:
                draws = protocol.perturbation_draws(seed, image_ids[first:first + batch], clean.shape[1:],
                                                   num_classes)
                target = protocol.random_targets(labels[first:first + batch], draws["target_offset"],
                                                num_classes)
                start = clean + draws["start"] * np.float32(epsilon * 2.0 / 255)
                predicted, finite = self.model.adversarial_predictions(
                    clean, start, protocol.attack_class(self.attack, labels[first:first + batch], target), iterations,
                    epsilon, alpha)
                if not finite:
                    raise protocol.non_finite_attack(self.spec.name, self.precision,
                                                     image_ids[first:first + batch])
                predictions.append(predicted)
                targets.append(target)
            if on_batch:
                on_batch(len(clean))
        predictions = np.concatenate(predictions) if predictions else np.zeros(0, np.int64)
        targets = np.concatenate(targets) if targets else None
        return {
            "n": int(len(labels)),
            "correct": int(np.sum(predictions == labels)),
            "success": None if targets is None else int(np.sum(protocol.attack_succeeded(
                self.attack, predictions, labels, targets))),
            "predictions": predictions, "targets": targets,
            "step_size": None if iterations == 0 else alpha,
            "seconds": time.perf_counter() - began,
        }

    def close(self):
        self.model.close()


def evaluate_robustness(spec, checkpoint, images, labels, iterations, epsilon=16.0, seed=0, batch=50,
                        engine=engines.DEFAULT_ENGINE, **options):
    """One evaluation (see `RobustnessEvaluator.evaluate`) with a model of its own."""
    evaluator = RobustnessEvaluator(spec, checkpoint, engine=engine)
    try:
        return evaluator.evaluate(images, labels, iterations, epsilon=epsilon, seed=seed, batch=batch, **options)
    finally:
        evaluator.close()


def rate(count, n):
    """Count, percentage and 95% Wilson interval in percent (`repro.aggregate.wilson_interval`)."""
    low, high = wilson_interval(count, n)
    return {"count": int(count), "n": int(n), "percent": 100.0 * count / n if n else float("nan"),
            "interval95_percent": [100.0 * low, 100.0 * high]}


def summarise(result):
    """A JSON-ready record of one `evaluate` result: accuracy and (for attacks) targeted success."""
    record = {"n": result["n"], "top1_accuracy": rate(result["correct"], result["n"]),
              "top1_error": rate(result["n"] - result["correct"], result["n"])}
    if result["success"] is not None:
        record["attack_success"] = rate(result["success"], result["n"])
        record["step_size"] = result["step_size"]
    return record
