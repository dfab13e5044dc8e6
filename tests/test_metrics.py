"""Per-channel metrics against scikit-image, image-similarity-measures and direct NumPy formulas.

Maps are post-ReLU-like (non-negative, values up to ~10, many zeros, plus zeroed rectangles so that
some windows are flat in one map and not the other) at the real ResNet block sizes 56², 28², 14²,
7², with few channels to stay fast.

Tolerances, and why:
- float64 against float64 references (NumPy formulas, skimage on float64 copies of the maps): the
  two sides differ only in summation order, so errors are a few 1e-16 relative; we allow 1e-12
  (SSIM measured ≤ 7e-16 absolute).
- against image-similarity-measures, which casts to float32 and computes in float32: relative
  errors up to ~1e-6 in its sums; we allow 1e-5 dB for SRE (measured ≤ 9e-7 dB) and 1e-6 for UIQ
  (measured ≤ 1.2e-7).
- against skimage on the float32 maps themselves (it then filters in float32, as the paper's run
  presumably did on float32 taps): allowed 1e-6, measured ≤ 7e-8.
"""
import warnings

import numpy as np
import pytest
from image_similarity_measures import quality_metrics
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from repro.engines.tensorflow import metrics
from repro.engines.tensorflow.tfcompat import tf
from repro.protocol import PER_IMAGE_METRICS

BLOCK_SIDES = (56, 28, 14, 7)
FLOAT64_RTOL = 1e-12


@pytest.fixture(autouse=True)
def _quiet_numpy():
    """References divide by zero on degenerate maps on purpose; keep the log readable."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def post_relu_pair(seed, shape):
    """A clean map and a perturbed one, float32, ≥ 0, with zeroed rectangles (dead regions)."""
    rng = np.random.default_rng(seed)
    height, width = shape[2:]
    pre_activation = rng.normal(0.0, 2.5, shape)
    reference = np.maximum(pre_activation, 0.0)
    perturbed = np.maximum(pre_activation + rng.normal(0.0, 0.8, shape), 0.0)
    reference[..., : height // 3, : width // 2] = 0.0
    perturbed[..., : height // 2, : width // 3] = 0.0
    return reference.astype(np.float32), perturbed.astype(np.float32)


def each_channel(function, reference, perturbed):
    """Apply a 2-D reference function to every channel: (N, C, H, W) × 2 → (N, C) float64."""
    return np.array([[function(a, b) for a, b in zip(image_a, image_b)]
                     for image_a, image_b in zip(reference, perturbed)], dtype=np.float64)


def as_bands(function, **kwargs):
    """image-similarity-measures wants H×W×bands; 2-D arrays fail in several of its metrics."""
    return lambda a, b: function(a[..., np.newaxis], b[..., np.newaxis], **kwargs)


def numpy_formulas(reference, perturbed):
    """Direct float64 NumPy versions of the sum-based metrics (SPEC §5, paper §4)."""
    a = reference.astype(np.float64)
    b = perturbed.astype(np.float64)
    n = a.shape[2] * a.shape[3]
    sse = np.sum((a - b) ** 2, axis=(2, 3))
    norm_a = np.sqrt(np.sum(a * a, axis=(2, 3)))
    norm_b = np.sqrt(np.sum(b * b, axis=(2, 3)))
    mean_a = a.mean(axis=(2, 3))
    return {
        "frobenius": np.sqrt(sse),
        "mse": sse / n,
        "rmse": np.sqrt(sse / n),
        "sre": 10 * np.log10(mean_a ** 2 / (np.sqrt(sse) / n)),
        "sre_eq": 10 * np.log10(mean_a ** 2 / (sse / n)),
        "cosine": np.sum(a * b, axis=(2, 3)) / (norm_a * norm_b),
        "rel_l2": np.sqrt(sse) / norm_a,
    }


def uiq_two_pass(a, b, window):
    """UIQ with the package's conventions (population moments, 0/0 → 0), two-pass, float64."""
    windows_a = sliding_window_view(a.astype(np.float64), (window, window)).reshape(-1, window * window)
    windows_b = sliding_window_view(b.astype(np.float64), (window, window)).reshape(-1, window * window)
    mean_a = windows_a.mean(axis=1)
    mean_b = windows_b.mean(axis=1)
    var_a = windows_a.var(axis=1)
    var_b = windows_b.var(axis=1)
    cov = np.mean((windows_a - mean_a[:, None]) * (windows_b - mean_b[:, None]), axis=1)
    quality = 4 * cov * mean_a * mean_b / ((var_a + var_b) * (mean_a ** 2 + mean_b ** 2))
    return np.nan_to_num(quality).mean()


