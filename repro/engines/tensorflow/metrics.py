"""Per-channel similarity metrics between clean and perturbed feature maps, as TensorFlow graph ops.

The study compares the output of every residual block for a clean image A (the reference) and a
perturbed image B (the reconstruction), one channel at a time: "This similarity was calculated by
treating the feature maps of the original input as the true image and the feature maps of perturbed
inputs as reconstructions" (paper §5.1; SPEC §5). ResNet-152 has 47,872 channel maps per image, so
every metric here is a graph op over a whole tap tensor: two (N, C, H, W) tensors in, one (N, C)
tensor out. Nothing larger than those scalars has to leave the session.

Speed: SSIM, UIQ and every per-channel sum are XLA-compiled functions (`_compiled`), one loop over the maps
instead of one pass per TensorFlow op; a window mean is a separable VALID average pool compiled into that loop,
and a sum runs over H before W (`_channel_sum`), which XLA vectorises. A function is compiled once per map
shape and batch size and shared by every block of that shape (ResNet-152's 50 blocks have four shapes), so
compiling costs seconds per graph, not per block. SSIM needs four window means, not five (σx² + σy² from one
window mean of x² + y²).

Numerics: the tap tensors are float32; every metric casts them to float64 first, because SSIM and
UIQ take window variances as E[x²] − E[x]² (a difference of nearly equal numbers in flat windows)
and the sums run over up to 56·56 values. Measured on post-ReLU-like maps of the real block sizes
(``tests/test_metrics.py``, ``scripts/bench_metrics.py``): SSIM within 1e-15 of skimage on float64
copies of the maps and within 2e-7 of skimage on the float32 maps (which it filters in float32);
SRE within 1e-6 dB and UIQ within 2e-7 of image-similarity-measures (float32 inside); the
sum-based metrics within 1e-12 relative of float64 NumPy.

Degenerate maps are not hidden: an all-zero reference gives SRE = −inf, identical maps give
SRE = PSNR = +inf, 0/0 gives NaN, exactly where the formula does. Downstream code counts and
excludes non-finite values (SPEC §5: "exclude and count such channels").

Public API:
- ``<metric>_per_channel(reference, perturbed, **options)``: one graph op, (N, C, H, W) → (N, C).
- ``METRICS``: metric name → that function; ``PAPER_METRICS``, ``DEFAULT_METRICS``, ``SLOW_METRICS``.
- ``metric_ops(reference, perturbed, metrics, **options)``: many metrics at once, sharing the
  per-channel sums (of squared differences, products, squares) and the clean maps' means and ranges.
- ``per_channel(metric, reference, perturbed, **options)``: the same kernels on NumPy arrays.
"""
import collections
import functools
import inspect
import math
import numbers

import numpy as np

from repro.package_metrics import package_metric_loop
from repro.protocol import (DEFAULT_METRICS, METRIC_NAMES, PAPER_METRICS, SLOW_METRICS,  # noqa: F401
                            SSIM_K1, SSIM_K2, UIQ_FLAT_WINDOW_TOLERANCE, ssim_window_size,
                            uiq_window_size)
from repro.engines.tensorflow.tfcompat import tf

_GRAPH_CACHE_SIZE = 16


def _compiled(function):
    """`function` as an XLA-compiled TensorFlow function (``jit_compile=True``): its element-wise arithmetic,
    pooling and reductions become fused loops that read the maps once, where plain TensorFlow writes and reads
    a float64 copy per op. Traced once per input signature (map shape; Python arguments such as the window
    are part of it) and compiled once per concrete shape, so all blocks of one shape share one compilation.

    Measured over ResNet-152's 50 block outputs (`scripts/bench_metrics.py`, 2 cores; alternating A/B in one
    process): SSIM 111 → 50 ms per image, the sum of squared differences 10.8 → 5.3 ms (3.5 ms with
    `_channel_sum`); values equal to 3e-15. Compiling costs about 0.7 s per map shape for SSIM and 0.2 s for a
    sum. XLA on this CPU runs one compiled function at a time (two in one session run take the sum of their
    times), so every sum is made cheap rather than run beside another."""
    return tf.function(function, jit_compile=True, autograph=False)


