"""Perturbations in model space (NCHW, [-1, 1]): targeted PGD and random noise (SPEC §3).

Model-agnostic: the attack takes any ``model_fn(image) → logits``. The randomness (targets, PGD's
random start, the random perturbation) is drawn per image from the run's seed and the image's index
(`repro.protocol.perturbation_draws`), so an image gets the same target and noise whatever batch or shard
it is in — which is what lets a killed or sharded run resume without changing any result.
"""
from repro.engines import loss_scale
from repro.protocol import CW_KAPPA
from repro.engines.tensorflow.models import IMAGE_SCALE, model_function
from repro.engines.tensorflow.tfcompat import tf

COMPUTE_DTYPES = {"bf16": tf.bfloat16, "fp16": tf.float16}
"""The attack's model in these dtypes; float32 and tf32 build the float32 graph (TF32 is switched at run time)."""


def epsilon_ball(image, epsilon_pixels):
    """Bounds lo/hi = clip(x ∓ ε, −1, 1) of the L∞ ball in model space (Feature Denoising, Sec. 6)."""
    epsilon = epsilon_pixels * IMAGE_SCALE
    return tf.clip_by_value(image - epsilon, -1.0, 1.0), tf.clip_by_value(image + epsilon, -1.0, 1.0)


def random_perturbation(image, noise, epsilon_pixels):
    """x + ε·noise, clipped to the valid range [-1, 1] (SPEC §3); ``noise`` in [-1, 1]."""
    return tf.clip_by_value(image + noise * (epsilon_pixels * IMAGE_SCALE), -1.0, 1.0)


def attack_loss(logits, target, attack="targeted"):
    """Per image, the loss PGD descends (`repro.protocol.ATTACKS`): the cross-entropy to ``target`` (targeted), its
    negative with ``target`` the true label (untargeted), or the Carlini–Wagner margin
    max(max_{j≠t} z_j − z_t, −κ) on the logits (cw)."""
    if attack == "targeted":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(logits=logits, labels=target)
    if attack == "untargeted":
        return -tf.nn.sparse_softmax_cross_entropy_with_logits(logits=logits, labels=target)
    if attack == "cw":
        target_mask = tf.one_hot(target, tf.shape(logits)[1], on_value=True, off_value=False, dtype=tf.bool)
        target_logit = tf.reduce_sum(tf.where(target_mask, logits, tf.zeros_like(logits)), axis=1)
        best_other = tf.reduce_max(tf.where(target_mask, tf.fill(tf.shape(logits), -float("inf")), logits), axis=1)
        return tf.maximum(best_other - target_logit, -CW_KAPPA)
    raise ValueError("unknown attack {!r}".format(attack))


def pgd_targeted(model_fn, image, adversarial_start, target, epsilon_pixels, step_size_pixels, iterations,
                 loss_scale=None, attack="targeted"):
    """Targeted PGD (Madry et al.), white-box, as in Xie et al.'s evaluation (SPEC §3).

    From ``adversarial_start`` (x + U(−ε, ε) for a fresh attack, or a previous chunk's result) take
    ``iterations`` (a scalar tensor, so one graph serves any number of steps) steps of
        adv ← clip(adv − α · sign(∇_adv CE(model(adv), target)), lo, hi)
    — minimising the cross-entropy to the target — with lo/hi the ε-ball of ``image`` intersected with
    [-1, 1]. Gradients are taken w.r.t. the input only; ``model_fn`` must build BatchNorm in inference
    mode. With zero iterations the start is returned projected into the ball.

    ``loss_scale`` (a positive constant, for a float16 ``model_fn``) multiplies the loss before the gradient
    is taken, so that small gradients do not underflow in float16; a positive factor leaves every sign, and
    so the step, as it is. ``attack`` chooses the loss (`attack_loss`; the name stays: targeted is the paper's).

    Returns (adversarial, finite): ``finite`` is a boolean scalar, False when the start, a loss or a gradient
    was NaN or infinite at any step — checked before clipping, which (on GPUs) turns NaN into a bound.
    """
    low, high = epsilon_ball(image, epsilon_pixels)
    step = step_size_pixels * IMAGE_SCALE

    def one_step(adversarial, finite):
        logits = model_fn(adversarial)
        losses = attack_loss(logits, target, attack)
        if loss_scale is not None:
            losses = losses * loss_scale
        gradient, = tf.gradients(losses, adversarial)
        finite = tf.logical_and(finite, tf.logical_and(tf.reduce_all(tf.is_finite(losses)),
                                                       tf.reduce_all(tf.is_finite(gradient))))
        return [tf.clip_by_value(adversarial - tf.sign(gradient) * step, low, high), finite]

    with tf.name_scope("attack_loop"):
        final, finite = tf.while_loop(lambda *_: True, one_step,
                                      [adversarial_start, tf.reduce_all(tf.is_finite(adversarial_start))],
                                      back_prop=False, maximum_iterations=iterations, parallel_iterations=1)
    return tf.clip_by_value(final, low, high), finite


def attack_in_graph(spec, precision, image, start, target, epsilon_pixels, step_size_pixels, iterations,
                    attack="targeted"):
    """Targeted PGD (`pgd_targeted`, SPEC §3) on ``spec``'s network in ``precision``'s arithmetic:
    the model in bfloat16 or float16 on the same float32 variables (`repro.engines.tensorflow.models.model_function`), the
    cross-entropy on float32 logits, float16's loss scaled (`repro.engines.FP16_LOSS_SCALE`). Like the original
    code's half-precision attack, for speed on GPUs; build it inside the graph's inference TowerContext."""
    model = model_function(spec, compute_dtype=COMPUTE_DTYPES.get(precision))
    return pgd_targeted(model, image, start, target, epsilon_pixels, step_size_pixels, iterations,
                        loss_scale=loss_scale(precision), attack=attack)