def skimage_ssim(a, b, data_range, win_size=7):
    """skimage's SSIM with the semantics metrics.ssim_per_channel claims, on float64 copies."""
    if data_range == "reference":
        data_range = float(a.max()) - float(a.min())
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=win_size,
                                 data_range=data_range, gaussian_weights=False,
                                 use_sample_covariance=True)


# --- Agreement with the references at the real block sizes --------------------------------------

@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_sum_based_metrics_match_numpy_formulas(side):
    reference, perturbed = post_relu_pair(side, (2, 3, side, side))
    expected = numpy_formulas(reference, perturbed)
    for name, values in expected.items():
        got = metrics.per_channel(name, reference, perturbed)
        assert got.shape == (2, 3) and got.dtype == np.float64
        np.testing.assert_allclose(got, values, rtol=FLOAT64_RTOL, err_msg=name)


@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_sre_matches_image_similarity_measures(side):
    reference, perturbed = post_relu_pair(10 + side, (2, 3, side, side))
    expected = each_channel(as_bands(quality_metrics.sre), reference, perturbed)
    got = metrics.per_channel("sre", reference, perturbed)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # package is float32


def test_sre_differs_from_the_papers_equation_as_the_unsquared_norm_predicts():
    # sre − sre_eq = 10·log10((‖A − B‖² / n) / (‖A − B‖ / n)) = 10·log10(‖A − B‖).
    reference, perturbed = post_relu_pair(3, (1, 2, 14, 14))
    frobenius = metrics.per_channel("frobenius", reference, perturbed)
    difference = metrics.per_channel("sre", reference, perturbed) - metrics.per_channel("sre_eq", reference, perturbed)
    np.testing.assert_allclose(difference, 10 * np.log10(frobenius), rtol=FLOAT64_RTOL)


@pytest.mark.parametrize("data_range", [2.0, "reference", 7.5])
@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_ssim_matches_skimage(side, data_range):
    reference, perturbed = post_relu_pair(20 + side, (2, 3, side, side))
    expected = each_channel(lambda a, b: skimage_ssim(a, b, data_range), reference, perturbed)
    got = metrics.per_channel("ssim", reference, perturbed, data_range=data_range)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_ssim_is_within_float32_rounding_of_skimage_on_the_float32_maps(side):
    # skimage 0.20 keeps float32 input in float32 (what the paper's run on float32 taps computed).
    reference, perturbed = post_relu_pair(30 + side, (2, 3, side, side))
    expected = each_channel(lambda a, b: structural_similarity(a, b, data_range=2.0), reference, perturbed)
    got = metrics.per_channel("ssim", reference, perturbed, data_range=2.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("data_range", [2.0, "reference"])
@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_psnr_matches_skimage(side, data_range):
    reference, perturbed = post_relu_pair(40 + side, (2, 3, side, side))

    def skimage_psnr(a, b):
        peak = float(a.max()) - float(a.min()) if data_range == "reference" else data_range
        return peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=peak)

    expected = each_channel(skimage_psnr, reference, perturbed)
    got = metrics.per_channel("psnr", reference, perturbed, data_range=data_range)
    np.testing.assert_allclose(got, expected, rtol=FLOAT64_RTOL)