def _window_mean(maps, window):
    """Mean of every `window`×`window` block that fits inside (N, C, H, W) maps (step 1, no padding):
    (N, C, H − window + 1, W − window + 1). Separable, along W then H: inside an XLA function these are two
    fused loops. SSIM over ResNet-152's 50 blocks took 50 ms per image this way, 111 ms with the banded matrix
    products it replaced (L_H · X · L_Wᵀ, outside XLA) and 123 ms with one window×window pool."""
    maps = tf.nn.avg_pool2d(maps, [1, 1, 1, window], [1, 1, 1, 1], "VALID", data_format="NCHW")
    return tf.nn.avg_pool2d(maps, [1, 1, window, 1], [1, 1, 1, 1], "VALID", data_format="NCHW")


def _as_float64(reference, perturbed):
    return tf.cast(reference, tf.float64), tf.cast(perturbed, tf.float64)


def _channel_sum(maps):
    """Σ over each channel of (N, C, H, W) maps, inside a compiled function: over H first, then over W.

    XLA on CPU vectorises a reduction over a major axis (here across W) but runs one over the minor axes as a
    single chain of dependent scalar additions; the W-sum as a product with a ones vector keeps XLA from merging
    the two reductions back into one. Measured over ResNet-152's 50 blocks: ΣAB 6.6 → 3.5 ms per image, and
    cosine (ΣAB, ΣA², ΣB²) 12.1 → 7.5–7.9 ms."""
    rows = tf.reduce_sum(maps, axis=2)
    return tf.einsum("ncw,w->nc", rows, tf.ones([int(rows.shape[2])], maps.dtype))


def _channel_mean(maps):
    return _channel_sum(maps) / (int(maps.shape[2]) * int(maps.shape[3]))


@_compiled
def _sum_squared_difference(reference, perturbed):
    """Σ (A − B)² per channel in float64: (N, C, H, W) × 2 → (N, C)."""
    reference, perturbed = _as_float64(reference, perturbed)
    return _channel_sum(tf.square(reference - perturbed))


@_compiled
def _sum_squares(maps):
    """Σ A² per channel in float64: (N, C, H, W) → (N, C)."""
    return _channel_sum(tf.square(tf.cast(maps, tf.float64)))


@_compiled
def _channel_mean_float64(maps):
    """The mean of each channel in float64: (N, C, H, W) → (N, C)."""
    return _channel_mean(tf.cast(maps, tf.float64))


@_compiled
def _sum_product(reference, perturbed):
    """Σ A·B per channel in float64: (N, C, H, W) × 2 → (N, C)."""
    reference, perturbed = _as_float64(reference, perturbed)
    return _channel_sum(reference * perturbed)


def _per_map(value):
    """A scalar, or an (N, C) per-channel value broadcast over (N, C, h, w) maps."""
    return value[:, :, tf.newaxis, tf.newaxis] if value.shape.rank == 2 else value


@_compiled
def _mean_ssim(reference, perturbed, peak, window):
    """Mean SSIM per channel (see `ssim_per_channel`), peak = R: a float64 scalar or (N, C)."""
    x, y = _as_float64(reference, perturbed)
    # The formula needs σx² + σy², never either alone: one window mean of x² + y² instead of two.
    means = _window_mean(tf.concat([x, y, tf.square(x) + tf.square(y), x * y], axis=1), window)
    mean_x, mean_y, mean_squares_sum, mean_product = tf.split(means, 4, axis=1)
    peak = _per_map(peak)
    c1 = tf.square(SSIM_K1 * peak)
    c2 = tf.square(SSIM_K2 * peak)
    # Sample (co)variances, as skimage's use_sample_covariance=True: window mean × n / (n − 1).
    sample_norm = window ** 2 / (window ** 2 - 1.0)
    means_product = mean_x * mean_y
    means_squared = tf.square(mean_x) + tf.square(mean_y)
    variances = sample_norm * (mean_squares_sum - means_squared)
    covariance = sample_norm * (mean_product - means_product)
    ssim_map = ((2.0 * means_product + c1) * (2.0 * covariance + c2)) / (
        (means_squared + c1) * (variances + c2))
    return _channel_mean(ssim_map)


