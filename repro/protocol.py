"""The study's protocol, engine-neutral: its settings, its per-image random draws, its metric names.

Nothing here imports TensorFlow (or any other engine): the entry points parse and check their options,
the runner keys its work directory, and every engine draws the same targets, PGD starts and noise from
this module, so that an image gets the same perturbations whatever batch, shard, process or engine
computes it (SPEC §3).
"""
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

PERTURBATIONS = ("random", "adversarial")
"""The perturbed versions of each image whose feature maps are compared with the clean image's."""

PAPER_METRICS = ("frobenius", "mse", "sre", "ssim")
"""The four metrics of the paper's Figures 5.1 and 5.2 (paper §4)."""

DEFAULT_METRICS = PAPER_METRICS + ("sre_eq", "psnr", "rmse", "uiq", "cosine", "rel_l2")
"""The paper's four plus the cheap extras SPEC §5 asks for; all are batched graph ops."""

SLOW_METRICS = ("fsim", "issm")
"""Metrics the paper suggests as future work (§8), computed by image-similarity-measures one channel
at a time in NumPy (tens of milliseconds per channel): opt-in only."""

PER_IMAGE_METRICS = ("amplification", "cka")
"""Whole-map measures, one value per image and block (SPEC §9; the engines give an (N, 1) array):
- ``amplification``: the error amplification of Liao et al. (CVPR 2018), (‖f(x′) − f(x)‖_F / ‖f(x)‖_F) /
  (‖x′ − x‖_F / ‖x‖_F) over the whole map, inputs in model space — the engines compute the numerator
  (``map_relative_change``), `StudyFlow.run_batch` divides by the input's;
- ``cka``: linear CKA (Kornblith et al., ICML 2019) between the clean and the perturbed map, positions as samples
  and channels as features; NaN for a map constant over positions."""

EXTENDED_METRICS = DEFAULT_METRICS + PER_IMAGE_METRICS
"""``--metrics extended``: the default metrics and the whole-map ones."""

METRIC_NAMES = DEFAULT_METRICS + PER_IMAGE_METRICS + SLOW_METRICS

# SSIM constants of Wang et al. 2004, as skimage's structural_similarity uses them.
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# A window variance at most this fraction of the window's mean square is taken as exactly zero in
# UIQ. In float64, E[x²] − E[x]² carries a rounding error of a few 1e-16 · E[x²], so a flat window
# never yields an exact zero; UIQ has no stabilising constant (unlike SSIM's C1, C2), and noise
# divided by noise would be an arbitrary number where the package gives 0. 1e-10 leaves a margin of
# 1e5 over that noise and only catches windows whose spread is below 1e-5 of their magnitude, i.e.
# flat up to float32 rounding.
UIQ_FLAT_WINDOW_TOLERANCE = 1e-10