@pytest.mark.parametrize("side", BLOCK_SIDES)
def test_uiq_matches_image_similarity_measures(side):
    # The package raises on 7×7 maps with its 8×8 window; our rule shrinks the window to 7.
    window = min(8, side)
    # The package loops over windows in Python (~0.5 s per 56×56 channel): few channels.
    reference, perturbed = post_relu_pair(50 + side, (1, 3, side, side))
    got = metrics.per_channel("uiq", reference, perturbed)
    package = each_channel(as_bands(quality_metrics.uiq, window_size=window), reference, perturbed)
    np.testing.assert_allclose(got, package, rtol=0, atol=1e-6)  # package is float32
    two_pass = each_channel(lambda a, b: uiq_two_pass(a, b, window), reference, perturbed)
    np.testing.assert_allclose(got, two_pass, rtol=0, atol=1e-12)


# --- Degenerate maps: ±inf and NaN where the formulas put them, never an exception --------------

def degenerate_pair(side=14):
    """Channels: 0 all-zero clean / random perturbed, 1 identical, 2 both all-zero,
    3 constant 2 / constant 3, 4 constant 2 clean / random perturbed, 5 random / all-zero."""
    rng = np.random.default_rng(7)
    random_map = np.maximum(rng.normal(0.5, 2.0, (side, side)), 0.0)
    random_map[:9, :9] = 0.0  # a dead corner: for side 14, 4 of the 49 8×8 windows are all zero
    zeros = np.zeros((side, side))
    constant2 = np.full((side, side), 2.0)
    channels = [(zeros, random_map), (random_map, random_map), (zeros, zeros),
                (constant2, np.full((side, side), 3.0)), (constant2, random_map), (random_map, zeros)]
    reference = np.stack([a for a, _ in channels])[np.newaxis].astype(np.float32)
    perturbed = np.stack([b for _, b in channels])[np.newaxis].astype(np.float32)
    return reference, perturbed


def test_degenerate_sum_based_metrics_match_numpy_including_inf_and_nan():
    reference, perturbed = degenerate_pair()
    for name, values in numpy_formulas(reference, perturbed).items():
        np.testing.assert_allclose(metrics.per_channel(name, reference, perturbed), values,
                                   rtol=FLOAT64_RTOL, err_msg=name)


def test_degenerate_sre_values_are_the_packages():
    reference, perturbed = degenerate_pair()
    got = metrics.per_channel("sre", reference, perturbed)[0]
    package = each_channel(as_bands(quality_metrics.sre), reference, perturbed)[0]
    np.testing.assert_allclose(got, package, rtol=0, atol=1e-5)
    assert got[0] == -np.inf        # zero-mean reference
    assert got[1] == np.inf         # no reconstruction error
    assert np.isnan(got[2])         # both
    assert np.isfinite(got[[3, 4, 5]]).all()


def test_degenerate_ssim_matches_skimage_and_reference_range_zero_is_nan():
    reference, perturbed = degenerate_pair()
    fixed = metrics.per_channel("ssim", reference, perturbed, data_range=2.0)
    expected = each_channel(lambda a, b: skimage_ssim(a, b, 2.0), reference, perturbed)
    np.testing.assert_allclose(fixed, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fixed[0, [1, 2]], 1.0, rtol=0, atol=1e-12)  # identical maps
    own_range = metrics.per_channel("ssim", reference, perturbed, data_range="reference")[0]
    # Clean maps 0, 2, 3, 4 are constant (range 0): NaN; maps 1, 5 have a range and match skimage.
    assert np.isnan(own_range[[0, 2, 3, 4]]).all()
    np.testing.assert_allclose(own_range[[1, 5]], each_channel(
        lambda a, b: skimage_ssim(a, b, "reference"), reference, perturbed)[0, [1, 5]], rtol=0, atol=1e-12)


def test_degenerate_psnr_matches_skimage_including_infinities():
    reference, perturbed = degenerate_pair()
    for data_range in (2.0, "reference"):
        def skimage_psnr(a, b):
            peak = float(a.max()) - float(a.min()) if data_range == "reference" else data_range
            return peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=peak)

        np.testing.assert_allclose(metrics.per_channel("psnr", reference, perturbed, data_range=data_range),
                                   each_channel(skimage_psnr, reference, perturbed), rtol=FLOAT64_RTOL)
    assert metrics.per_channel("psnr", reference, perturbed)[0, 1] == np.inf