@_compiled
def _mean_uiq(reference, perturbed, window):
    """Mean UIQ per channel (see `uiq_per_channel`)."""
    x, y = _as_float64(reference, perturbed)
    means = _window_mean(tf.concat([x, y, tf.square(x), tf.square(y), x * y], axis=1), window)
    mean_x, mean_y, mean_square_x, mean_square_y, mean_product = tf.split(means, 5, axis=1)
    # Population (co)variances as the package's np.var; Q does not depend on n vs n − 1.
    var_x = mean_square_x - tf.square(mean_x)
    var_y = mean_square_y - tf.square(mean_y)
    cov_xy = mean_product - mean_x * mean_y
    flat_x = var_x <= UIQ_FLAT_WINDOW_TOLERANCE * mean_square_x
    flat_y = var_y <= UIQ_FLAT_WINDOW_TOLERANCE * mean_square_y
    zeros = tf.zeros_like(var_x)
    var_x = tf.where(flat_x, zeros, var_x)
    var_y = tf.where(flat_y, zeros, var_y)
    cov_xy = tf.where(tf.logical_or(flat_x, flat_y), zeros, cov_xy)  # |σxy| ≤ σx·σy
    numerator = 4.0 * cov_xy * mean_x * mean_y
    denominator = (var_x + var_y) * (tf.square(mean_x) + tf.square(mean_y))
    # The package maps 0/0 to 0 (np.nan_to_num); with flat windows zeroed, a zero denominator
    # always comes with a zero numerator, so divide_no_nan gives exactly that.
    return _channel_mean(tf.math.divide_no_nan(numerator, denominator))


def _whole_map_relative_change(pair):
    """‖A − B‖_F / ‖A‖_F over each image's whole map (all channels), (N, 1): the amplification's numerator
    (`repro.protocol.PER_IMAGE_METRICS`; the study divides by the input's relative change)."""
    squared_error = tf.reduce_sum(pair.sum_squared_error, axis=1, keepdims=True)
    squared_norm = tf.reduce_sum(tf.square(pair.reference_norm), axis=1, keepdims=True)
    return tf.sqrt(squared_error) / tf.sqrt(squared_norm)


def _linear_cka(pair):
    """Linear CKA (Kornblith et al., ICML 2019) of each image's clean and perturbed maps, (N, 1): X, Y the maps as
    (H·W) × C matrices centred over positions, CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F). Through the C × C Gram
    products, or the (H·W) × (H·W) ones (‖YᵀX‖²_F = ⟨XXᵀ, YYᵀ⟩_F) when a map has fewer positions than channels;
    NaN (0/0) for a map constant over positions."""
    x, y = (tf.cast(tensor, tf.float64) for tensor in (pair.given_reference, pair.given_perturbed))
    channels = int(pair.given_reference.shape[1])
    x, y = (tf.reshape(tensor, [tf.shape(tensor)[0], channels, pair.pixel_count]) for tensor in (x, y))
    x, y = (tensor - tf.reduce_mean(tensor, axis=2, keepdims=True) for tensor in (x, y))     # centred: (N, C, HW)
    if pair.pixel_count < channels:
        gram_x, gram_y = (tf.matmul(tensor, tensor, transpose_a=True) for tensor in (x, y))   # (N, HW, HW)
        cross = tf.reduce_sum(gram_x * gram_y, axis=[1, 2])
    else:
        gram_x, gram_y = (tf.matmul(tensor, tensor, transpose_b=True) for tensor in (x, y))   # (N, C, C)
        cross = tf.reduce_sum(tf.square(tf.matmul(y, x, transpose_b=True)), axis=[1, 2])
    norm_x, norm_y = (tf.norm(gram, axis=[1, 2]) for gram in (gram_x, gram_y))
    return (cross / (norm_x * norm_y))[:, tf.newaxis]


