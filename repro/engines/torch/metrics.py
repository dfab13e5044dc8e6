"""The per-channel metrics of `repro.engines.tensorflow.metrics` as PyTorch ops on the device, in float64.

Same formulas, options and degenerate-case rules as the TensorFlow kernels (which hold the docstrings and
references): two (N, C, H, W) maps in, (N, C) float64 out, shared subexpressions computed once; SSIM and
UIQ window means by average pools, as the TensorFlow kernels take them (XLA sums in its own order: the two
agree to round-off). Tested against
`repro.engines.tensorflow.metrics.per_channel` (tests/test_torch.py).

Every metric is per channel, so the float64 work is done a few channels at a time (`chunk_size`): a block's
maps are never copied whole into float64 (ResNet-152's first blocks hold 0.8 M values per image; their float64
copies and about ten intermediates took gigabytes per block at the README's batch sizes).
"""
import math

import torch
import torch.nn.functional as F

from repro.protocol import SLOW_METRICS, SSIM_K1, SSIM_K2, UIQ_FLAT_WINDOW_TOLERANCE, ssim_window_size, uiq_window_size


class ChannelPair:
    """Clean and perturbed maps in float64 and the quantities several metrics share, each built once."""

    def __init__(self, reference, perturbed):
        self.given_reference, self.given_perturbed = reference, perturbed
        self.reference, self.perturbed = reference.double(), perturbed.double()
        self.height, self.width = reference.shape[2:]
        self.pixel_count = self.height * self.width
        self._cache = {}

    def _get(self, name, compute):
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @property
    def difference(self):
        return self._get("difference", lambda: self.reference - self.perturbed)

    @property
    def sum_squared_error(self):
        return self._get("sse", lambda: torch.square(self.difference).sum(dim=(2, 3)))

    @property
    def reference_mean(self):
        return self._get("reference_mean", lambda: self.reference.mean(dim=(2, 3)))

    @property
    def reference_squared(self):
        return self._get("reference_squared", lambda: torch.square(self.reference))

    @property
    def perturbed_squared(self):
        return self._get("perturbed_squared", lambda: torch.square(self.perturbed))

    @property
    def product(self):
        return self._get("product", lambda: self.reference * self.perturbed)

    @property
    def reference_sum_squares(self):
        return self._get("reference_sum_squares", lambda: self.reference_squared.sum(dim=(2, 3)))

    @property
    def perturbed_sum_squares(self):
        return self._get("perturbed_sum_squares", lambda: self.perturbed_squared.sum(dim=(2, 3)))

    @property
    def reference_value_range(self):
        return self._get("range", lambda: self.reference.amax(dim=(2, 3)) - self.reference.amin(dim=(2, 3)))

    def data_range(self, data_range):
        if data_range == "reference":
            return self.reference_value_range
        return torch.tensor(float(data_range), dtype=torch.float64, device=self.reference.device)

    def nan_per_channel(self):
        return torch.full(self.reference.shape[:2], math.nan, dtype=torch.float64, device=self.reference.device)

    def window_means(self, maps, window):
        """Mean of every window×window block inside the maps (step 1, no padding), as the TensorFlow kernels
        take it: one average pool (one kernel, where the banded products L_H · X · L_Wᵀ took three)."""
        return F.avg_pool2d(maps, window, stride=1)


def _frobenius(pair):
    return torch.sqrt(pair.sum_squared_error)


def _mse(pair):
    return pair.sum_squared_error / pair.pixel_count


def _rmse(pair):
    return torch.sqrt(_mse(pair))


def _log10(x):
    return torch.log(x) / math.log(10.0)


def _sre(pair):
    return 10.0 * _log10(torch.square(pair.reference_mean) / (_frobenius(pair) / pair.pixel_count))


def _sre_eq(pair):
    return 10.0 * _log10(torch.square(pair.reference_mean) / _mse(pair))