def test_degenerate_uiq_matches_the_package_flat_windows_score_zero():
    reference, perturbed = degenerate_pair()
    got = metrics.per_channel("uiq", reference, perturbed)[0]
    np.testing.assert_allclose(got, each_channel(as_bands(quality_metrics.uiq), reference, perturbed)[0],
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[[0, 2, 3, 4, 5]], 0.0)   # a flat map in every window
    # Identical maps score 1 in every window except the 4 all-zero ones of 49, which score 0.
    np.testing.assert_allclose(got[1], 45 / 49, rtol=1e-12)


def test_uiq_flat_window_tolerance_only_catches_float32_rounding():
    # A window whose spread is one float32 ulp of its values is flat; one of 1e-3 relative is not.
    base = np.full((1, 1, 8, 8), 3.0)
    perturbed = base + np.random.default_rng(0).uniform(0, 1, base.shape)
    nearly_flat = base.copy()
    nearly_flat[0, 0, 0, 0] = np.nextafter(np.float32(3.0), np.float32(4.0))
    assert metrics.per_channel("uiq", nearly_flat, perturbed)[0, 0] == 0.0
    slightly_varying = base.copy()
    slightly_varying[0, 0, 0, 0] = 3.003
    expected = uiq_two_pass(slightly_varying[0, 0], perturbed[0, 0], 8)
    np.testing.assert_allclose(metrics.per_channel("uiq", slightly_varying, perturbed)[0, 0], expected, rtol=1e-6)
    assert expected != 0.0


def test_uiq_scores_every_flat_window_zero_whatever_its_value():
    # The package agrees for constant 2.0 (exact float32 mean, variance 0) but returns 1 for two
    # constant 0.3 maps, whose float32 variances are equal rounding noise: a documented difference.
    for value in (2.0, 0.3):
        flat = np.full((1, 1, 8, 8), value, np.float32)
        assert metrics.per_channel("uiq", flat, flat)[0, 0] == 0.0
    assert quality_metrics.uiq(np.full((8, 8, 1), 0.3, np.float32), np.full((8, 8, 1), 0.3, np.float32)) == 1.0


# --- Maps smaller than the windows ---------------------------------------------------------------