class ChannelPair:
    """A clean and a perturbed tap tensor (N, C, H, W) with the per-channel quantities several metrics
    share (the sum of squared differences, norms, means), in float64.

    Each shared quantity is built once, on first use, so ``metric_ops`` adds every common
    subexpression to the graph only once. The batch size N may be unknown; H and W must be static
    because the SSIM/UIQ windows depend on them.
    """

    def __init__(self, reference, perturbed):
        reference = tf.convert_to_tensor(reference)
        perturbed = tf.convert_to_tensor(perturbed)
        _check_tensor_pair(reference, perturbed)
        self.given_reference, self.given_perturbed = reference, perturbed  # as tapped: float32 in the study
        _, _, self.height, self.width = reference.shape.merge_with(perturbed.shape).as_list()
        self.pixel_count = self.height * self.width

    @functools.cached_property
    def sum_squared_error(self):
        """Σ (A − B)² over each channel, shape (N, C)."""
        return _sum_squared_difference(self.given_reference, self.given_perturbed)

    @functools.cached_property
    def sum_product(self):
        """Σ A·B over each channel, shape (N, C)."""
        return _sum_product(self.given_reference, self.given_perturbed)

    @functools.cached_property
    def reference_mean(self):
        return _channel_mean_float64(self.given_reference)

    @functools.cached_property
    def reference_norm(self):
        """‖A‖_F of each channel, shape (N, C)."""
        return tf.sqrt(_sum_squares(self.given_reference))

    @functools.cached_property
    def perturbed_norm(self):
        """‖B‖_F of each channel, shape (N, C)."""
        return tf.sqrt(_sum_squares(self.given_perturbed))

    @functools.cached_property
    def reference_value_range(self):
        """max(A) − min(A) of each clean channel, shape (N, C): the 'reference' data range (max and min are
        exact in the maps' own dtype; the difference is taken in float64)."""
        largest = tf.cast(tf.reduce_max(self.given_reference, axis=[2, 3]), tf.float64)
        return largest - tf.cast(tf.reduce_min(self.given_reference, axis=[2, 3]), tf.float64)

    def data_range(self, data_range):
        """The data range R: a float64 scalar, or the (N, C) clean-map ranges for ``'reference'``."""
        _check_data_range(data_range)
        if data_range == "reference":
            return self.reference_value_range
        return tf.constant(float(data_range), tf.float64)

    def nan_per_channel(self):
        """An (N, C) tensor of NaN: the value of a metric that is undefined for this map size."""
        return tf.fill(tf.shape(self.given_reference)[:2], tf.constant(math.nan, tf.float64))


def _check_tensor_pair(reference, perturbed):
    """Reject tensors that are not (N, C, H, W) with equal, statically known H and W."""
    for name, tensor in (("reference", reference), ("perturbed", perturbed)):
        if tensor.shape.rank != 4:
            raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tensor.shape}")
        if not tensor.dtype.is_floating:
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype.name}")
    if not reference.shape.is_compatible_with(perturbed.shape):
        raise ValueError(f"reference and perturbed shapes differ: {reference.shape} vs {perturbed.shape}")
    merged = reference.shape.merge_with(perturbed.shape)
    if None in merged.as_list()[2:]:
        raise ValueError(f"the map height and width must be known when the graph is built, got shape {merged}")


def _log10(x):
    return tf.math.log(x) / math.log(10.0)