def ssim_window_size(height, width, win_size=7):
    """The SSIM window used for an H×W map: `win_size`, shrunk to the largest odd size ≤ min(H, W).

    Returns None when that is below 3 (a 1×1 window has no sample covariance): SSIM is then NaN.
    """
    if isinstance(win_size, bool) or not isinstance(win_size, numbers.Integral) \
            or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3 (skimage's rule), got {win_size!r}")
    largest_odd_fitting = min(height, width) if min(height, width) % 2 else min(height, width) - 1
    window = min(int(win_size), largest_odd_fitting)
    return window if window >= 3 else None


def uiq_window_size(height, width, window_size=8):
    """The UIQ window used for an H×W map: `window_size`, shrunk to min(H, W); None below 2."""
    if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size < 2:
        raise ValueError(f"window_size must be an integer >= 2, got {window_size!r}")
    window = min(int(window_size), height, width)
    return window if window >= 2 else None


def band_average_matrix(size, window):
    """(size − window + 1, size) matrix whose row i averages entries i … i + window − 1."""
    matrix = np.zeros((size - window + 1, size), dtype=np.float64)
    for start in range(size - window + 1):
        matrix[start, start:start + window] = 1.0 / window
    return matrix


NOISES = ("uniform", "sign")
ATTACKS = ("targeted", "untargeted", "cw")
"""The attacks of the study, all in the same ε-ball with the same step rule, random start and draws (SPEC §3, §9):
``targeted`` (the paper's: descend the cross-entropy to a random other class), ``untargeted`` (ascend the
cross-entropy of the true label), ``cw`` (descend the targeted Carlini–Wagner margin max(max_{j≠t} z_j − z_t, −κ),
κ = 0, on the logits: Carlini & Wagner, S&P 2017, their f₆)."""
CW_KAPPA = 0.0


def attack_class(attack, labels, targets):
    """The class each image's attack loss refers to: its label for the untargeted attack, its target otherwise."""
    return np.asarray(labels if attack == "untargeted" else targets, np.int64)


def attack_succeeded(attack, predictions, labels, targets):
    """Per image: the adversarial prediction is the target (targeted, cw), or anything but the label (untargeted)."""
    predictions = np.asarray(predictions)
    return predictions != np.asarray(labels) if attack == "untargeted" else predictions == np.asarray(targets)
TAPS = ("block_output", "denoised", "both")
LARGEST_SENSIBLE_EPSILON = 255.0      # pixels: beyond it the ε-ball holds every image


@dataclass
class StudyConfig:
    """Everything that determines the numbers one batch of the study produces (with the model and images)."""
    epsilon: float = 16.0                 # pixels (out of 255)
    attack_iterations: int = 100
    attack_step_size: float = 1.0         # pixels; the step-size rule may raise it
    noise: str = "uniform"                # random perturbation: uniform or sign
    attack: str = "targeted"              # targeted (the paper's), untargeted, cw
    tap: str = "block_output"
    metrics: tuple = DEFAULT_METRICS
    ssim_data_range: object = 2.0         # float, or 'reference'
    seed: int = 0
    attack_chunk: int = 10                # PGD steps per session run (progress only: no result depends on it)

    def __post_init__(self):
        for name in ("epsilon", "attack_step_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError("{} must be a finite number ≥ 0, got {!r}".format(name, value))
        if self.ssim_data_range != "reference" and not (
                isinstance(self.ssim_data_range, numbers.Real) and math.isfinite(self.ssim_data_range)
                and self.ssim_data_range > 0):
            raise ValueError("ssim_data_range must be a finite number > 0 or 'reference', got {!r}".format(
                self.ssim_data_range))
        for name, low in (("attack_iterations", 0), ("attack_chunk", 1)):
            if getattr(self, name) < low:
                raise ValueError("{} must be ≥ {}, got {}".format(name, low, getattr(self, name)))
        if self.noise not in NOISES:
            raise ValueError("unknown noise {!r}: choose {}".format(self.noise, " or ".join(NOISES)))
        if self.attack not in ATTACKS:
            raise ValueError("unknown attack {!r}: choose one of {}".format(self.attack, ", ".join(ATTACKS)))
        if self.tap not in TAPS:
            raise ValueError("unknown tap {!r}: choose one of {}".format(self.tap, ", ".join(TAPS)))
        unknown = [name for name in self.metrics if name not in METRIC_NAMES]
        if unknown:
            raise ValueError("unknown metric(s) {}: choose from {}".format(", ".join(unknown), ", ".join(METRIC_NAMES)))

    @property
    def step_size(self):
        return step_size_rule(self.epsilon, self.attack_iterations, self.attack_step_size)


class NonFiniteAttack(ArithmeticError):
    """The attack's loss, gradient or adversarial images became NaN or infinite: its numbers cannot be right."""


def non_finite_attack(model, precision, image_ids):
    """The one-line error for a non-finite attack on the images ``image_ids`` of ``model``."""
    ids = list(image_ids)
    where = "images {}–{}".format(ids[0], ids[-1]) if len(ids) > 1 else "image {}".format(ids[0]) if ids else "no image"
    advice = ("use --precision bf16 (float32's range) or float32" if precision in ("fp16", "tf32") else
              "use --precision float32" if precision == "bf16" else
              "the checkpoint or the images are broken (the clean forward pass was finite)")
    return NonFiniteAttack("{}: the attack's loss or gradient became non-finite (NaN or inf) in {} arithmetic for the "
                           "batch of {}: nothing was committed for it; {}".format(model, precision, where, advice))


@dataclass
class BatchResult:
    """What one batch of the study gives, whichever engine computed it."""
    image_ids: list
    labels: np.ndarray
    targets: np.ndarray
    predictions: dict                     # perturbation ('clean', 'random', 'adversarial') → (N,)
    values: dict                          # (perturbation, metric, block_index) → (N, C) array
    adversarial: np.ndarray               # (N, 3, H, W) model space
    clean_finite: np.ndarray = None       # (N,) bool: the clean logits and every clean tap are finite
    timings: dict = field(default_factory=dict)
    feature_maps: dict = field(default_factory=dict)   # block_index → (3, N, C, H, W) when requested


def step_size_rule(epsilon, iterations, step_size=1.0):
    """α = max(step_size, ε / iterations) in pixel units: Feature Denoising, Sec. 6.1 — "We set its step
    size α = 1, except for 10-iteration attacks where α is set to ε/10 = 1.6"."""
    return max(step_size, epsilon / iterations) if iterations > 0 else step_size


def random_targets(labels, offsets, num_classes=1000):
    """Target = (label + offset) mod classes, offset uniform in {1, …, classes − 1}: a uniformly random
    class other than the label (Feature Denoising, Sec. 6: "the targeted class is selected uniformly at
    random")."""
    return (np.asarray(labels, np.int64) + np.asarray(offsets, np.int64)) % num_classes


def relative_change(reference, perturbed):
    """‖x′ − x‖_F / ‖x‖_F of each image (the first axis), in float64: the denominator of the amplification."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    difference = np.asarray(perturbed, np.float64).reshape(len(reference), -1) - reference
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(difference, axis=1) / np.linalg.norm(reference, axis=1)


def perturbation_draws(seed, image_ids, image_shape, num_classes=1000, noise="uniform"):
    """Per-image random draws, keyed by (seed, image id) and independent of batching.

    Returns dict with ``target_offset`` (N,), ``start`` (N, C, H, W) in U(-1, 1) for PGD's random start,
    and ``random`` (N, C, H, W) for the random perturbation: U(-1, 1) (``noise='uniform'``) or ±1
    (``noise='sign'``). Both noise arrays are multiplied by ε later.
    """
    if noise not in NOISES:
        raise ValueError("unknown noise {!r}: choose uniform or sign".format(noise))
    offsets, starts, randoms = [], [], []
    for image_id in image_ids:
        rng = np.random.default_rng([seed, int(image_id)])
        offsets.append(rng.integers(1, num_classes))
        starts.append(rng.uniform(-1.0, 1.0, image_shape))
        if noise == "uniform":
            randoms.append(rng.uniform(-1.0, 1.0, image_shape))
        else:
            randoms.append(rng.choice(np.array([-1.0, 1.0]), size=image_shape))
    return {"target_offset": np.array(offsets, np.int64),
            "start": np.array(starts, np.float32).reshape((-1,) + tuple(image_shape)),
            "random": np.array(randoms, np.float32).reshape((-1,) + tuple(image_shape))}


class StudyFlow:
    """The engine-neutral part of one batch of the study: draws, targets and the PGD start from (seed,
    image id), the chunked attack with progress, the warnings, the timings and the `BatchResult`.

    An engine's study class inherits it and provides ``spec``, ``config``, ``taps`` and
    - ``attack_steps(clean, adversarial, targets, steps)`` → (adversarial, finite): ``steps`` PGD steps of
      ``config.attack`` from ``adversarial`` (model-space NCHW float32 arrays), projected into the ε-ball of
      ``clean`` (0 steps: the projection), and whether every loss and gradient stayed finite (checked before
      clipping); ``targets`` are the classes the loss refers to (`attack_class`: labels for the untargeted attack);
    - ``measure(clean, random_noise, adversarial, feature_blocks)``: the tapped forward pass of the three
      versions and the metrics, as dict(predictions, values, clean_finite, features);
    - ``clean_logits(clean)``: logits of model-space images.
    So an engine choice changes only what computes these three, never the batch's flow.
    """

    def run_attack(self, clean, start, targets, on_steps=None):
        """PGD from ``start`` for the configured number of steps, in chunks; ``on_steps(k)`` after each. Returns
        (adversarial, finite): whether every loss and gradient stayed finite (a chunk that is not stops it)."""
        remaining, chunk = self.config.attack_iterations, self.config.attack_chunk
        if remaining < 0:
            raise ValueError("attack_iterations must be ≥ 0, got {}".format(remaining))
        if chunk < 1:
            raise ValueError("attack_chunk must be ≥ 1, got {}".format(chunk))
        if remaining == 0:
            return self.attack_steps(clean, start, targets, 0)
        adversarial = start
        while remaining > 0:
            steps = min(chunk, remaining)
            adversarial, finite = self.attack_steps(clean, adversarial, targets, steps)
            remaining -= steps
            if on_steps:
                on_steps(steps)
            if not finite:
                return adversarial, False
        return adversarial, True

    def run_batch(self, images_bgr, labels, image_ids, on_steps=None, feature_blocks=()):
        """The whole study for one batch of BGR uint8 images; see `BatchResult`. A non-finite attack (loss,
        gradient or adversarial image) raises `NonFiniteAttack` naming the model, the images and the precision."""
        import time

        from repro.data import to_model_space
        config, classes = self.config, self.spec.arch.num_classes
        clean = to_model_space(images_bgr)
        draws = perturbation_draws(config.seed, image_ids, clean.shape[1:], classes, config.noise)
        targets = random_targets(labels, draws["target_offset"], classes)
        start = clean + draws["start"] * np.float32(config.epsilon * 2.0 / 255)
        timings = {}
        began = time.perf_counter()
        adversarial, finite = self.run_attack(clean, start, attack_class(config.attack, labels, targets), on_steps)
        timings["attack"] = time.perf_counter() - began
        if not finite or not np.isfinite(adversarial).all():
            raise non_finite_attack(self.spec.name, getattr(self, "precision", "float32"), image_ids)
        began = time.perf_counter()
        out = self.measure(clean, draws["random"], adversarial, tuple(feature_blocks))
        timings["taps_metrics"] = time.perf_counter() - began
        if "amplification" in config.metrics:
            randomised = np.clip(clean + draws["random"] * np.float32(config.epsilon * 2.0 / 255), -1.0, 1.0)
            for perturbation, perturbed in (("random", randomised), ("adversarial", adversarial)):
                input_change = relative_change(clean, perturbed)[:, None]
                for key in [key for key in out["values"] if key[:2] == (perturbation, "amplification")]:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        out["values"][key] = out["values"][key] / input_change
        n = len(image_ids)
        features = {b: value.reshape((3, n) + value.shape[1:]) for b, value in out.get("features", {}).items()}
        return BatchResult(image_ids=list(image_ids), labels=np.asarray(labels), targets=targets,
                           predictions=out["predictions"], values=out["values"], adversarial=adversarial,
                           clean_finite=np.asarray(out["clean_finite"], bool), timings=timings, feature_maps=features)

    def clean_logits_of(self, images_bgr, batch_size=16):
        """Logits of clean images (BGR uint8), for the sanity check before a long run."""
        from repro.data import to_model_space
        return np.concatenate([self.clean_logits(to_model_space(images_bgr[start:start + batch_size]))
                               for start in range(0, len(images_bgr), batch_size)])