@pytest.mark.parametrize("height, width, ssim_window", [(5, 5, 5), (6, 9, 5), (4, 4, 3), (3, 8, 3)])
def test_small_maps_shrink_the_ssim_window_to_the_largest_odd_fitting_size(height, width, ssim_window):
    assert metrics.ssim_window_size(height, width) == ssim_window
    reference, perturbed = post_relu_pair(60, (1, 3, height, width))
    expected = each_channel(lambda a, b: skimage_ssim(a, b, 2.0, win_size=ssim_window), reference, perturbed)
    np.testing.assert_allclose(metrics.per_channel("ssim", reference, perturbed), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("height, width", [(5, 5), (6, 9), (3, 4)])
def test_small_maps_shrink_the_uiq_window_to_the_smaller_side(height, width):
    reference, perturbed = post_relu_pair(61, (1, 3, height, width))
    window = min(height, width)
    expected = each_channel(as_bands(quality_metrics.uiq, window_size=window), reference, perturbed)
    np.testing.assert_allclose(metrics.per_channel("uiq", reference, perturbed), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height, width", [(2, 2), (2, 9), (1, 1)])
def test_maps_too_small_for_a_window_give_nan_not_an_error(height, width):
    reference, perturbed = post_relu_pair(62, (2, 3, height, width))
    assert np.isnan(metrics.per_channel("ssim", reference, perturbed)).all()
    uiq = metrics.per_channel("uiq", reference, perturbed)
    assert np.isnan(uiq).all() == (min(height, width) < 2)
    # Sum-based metrics are defined for any size.
    np.testing.assert_allclose(metrics.per_channel("mse", reference, perturbed),
                               numpy_formulas(reference, perturbed)["mse"], rtol=FLOAT64_RTOL)


# --- metric_ops in a graph with unknown batch size ----------------------------------------------

def test_metric_ops_on_placeholders_with_unknown_batch_match_per_channel():
    channels, side = 4, 14
    graph = tf.Graph()
    with graph.as_default():
        clean = tf.placeholder(tf.float32, (None, channels, side, side))
        noisy = tf.placeholder(tf.float32, (None, channels, side, side))
        ops = metrics.metric_ops(clean, noisy, metrics.DEFAULT_METRICS, data_range="reference", window_size=6)
    assert set(ops) == set(metrics.DEFAULT_METRICS)
    for op in ops.values():
        assert op.dtype == tf.float64 and op.shape.as_list() == [None, channels]
    with tf.Session(graph=graph) as session:
        for batch in (1, 3):
            reference, perturbed = post_relu_pair(70 + batch, (batch, channels, side, side))
            values = session.run(ops, {clean: reference, noisy: perturbed})
            for name in metrics.DEFAULT_METRICS:
                expected = metrics.per_channel(name, reference, perturbed, data_range="reference", window_size=6)
                assert values[name].shape == (batch, channels)
                np.testing.assert_allclose(values[name], expected, rtol=FLOAT64_RTOL, err_msg=name)


def test_metric_ops_shares_common_subexpressions():
    def op_count(build):
        graph = tf.Graph()
        with graph.as_default():
            clean = tf.placeholder(tf.float32, (None, 8, 14, 14))
            noisy = tf.placeholder(tf.float32, (None, 8, 14, 14))
            build(clean, noisy)
        return len(graph.get_operations())

    together = op_count(lambda a, b: metrics.metric_ops(a, b, metrics.DEFAULT_METRICS))
    separately = sum(op_count(lambda a, b, name=name: metrics.METRICS[name](a, b))
                     for name in metrics.DEFAULT_METRICS)
    # Each separate graph repeats the placeholders, casts, difference, squares and sums.
    assert together < separately - 2 * len(metrics.DEFAULT_METRICS)


def test_registry_lists():
    assert metrics.PAPER_METRICS == ("frobenius", "mse", "sre", "ssim")
    assert metrics.DEFAULT_METRICS[:4] == metrics.PAPER_METRICS
    assert set(metrics.DEFAULT_METRICS) | set(PER_IMAGE_METRICS) | set(metrics.SLOW_METRICS) == set(metrics.METRICS)
    assert tuple(metrics.METRICS) == metrics.METRIC_NAMES
    assert not set(metrics.DEFAULT_METRICS) & set(metrics.SLOW_METRICS)
    assert not set(PER_IMAGE_METRICS) & (set(metrics.DEFAULT_METRICS) | set(metrics.SLOW_METRICS))


# --- Slow package metrics -----------------------------------------------------------------------

def test_fsim_and_issm_are_the_packages_per_channel_in_and_out_of_the_graph():
    reference, perturbed = post_relu_pair(80, (1, 2, 56, 56))
    graph = tf.Graph()
    with graph.as_default():
        ops = metrics.metric_ops(tf.constant(reference), tf.constant(perturbed), metrics.SLOW_METRICS)
    with tf.Session(graph=graph) as session:
        in_graph = session.run(ops)
    for name in metrics.SLOW_METRICS:
        expected = each_channel(as_bands(getattr(quality_metrics, name)), reference, perturbed)
        np.testing.assert_array_equal(metrics.per_channel(name, reference, perturbed), expected)
        np.testing.assert_array_equal(in_graph[name], expected)
    assert np.isfinite(in_graph["fsim"]).all()


def test_issm_is_nan_where_the_package_rejects_the_map_size():
    reference, perturbed = post_relu_pair(81, (1, 2, 5, 5))
    with pytest.raises(ValueError):
        quality_metrics.issm(reference[0, 0][..., None], perturbed[0, 0][..., None])
    assert np.isnan(metrics.per_channel("issm", reference, perturbed)).all()


# --- NumPy entry point: dtype, caching, errors ---------------------------------------------------

def test_per_channel_keeps_float64_input_in_float64():
    rng = np.random.default_rng(90)
    reference = rng.uniform(0, 1, (2, 2, 7, 7))
    perturbed = reference + 1e-9 * rng.uniform(0, 1, reference.shape)  # invisible in float32
    expected = np.mean((reference - perturbed) ** 2, axis=(2, 3))
    np.testing.assert_allclose(metrics.per_channel("mse", reference, perturbed), expected, rtol=1e-6)


def test_per_channel_reuses_its_graph_across_batch_sizes():
    first = post_relu_pair(91, (1, 2, 9, 9))
    metrics.per_channel("ssim", *first, data_range=3.0)
    cached = len(metrics._compiled_metrics)
    second = post_relu_pair(92, (5, 2, 9, 9))
    got = metrics.per_channel("ssim", *second, data_range=3.0)
    assert len(metrics._compiled_metrics) == cached
    np.testing.assert_allclose(got, each_channel(lambda a, b: skimage_ssim(a, b, 3.0), *second), rtol=0, atol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda a: metrics.per_channel("ssimm", a, a), r"unknown metric 'ssimm'; choose from frobenius, mse, sre, ssim"),
    (lambda a: metrics.per_channel("mse", a[0], a[0]), r"reference must be a 4-D \(N, C, H, W\) array, got shape \(3, 9, 9\)"),
    (lambda a: metrics.per_channel("mse", a, a[:, :2]), r"shapes differ: \(2, 3, 9, 9\) vs \(2, 2, 9, 9\)"),
    (lambda a: metrics.per_channel("ssim", a, a, data_range=-1), r"data_range must be a positive number or 'reference', got -1"),
    (lambda a: metrics.per_channel("psnr", a, a, data_range="ref"), r"data_range must be .* got 'ref'"),
    (lambda a: metrics.per_channel("ssim", a, a, win_size=6), r"win_size must be an odd integer >= 3"),
    (lambda a: metrics.per_channel("mse", a, a, window=8), r"unknown metric option 'window'; the options are data_range, win_size, window_size"),
    (lambda a: metrics.metric_ops(tf.constant(a), tf.constant(a), ["mse", "sre2"]), r"unknown metric 'sre2'"),
    (lambda a: metrics.metric_ops(tf.placeholder(tf.float32, (None, 3, None, None)),
                                  tf.placeholder(tf.float32, (None, 3, None, None)), ["mse"]),
     r"map height and width must be known"),
])
def test_bad_input_is_a_one_line_value_error_naming_the_problem(call, message):
    maps = np.zeros((2, 3, 9, 9), np.float32)
    with tf.Graph().as_default(), pytest.raises(ValueError, match=message) as error:
        call(maps)
    assert "\n" not in str(error.value)