def _check_data_range(data_range):
    """A positive finite number or the string 'reference'; anything else is a ValueError."""
    if isinstance(data_range, str):
        if data_range != "reference":
            raise ValueError(f"data_range must be a positive number or 'reference', got {data_range!r}")
        return
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real) \
            or not math.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number or 'reference', got {data_range!r}")


# --- Kernels: each takes a ChannelPair and returns (N, C) float64 -------------------------------

def _frobenius(pair):
    return tf.sqrt(pair.sum_squared_error)


def _mse(pair):
    return pair.sum_squared_error / pair.pixel_count


def _rmse(pair):
    return tf.sqrt(_mse(pair))


def _sre(pair):
    return 10.0 * _log10(tf.square(pair.reference_mean) / (_frobenius(pair) / pair.pixel_count))


def _sre_eq(pair):
    return 10.0 * _log10(tf.square(pair.reference_mean) / _mse(pair))


def _psnr(pair, *, data_range=2.0):
    return 10.0 * _log10(tf.square(pair.data_range(data_range)) / _mse(pair))


def _cosine(pair):
    return pair.sum_product / (pair.reference_norm * pair.perturbed_norm)


def _rel_l2(pair):
    return _frobenius(pair) / pair.reference_norm


def _ssim(pair, *, data_range=2.0, win_size=7):
    window = ssim_window_size(pair.height, pair.width, win_size)
    if window is None:
        return pair.nan_per_channel()
    ssim = _mean_ssim(pair.given_reference, pair.given_perturbed, pair.data_range(data_range), window)
    if data_range == "reference":
        # A constant clean map has range 0, so C1 = C2 = 0 and SSIM is 0/0 or 0 window by window
        # depending on the perturbed map: not a similarity. Mark the channel NaN (excluded downstream).
        ssim = tf.where(pair.reference_value_range > 0, ssim, pair.nan_per_channel())
    return ssim


def _uiq(pair, *, window_size=8):
    window = uiq_window_size(pair.height, pair.width, window_size)
    if window is None:
        return pair.nan_per_channel()
    return _mean_uiq(pair.given_reference, pair.given_perturbed, window)


def _package_metric_op(name, pair):
    """A slow package metric inside the graph: Python runs per channel while the session runs."""
    def compute(reference, perturbed):
        return package_metric_loop(name, reference, perturbed)

    values = tf.numpy_function(compute, [pair.given_reference, pair.given_perturbed], tf.float64,
                               stateful=False)
    values.set_shape(pair.given_reference.shape[:2])
    return values


def _fsim(pair):
    return _package_metric_op("fsim", pair)


def _issm(pair):
    return _package_metric_op("issm", pair)


# --- Public graph functions ---------------------------------------------------------------------

def frobenius_per_channel(reference, perturbed):
    """Frobenius (Euclidean) distance ‖A − B‖_F = sqrt(Σ (a_ij − b_ij)²) per channel (paper §4.1).

    (N, C, H, W) × 2 → (N, C) float64. The paper computed it with NumPy.
    """
    return _run(_frobenius, reference, perturbed)


def mse_per_channel(reference, perturbed):
    """Mean squared error (1/n) Σ (a_ij − b_ij)², n = H·W, per channel (paper §4.3)."""
    return _run(_mse, reference, perturbed)


def rmse_per_channel(reference, perturbed):
    """Root mean squared error sqrt(MSE) per channel."""
    return _run(_rmse, reference, perturbed)


def sre_per_channel(reference, perturbed):
    """Signal to reconstruction error ratio as image-similarity-measures 0.3.6 computes it:

        SRE = 10 · log10( mean(A)² / (‖A − B‖_F / n) ),   n = H·W

    The norm is not squared, unlike the paper's equation (``sre_eq``); this is the form behind the
    paper's figures (SPEC §5). The package casts A (not B) to float32 and evaluates in float32; here
    it is float64. A zero-mean reference gives −inf, identical maps +inf, both at once NaN.
    """
    return _run(_sre, reference, perturbed)


