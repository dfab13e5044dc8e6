"""Perturbations in model space (NCHW, [-1, 1]): targeted PGD and random noise (SPEC §3).

Model-agnostic: the attack takes any ``model_fn(image) → logits``. The randomness (targets, PGD's
random start, the random perturbation) is drawn per image from the run's seed and the image's index
(`perturbation_draws`), so an image gets the same target and noise whatever batch or shard it is in —
which is what lets a killed or sharded run resume without changing any result.
"""
import numpy as np

from repro.models import IMAGE_SCALE
from repro.tfcompat import tf


def step_size_rule(epsilon, iterations, step_size=1.0):
    """α = max(step_size, ε / iterations) in pixel units: Feature Denoising, Sec. 6.1 — "We set its step
    size α = 1, except for 10-iteration attacks where α is set to ε/10 = 1.6"."""
    return max(step_size, epsilon / iterations) if iterations > 0 else step_size


def random_targets(labels, offsets, num_classes=1000):
    """Target = (label + offset) mod classes, offset uniform in {1, …, classes − 1}: a uniformly random
    class other than the label (Feature Denoising, Sec. 6: "the targeted class is selected uniformly at
    random")."""
    return (np.asarray(labels, np.int64) + np.asarray(offsets, np.int64)) % num_classes


def perturbation_draws(seed, image_ids, image_shape, num_classes=1000, noise="uniform"):
    """Per-image random draws, keyed by (seed, image id) and independent of batching.

    Returns dict with ``target_offset`` (N,), ``start`` (N, C, H, W) in U(-1, 1) for PGD's random start,
    and ``random`` (N, C, H, W) for the random perturbation: U(-1, 1) (``noise='uniform'``) or ±1
    (``noise='sign'``). Both noise arrays are multiplied by ε later.
    """
    offsets, starts, randoms = [], [], []
    for image_id in image_ids:
        rng = np.random.default_rng([seed, int(image_id)])
        offsets.append(rng.integers(1, num_classes))
        starts.append(rng.uniform(-1.0, 1.0, image_shape))
        if noise == "uniform":
            randoms.append(rng.uniform(-1.0, 1.0, image_shape))
        elif noise == "sign":
            randoms.append(rng.choice(np.array([-1.0, 1.0]), size=image_shape))
        else:
            raise ValueError("unknown noise {!r}: choose uniform or sign".format(noise))
    return {"target_offset": np.array(offsets, np.int64),
            "start": np.array(starts, np.float32).reshape((-1,) + tuple(image_shape)),
            "random": np.array(randoms, np.float32).reshape((-1,) + tuple(image_shape))}


def epsilon_ball(image, epsilon_pixels):
    """Bounds lo/hi = clip(x ∓ ε, −1, 1) of the L∞ ball in model space (Feature Denoising, Sec. 6)."""
    epsilon = epsilon_pixels * IMAGE_SCALE
    return tf.clip_by_value(image - epsilon, -1.0, 1.0), tf.clip_by_value(image + epsilon, -1.0, 1.0)


def random_perturbation(image, noise, epsilon_pixels):
    """x + ε·noise, clipped to the valid range [-1, 1] (SPEC §3); ``noise`` in [-1, 1]."""
    return tf.clip_by_value(image + noise * (epsilon_pixels * IMAGE_SCALE), -1.0, 1.0)


def pgd_targeted(model_fn, image, adversarial_start, target, epsilon_pixels, step_size_pixels, iterations):
    """Targeted PGD (Madry et al.), white-box, as in Xie et al.'s evaluation (SPEC §3).

    From ``adversarial_start`` (x + U(−ε, ε) for a fresh attack, or a previous chunk's result) take
    ``iterations`` (a scalar tensor, so one graph serves any number of steps) steps of
        adv ← clip(adv − α · sign(∇_adv CE(model(adv), target)), lo, hi)
    — minimising the cross-entropy to the target — with lo/hi the ε-ball of ``image`` intersected with
    [-1, 1]. Gradients are taken w.r.t. the input only; ``model_fn`` must build BatchNorm in inference
    mode. With zero iterations the start is returned projected into the ball.
    """
    low, high = epsilon_ball(image, epsilon_pixels)
    step = step_size_pixels * IMAGE_SCALE

    def one_step(adversarial):
        logits = model_fn(adversarial)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=logits, labels=target)
        gradient, = tf.gradients(losses, adversarial)
        return tf.clip_by_value(adversarial - tf.sign(gradient) * step, low, high)

    with tf.name_scope("attack_loop"):
        final = tf.while_loop(lambda _: True, one_step, [adversarial_start], back_prop=False,
                              maximum_iterations=iterations, parallel_iterations=1)
    return tf.clip_by_value(final, low, high)