def test_compiled_functions_are_traced_once_per_map_shape():
    """SSIM, UIQ and the sums are XLA-compiled functions (``metrics._compiled``); blocks of one map shape
    share one function (so one compilation), whatever the number of blocks: ResNet-152's 50 blocks compile
    four SSIM functions, not fifty. Each still computes its own block's values."""
    shapes = [(2, 3, 14, 14)] * 3 + [(2, 3, 9, 9)]
    pairs = [post_relu_pair(seed, shape) for seed, shape in enumerate(shapes)]
    graph = tf.Graph()
    with graph.as_default():
        ops = [metrics.metric_ops(tf.constant(a), tf.constant(b)) for a, b in pairs]
    library = [function.signature.name for function in graph.as_graph_def().library.function]
    kernels = {"_mean_ssim": 1, "_mean_uiq": 1, "_sum_squared_difference": 1, "_sum_product": 1,
               "_channel_mean_float64": 1, "_sum_squares": 2}   # calls per block: ‖A‖ and ‖B‖ share one
    for kernel, calls_per_block in kernels.items():
        traced = [name for name in library if kernel in name]
        assert len(traced) == 2, (kernel, traced)
        calls = [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")
                 and op.get_attr("f").name in traced]
        assert len(calls) == calls_per_block * len(shapes), (kernel, len(calls))
    with tf.Session(graph=graph) as session:
        values = session.run(ops)
    for (a, b), got in zip(pairs, values):
        np.testing.assert_allclose(got["ssim"], each_channel(lambda x, y: skimage_ssim(x, y, 2.0), a, b),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["frobenius"], numpy_formulas(a, b)["frobenius"], rtol=FLOAT64_RTOL)