def sre_eq_per_channel(reference, perturbed):
    """SRE as the paper's equation (§4.4) writes it: 10 · log10( mean(A)² / (‖B − A‖²_F / n) ).

    Equals 10·log10(mean(A)² / MSE). ±inf and NaN arise as for ``sre``.
    """
    return _run(_sre_eq, reference, perturbed)


def psnr_per_channel(reference, perturbed, *, data_range=2.0):
    """Peak signal to noise ratio 10 · log10(R² / MSE), as skimage's peak_signal_noise_ratio with
    `data_range` = R given.

    data_range: a positive number (default 2.0, the same default as ``ssim``) or ``'reference'``,
    R = max(A) − min(A) of each clean channel. Identical maps give +inf; a constant clean map with
    ``'reference'`` gives R = 0 and so −inf (or NaN when the maps are also identical), as skimage.
    """
    return _run(_psnr, reference, perturbed, data_range=data_range)


def ssim_per_channel(reference, perturbed, *, data_range=2.0, win_size=7):
    """Mean structural similarity per channel, as skimage.metrics.structural_similarity on a 2-D
    float map with gaussian_weights=False, use_sample_covariance=True (its defaults), K1 = 0.01,
    K2 = 0.03 (Wang et al. 2004; paper §4.2):

        SSIM = mean over windows of (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (K1 R)², C2 = (K2 R)²,

    with μ, σ² and σxy the mean, sample variance and sample covariance (factor w²/(w² − 1)) of each
    w×w window. skimage filters the whole map and then crops (w − 1)/2 at every border, so the mean
    runs exactly over the windows that fit entirely inside the map (VALID windows), as here.

    data_range: R, a positive number — default 2.0, what the paper's skimage (2021) used for float
    input (the float dtype range [−1, 1]) — or ``'reference'``: max(A) − min(A) of each clean
    channel. With ``'reference'`` a constant clean map (range 0, e.g. an all-zero "dead" channel)
    gives NaN, since C1 = C2 = 0 leave 0/0 or 0 window by window; downstream excludes it.

    win_size: odd window side, default 7. Maps smaller than the window: the window shrinks to the
    largest odd size ≤ min(H, W) (what skimage computes when given that win_size; e.g. 5 for a 5×5
    or 6×9 map). Maps with min(H, W) < 3: NaN.
    """
    return _run(_ssim, reference, perturbed, data_range=data_range, win_size=win_size)


def uiq_per_channel(reference, perturbed, *, window_size=8):
    """Universal image quality index (Wang & Bovik 2002) per channel, as
    image_similarity_measures.quality_metrics.uiq (0.3.6) computes it on an H×W×1 array:

        Q = mean over all window_size² windows (step 1) of 4 σxy μx μy / ((σx² + σy²)(μx² + μy²)).

    Zero-denominator windows: the paper's formula is undefined there; the package turns the 0/0
    into 0 (``np.nan_to_num``), so a window where either map is flat (e.g. all zero, common after
    a ReLU) scores 0, and even identical maps score below 1 when they contain flat windows. This
    follows the package. Flatness is decided with UIQ_FLAT_WINDOW_TOLERANCE (see there) because
    the one-pass float64 variance is never exactly zero. The package's float32 variance of a flat
    window is exactly zero only when the float32 mean is exact (e.g. constant 2.0); otherwise
    (constant 0.3) it is rounding noise, and the package returns ~1e-14 against a varying window
    but 1 for two identical such windows, where constant 2.0 windows give 0. Here every flat
    window scores 0, whatever its value.

    Maps smaller than the window: the package raises; here the window shrinks to min(H, W) (what
    the package computes with that window_size; a single window for ResNet's 7×7 maps). Maps with
    min(H, W) < 2: NaN.
    """
    return _run(_uiq, reference, perturbed, window_size=window_size)