def _psnr(pair, data_range=2.0):
    return 10.0 * _log10(torch.square(pair.data_range(data_range)) / _mse(pair))


def _cosine(pair):
    cross = pair.product.sum(dim=(2, 3))
    return cross / (torch.sqrt(pair.reference_sum_squares) * torch.sqrt(pair.perturbed_sum_squares))


def _rel_l2(pair):
    return _frobenius(pair) / torch.sqrt(pair.reference_sum_squares)


def _ssim(pair, data_range=2.0, win_size=7):
    peak = pair.data_range(data_range)
    window = ssim_window_size(pair.height, pair.width, win_size)
    if window is None:
        return pair.nan_per_channel()
    if data_range == "reference":
        peak = peak[:, :, None, None]
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mean_x = pair.window_means(pair.reference, window)
    mean_y = pair.window_means(pair.perturbed, window)
    sample_norm = window ** 2 / (window ** 2 - 1.0)
    var_x = sample_norm * (pair.window_means(pair.reference_squared, window) - torch.square(mean_x))
    var_y = sample_norm * (pair.window_means(pair.perturbed_squared, window) - torch.square(mean_y))
    cov_xy = sample_norm * (pair.window_means(pair.product, window) - mean_x * mean_y)
    ssim_map = ((2.0 * mean_x * mean_y + c1) * (2.0 * cov_xy + c2)) / (
        (torch.square(mean_x) + torch.square(mean_y) + c1) * (var_x + var_y + c2))
    ssim = ssim_map.mean(dim=(2, 3))
    if data_range == "reference":
        ssim = torch.where(pair.reference_value_range > 0, ssim, pair.nan_per_channel())
    return ssim


def _uiq(pair, window_size=8):
    window = uiq_window_size(pair.height, pair.width, window_size)
    if window is None:
        return pair.nan_per_channel()
    mean_x = pair.window_means(pair.reference, window)
    mean_y = pair.window_means(pair.perturbed, window)
    mean_square_x = pair.window_means(pair.reference_squared, window)
    mean_square_y = pair.window_means(pair.perturbed_squared, window)
    var_x = mean_square_x - torch.square(mean_x)
    var_y = mean_square_y - torch.square(mean_y)
    cov_xy = pair.window_means(pair.product, window) - mean_x * mean_y
    flat_x = var_x <= UIQ_FLAT_WINDOW_TOLERANCE * mean_square_x
    flat_y = var_y <= UIQ_FLAT_WINDOW_TOLERANCE * mean_square_y
    zeros = torch.zeros_like(var_x)
    var_x = torch.where(flat_x, zeros, var_x)
    var_y = torch.where(flat_y, zeros, var_y)
    cov_xy = torch.where(flat_x | flat_y, zeros, cov_xy)
    numerator = 4.0 * cov_xy * mean_x * mean_y
    denominator = (var_x + var_y) * (torch.square(mean_x) + torch.square(mean_y))
    quality = torch.where(denominator == 0, zeros, numerator / torch.where(denominator == 0, 1.0, denominator))
    return quality.mean(dim=(2, 3))


def _package(name):
    def compute(pair):
        from repro.package_metrics import package_metric_loop
        values = package_metric_loop(name, pair.given_reference.float().cpu().numpy(),
                                     pair.given_perturbed.float().cpu().numpy())
        return torch.from_numpy(values).to(pair.reference.device)
    return compute


def _whole_map_relative_change(pair):
    """‖A − B‖_F / ‖A‖_F over each image's whole map, (N, 1) (the TensorFlow kernel's docstring)."""
    return torch.sqrt(pair.sum_squared_error.sum(dim=1, keepdim=True)) / torch.sqrt(
        pair.reference_sum_squares.sum(dim=1, keepdim=True))