# --- whole-map measures: linear CKA and the amplification's numerator (SPEC §9) ------------------------------

def numpy_linear_cka(a, b):
    """Kornblith et al.'s formula, literally: X, Y = (H·W) × C, centred over positions; ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖)."""
    x = a.reshape(a.shape[0], -1).T.astype(np.float64)
    y = b.reshape(b.shape[0], -1).T.astype(np.float64)
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("shape", [(3, 6, 2, 2), (3, 4, 5, 6)], ids=["fewer positions than channels", "more"])
def test_linear_cka_is_the_papers_formula_and_invariant_as_it_should_be(shape):
    rng = np.random.default_rng(7)
    reference = rng.normal(size=shape)
    perturbed = reference + 0.7 * rng.normal(size=shape)
    perturbed[2] = reference[2]                                           # identical maps: 1
    values = metrics.per_channel("cka", reference, perturbed)
    assert values.shape == (3, 1)
    np.testing.assert_allclose(values[:, 0], [numpy_linear_cka(a, b) for a, b in zip(reference, perturbed)],
                               rtol=1e-10)
    assert values[2, 0] == pytest.approx(1.0, abs=1e-12)
    rotation, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))   # an orthogonal transform of the channels
    turned = np.einsum("dc,nchw->ndhw", rotation, perturbed) * 3.5      # … and an isotropic scaling
    np.testing.assert_allclose(metrics.per_channel("cka", reference, turned), values, rtol=1e-10)
    constant = np.ones(shape)
    assert np.isnan(metrics.per_channel("cka", constant, perturbed)).all()


def test_the_whole_map_relative_change_is_numpys():
    rng = np.random.default_rng(8)
    reference, perturbed = rng.normal(size=(4, 5, 6, 6)), rng.normal(size=(4, 5, 6, 6))
    expected = [np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(reference, perturbed)]
    np.testing.assert_allclose(metrics.per_channel("amplification", reference, perturbed)[:, 0], expected,
                               rtol=1e-12)


def test_amplification_is_one_through_a_network_that_passes_its_input_on():
    """A stand-in study whose every block outputs its input (a linear network of identity blocks): the map's
    relative change equals the input's, so the amplification is 1 for random and adversarial perturbations."""
    from repro import protocol, zoo
    from repro.data import to_model_space

    class Identity(protocol.StudyFlow):
        spec, precision = zoo.get_model("ResNet", "mini"), "float32"
        config = protocol.StudyConfig(attack_iterations=2, epsilon=8.0, metrics=("amplification", "mse"))

        def attack_steps(self, clean, adversarial, targets, steps):
            return np.clip(adversarial - 0.01, clean - 8 * 2 / 255, clean + 8 * 2 / 255), True

        def measure(self, clean, random_noise, adversarial, feature_blocks=()):
            randomised = np.clip(clean + random_noise * np.float32(8 * 2 / 255), -1, 1)
            values = {}
            for perturbation, perturbed in (("random", randomised), ("adversarial", adversarial)):
                values[(perturbation, "amplification", 1)] = metrics.per_channel("amplification", clean, perturbed)
                values[(perturbation, "mse", 1)] = metrics.per_channel("mse", clean, perturbed)
            return {"predictions": {k: np.zeros(len(clean), int) for k in ("clean", "random", "adversarial")},
                    "values": values, "clean_finite": np.ones(len(clean), bool)}
    images = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    result = Identity().run_batch(images, np.array([0, 1, 2]), [0, 1, 2])
    for perturbation in ("random", "adversarial"):
        np.testing.assert_allclose(result.values[(perturbation, "amplification", 1)], 1.0, rtol=1e-6)
    assert to_model_space(images).shape == (3, 3, 32, 32)