def cosine_per_channel(reference, perturbed):
    """Cosine similarity Σ a_ij b_ij / (‖A‖_F · ‖B‖_F) per channel; NaN if either map is all zero."""
    return _run(_cosine, reference, perturbed)


def rel_l2_per_channel(reference, perturbed):
    """Relative L2 error ‖A − B‖_F / ‖A‖_F per channel; +inf (or NaN) for an all-zero reference."""
    return _run(_rel_l2, reference, perturbed)


def fsim_per_channel(reference, perturbed):
    """Feature similarity index (Zhang et al. 2011) per channel through
    image_similarity_measures.quality_metrics.fsim on H×W×1 arrays.

    Slow (NumPy phase congruency, tens of milliseconds per 56×56 channel) and run as Python inside
    the session (``tf.numpy_function``). The package gives NaN on maps where the phase congruency
    vanishes everywhere (all-zero maps; in our checks also all 14×14 and smaller maps).
    """
    return _run(_fsim, reference, perturbed)


def issm_per_channel(reference, perturbed):
    """Information-theoretic statistic similarity measure (Aljanabi et al. 2019) per channel through
    image_similarity_measures.quality_metrics.issm on H×W×1 arrays; NaN for maps smaller than 7.

    Slow, run as Python inside the session. Beware: the package quantises x·0.0625 to uint8 for its
    Canny edge term, so maps with all values below 16 (ResNet feature maps are mostly below 10)
    quantise to 0 and have no edges, the edge correlation is 0/0, and the package returns 0.
    """
    return _run(_issm, reference, perturbed)


def amplification_per_image(reference, perturbed):
    """‖A − B‖_F / ‖A‖_F over each image's whole map, (N, 1) — the numerator of the amplification (SPEC §9)."""
    return _run(_whole_map_relative_change, reference, perturbed)


def cka_per_image(reference, perturbed):
    """Linear CKA of each image's two maps, (N, 1) (see `_linear_cka`)."""
    return _run(_linear_cka, reference, perturbed)


METRICS = {
    "frobenius": frobenius_per_channel,
    "mse": mse_per_channel,
    "sre": sre_per_channel,
    "ssim": ssim_per_channel,
    "sre_eq": sre_eq_per_channel,
    "psnr": psnr_per_channel,
    "rmse": rmse_per_channel,
    "uiq": uiq_per_channel,
    "cosine": cosine_per_channel,
    "rel_l2": rel_l2_per_channel,
    "amplification": amplification_per_image,
    "cka": cka_per_image,
    "fsim": fsim_per_channel,
    "issm": issm_per_channel,
}
"""Metric name → graph function (reference, perturbed, **options) → (N, C) float64 tensor ((N,) for the
PER_IMAGE_METRICS); the keys in the order of ``METRIC_NAMES``.
The SLOW_METRICS entries are graph ops too, but run the NumPy package inside the session."""

_KERNELS = {
    "frobenius": _frobenius, "mse": _mse, "sre": _sre, "ssim": _ssim, "sre_eq": _sre_eq,
    "psnr": _psnr, "rmse": _rmse, "uiq": _uiq, "cosine": _cosine, "rel_l2": _rel_l2,
    "fsim": _fsim, "issm": _issm, "amplification": _whole_map_relative_change, "cka": _linear_cka,
}

# Options each metric accepts: the keyword-only parameters of its kernel.
_OPTIONS = {
    name: tuple(parameter.name for parameter in inspect.signature(kernel).parameters.values()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY)
    for name, kernel in _KERNELS.items()
}
_ALL_OPTIONS = sorted({option for options in _OPTIONS.values() for option in options})


def _check_metric_names(metrics):
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return metrics