def _linear_cka(pair):
    """Linear CKA of each image's two maps, (N, 1), through the smaller Gram products (the TensorFlow kernel's
    docstring)."""
    count, channels = pair.reference.shape[:2]
    x, y = (maps.reshape(count, channels, -1) for maps in (pair.reference, pair.perturbed))
    x, y = (maps - maps.mean(dim=2, keepdim=True) for maps in (x, y))
    if pair.pixel_count < channels:
        gram_x, gram_y = x.transpose(1, 2) @ x, y.transpose(1, 2) @ y
        cross = (gram_x * gram_y).sum(dim=(1, 2))
    else:
        gram_x, gram_y = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
        cross = torch.square(y @ x.transpose(1, 2)).sum(dim=(1, 2))
    norms = [torch.linalg.matrix_norm(gram) for gram in (gram_x, gram_y)]
    return (cross / (norms[0] * norms[1]))[:, None]


WHOLE_MAP = ("amplification", "cka")
"""Metrics over each image's whole map: computed on all channels at once, never in chunks."""

KERNELS = {"frobenius": _frobenius, "mse": _mse, "sre": _sre, "ssim": _ssim, "sre_eq": _sre_eq, "psnr": _psnr,
           "rmse": _rmse, "uiq": _uiq, "cosine": _cosine, "rel_l2": _rel_l2,
           "amplification": _whole_map_relative_change, "cka": _linear_cka,
           **{name: _package(name) for name in SLOW_METRICS}}
OPTIONS = {"ssim": ("data_range", "win_size"), "psnr": ("data_range",), "uiq": ("window_size",)}


CHUNK_FRACTION = 8
CHUNK_ELEMENTS = (1 << 16, 1 << 25)


def chunk_size(shape, fraction=CHUNK_FRACTION, bounds=CHUNK_ELEMENTS):
    """Channels per chunk for (N, C, H, W) maps: about 1/``fraction`` of a map's values, within ``bounds`` (64 K to
    32 M values: 0.5 to 256 MB per float64 intermediate). The float64 copies and SSIM's ten-odd intermediates of one
    chunk then stay below the float32 maps a plain forward pass holds anyway, and a block takes a few chunks: each
    chunk costs about 100 operations, which on a GPU take longer to launch than to run. Measured on an H200
    (gpu_check, 2026-12-04), ResNet-152's 50 blocks for 100 images (300 maps each): 64 chunks per block 12.0 s
    (slower than the 100-step attack, 20.3 s), this rule with an 8 M bound 2.5 s, with 32 M 2.2 s, whole blocks
    1.3 s — all at the plain forward pass's peak (4.15 GB against 4.03), except whole blocks (11.6 GB)."""
    count, channels, height, width = shape
    per_channel = max(1, count * height * width)
    target = min(max(bounds[0], count * channels * height * width // fraction), bounds[1])
    return max(1, min(channels, target // per_channel))


def metric_values(reference, perturbed, metrics, chunk=None, **options):
    """{metric: (N, C) float64 tensor} for two (N, C, H, W) maps; options as
    `repro.engines.tensorflow.metrics.metric_ops`. Computed over chunks of ``chunk`` channels (default
    `chunk_size`); every metric is per channel, so the chunks are independent."""
    channels = reference.shape[1]
    step = chunk or chunk_size(tuple(reference.shape))
    per_channel = [name for name in metrics if name not in WHOLE_MAP]
    parts = []
    for start in range(0, channels, step):
        pair = ChannelPair(reference[:, start:start + step], perturbed[:, start:start + step])
        parts.append({name: KERNELS[name](pair, **{k: v for k, v in options.items() if k in OPTIONS.get(name, ())})
                      for name in per_channel})
    values = parts[0] if len(parts) == 1 else {name: torch.cat([part[name] for part in parts], dim=1)
                                               for name in per_channel}
    whole = [name for name in metrics if name in WHOLE_MAP]
    if whole:
        pair = ChannelPair(reference, perturbed)
        values.update({name: KERNELS[name](pair) for name in whole})
    return {name: values[name] for name in metrics}