def _options_for(metric, options):
    """The subset of `options` that `metric` takes; an option no metric knows is a ValueError.

    Options a metric does not take are ignored, so one set of options (e.g. data_range) can be
    passed for any list of metrics.
    """
    for option in options:
        if option not in _ALL_OPTIONS:
            raise ValueError(f"unknown metric option {option!r}; the options are {', '.join(_ALL_OPTIONS)}")
    return {option: value for option, value in options.items() if option in _OPTIONS[metric]}


def metric_ops(reference, perturbed, metrics=DEFAULT_METRICS, **options):
    """Graph ops for several metrics of one block: {name: (N, C) float64 tensor}.

    reference, perturbed: (N, C, H, W) tensors (clean and perturbed taps of the same block; N may be
    unknown, H and W must be static). metrics: names from ``METRICS``. options: ``data_range``
    (ssim, psnr), ``win_size`` (ssim), ``window_size`` (uiq); each metric gets the ones it takes.
    The per-channel sums, means and ranges are built once and shared.
    """
    metrics = _check_metric_names(metrics)
    pair = ChannelPair(reference, perturbed)
    return {name: _KERNELS[name](pair, **_options_for(name, options)) for name in metrics}


def _run(kernel, reference, perturbed, **options):
    """One kernel on a new ChannelPair."""
    return kernel(ChannelPair(reference, perturbed), **options)


# --- NumPy entry point --------------------------------------------------------------------------

class _CompiledMetric:
    """One metric's graph for one channel shape: placeholders with a free batch axis, a session."""

    def __init__(self, metric, channel_shape, dtype, options):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.reference = tf.placeholder(dtype, (None,) + channel_shape, name="reference")
            self.perturbed = tf.placeholder(dtype, (None,) + channel_shape, name="perturbed")
            self.values = METRICS[metric](self.reference, self.perturbed, **options)
        self.session = tf.Session(graph=self.graph)

    def __call__(self, reference, perturbed):
        return self.session.run(self.values, {self.reference: reference, self.perturbed: perturbed})

    def close(self):
        self.session.close()


_compiled_metrics = collections.OrderedDict()


def _compiled_metric(metric, channel_shape, dtype, options):
    """The cached graph for (metric, C×H×W, dtype, options); the least recently used is closed."""
    key = (metric, channel_shape, np.dtype(dtype).name, tuple(sorted(options.items())))
    if key in _compiled_metrics:
        _compiled_metrics.move_to_end(key)
        return _compiled_metrics[key]
    compiled = _CompiledMetric(metric, channel_shape, dtype, options)
    _compiled_metrics[key] = compiled
    if len(_compiled_metrics) > _GRAPH_CACHE_SIZE:
        _compiled_metrics.popitem(last=False)[1].close()
    return compiled


def _as_map_array(name, array):
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


def per_channel(metric, reference, perturbed, **options):
    """One metric for every channel of two (N, C, H, W) arrays → (N, C) float64 NumPy array.

    Runs the same graph kernels the pipeline uses (``METRICS[metric]``), built once per metric,
    channel shape, dtype and options and cached, so repeated calls are cheap. Two float32 arrays
    are fed as float32 (like the taps); anything else as float64. 'fsim' and 'issm' call
    image-similarity-measures channel by channel without a graph. Options as ``metric_ops``.
    """
    (metric,) = _check_metric_names(metric)
    reference = _as_map_array("reference", reference)
    perturbed = _as_map_array("perturbed", perturbed)
    if reference.shape != perturbed.shape:
        raise ValueError(f"reference and perturbed shapes differ: {reference.shape} vs {perturbed.shape}")
    metric_options = _options_for(metric, options)
    if metric in SLOW_METRICS:
        return package_metric_loop(metric, reference, perturbed)
    both_float32 = reference.dtype == np.float32 and perturbed.dtype == np.float32
    dtype = np.float32 if both_float32 else np.float64
    compiled = _compiled_metric(metric, reference.shape[1:], dtype, metric_options)
    return compiled(reference.astype(dtype, copy=False), perturbed.astype(dtype, copy=False))
