"""Mergeable sufficient statistics for per-block metrics, and the tables made from them.

Data flow (STYLE.md): the graph gives, per batch, an (N_images, C_block) array of per-channel metric
values for every model × perturbation × metric × block. The paper averages "over all channels of 100
example inputs" (Fig. 5.1 caption): here each image's mean over its channels is one observation, and
the table reports the mean, spread and 95% confidence interval of those per-image observations.

Why sufficient statistics: the study is sharded across machines and killed runs resume, so every
batch's contribution must be storable on its own (``save``/``load``) and combinable in any order
(``merge``) without keeping per-image values — memory stays constant in the number of images.
Mean and variance are merged with Chan, Golub & LeVeque's pairwise update, which stays accurate where
the textbook sum-of-squares formula cancels catastrophically.

Counting rule for degenerate channels (SPEC §5: zero-mean or zero-error maps give ±inf in SRE, and
some metrics are NaN): non-finite channel values are excluded from the per-image mean and counted in
``n_excluded``; finite ones are counted in ``n_values``. ``n_images`` counts every image seen, including
one whose channels are all non-finite; such an image contributes no observation, so the moments' count
(``n_observations``) can be smaller than ``n_images``.
"""
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from repro.fileio import atomic_write

Z_95 = 1.959963984540054  # standard normal quantile at 0.975
STATE_FORMAT_VERSION = 2   # 2: each image's value per key (``image_values``), for paired statistics
PERTURBATIONS = ("clean", "random", "adversarial")

BLOCK_TABLE_COLUMNS = (
    "model", "block_index", "depth_from_end", "group", "block", "tap", "channels", "height", "width",
)
BLOCKS_FRAME_COLUMNS = (
    "model", "perturbation", "metric", "block_index", "depth_from_end", "group", "block", "tap",
    "channels", "height", "width", "mean", "std", "ci95_low", "ci95_high",
    "n_values", "n_images", "n_excluded",
)
IMAGES_TABLE_COLUMNS = (
    "model", "image", "label", "target", "pred_clean", "pred_random", "pred_adversarial",
)
SUMMARY_FRAME_COLUMNS = (
    "model", "perturbation", "n_images", "top1_correct", "top1_accuracy", "top1_ci95_low",
    "top1_ci95_high", "attack_success", "attack_success_rate", "attack_success_ci95_low",
    "attack_success_ci95_high",
)


class RunningMoments:
    """Count, mean and M2 = Σ(x − mean)² of a stream of numbers, in float64, mergeable.

    Merge of two parts a, b (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm
    for computing sample variances"): with n = n_a + n_b and δ = mean_b − mean_a,
    mean = mean_a + δ·n_b/n and M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    A batch passed to ``update`` is first reduced exactly (two-pass mean, then Σ(x − mean)²) and then
    merged the same way, so ``update`` and ``merge`` give the same result for the same data.
    """

    def __init__(self, count=0, mean=math.nan, m2=0.0):
        self.count = int(count)
        self.mean = float(mean) if self.count else math.nan
        self.m2 = float(m2) if self.count else 0.0

    def update(self, values):
        """Add a 1-D array of finite values; returns self."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"RunningMoments.update needs a 1-D array, got shape {values.shape}: flatten it first")
        if not np.all(np.isfinite(values)):
            raise ValueError("RunningMoments.update got NaN or ±inf: drop non-finite values before updating")
        if values.size == 0:
            return self
        batch_mean = float(values.mean())
        batch = RunningMoments(values.size, batch_mean, float(np.sum((values - batch_mean) ** 2)))
        return self.merge(batch)

    def merge(self, other):
        """Fold another RunningMoments into this one (Chan et al. pairwise update); returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.count / total
        self.m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        return self

    @property
    def variance(self):
        """Sample variance M2/(n − 1) (ddof = 1); NaN for fewer than two values."""
        return self.m2 / (self.count - 1) if self.count >= 2 else math.nan

    @property
    def std(self):
        """Sample standard deviation (ddof = 1); NaN for fewer than two values."""
        return math.sqrt(self.variance) if self.count >= 2 else math.nan

    def ci95(self):
        """Student-t 95% confidence interval of the mean: mean ± t_{0.975, n−1} · s/√n.

        Returns (low, high); (NaN, NaN) for fewer than two values, where no spread is known.
        """
        if self.count < 2:
            return math.nan, math.nan
        half_width = scipy_stats.t.ppf(0.975, self.count - 1) * self.std / math.sqrt(self.count)
        return self.mean - half_width, self.mean + half_width

    def copy(self):
        return RunningMoments(self.count, self.mean, self.m2)

    def to_state(self):
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state):
        return cls(state["count"], state["mean"], state["m2"])

    def __eq__(self, other):
        if not isinstance(other, RunningMoments):
            return NotImplemented
        same_mean = (self.mean == other.mean) or (math.isnan(self.mean) and math.isnan(other.mean))
        return self.count == other.count and same_mean and self.m2 == other.m2

    def __repr__(self):
        return f"RunningMoments(count={self.count}, mean={self.mean!r}, m2={self.m2!r})"


@dataclass
class BlockRecord:
    """Statistics of one (model, perturbation, metric, block): per-image moments plus value counts."""

    moments: RunningMoments = field(default_factory=RunningMoments)
    n_values: int = 0      # finite channel values seen
    n_images: int = 0      # images seen, including those with no finite channel value
    n_excluded: int = 0    # non-finite channel values dropped

    def merge(self, other):
        self.moments.merge(other.moments)
        self.n_values += other.n_values
        self.n_images += other.n_images
        self.n_excluded += other.n_excluded
        return self

    def copy(self):
        return BlockRecord(self.moments.copy(), self.n_values, self.n_images, self.n_excluded)


def _validated_key(model, perturbation, metric, block_index):
    for name, text in (("model", model), ("perturbation", perturbation), ("metric", metric)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    if isinstance(block_index, bool) or not isinstance(block_index, (int, np.integer)) or block_index < 1:
        raise ValueError(f"block_index must be an integer ≥ 1 (1-based, in depth order), got {block_index!r}")
    return (model, perturbation, metric, int(block_index))


class BlockStatistics:
    """Per-image statistics of per-channel metrics, keyed by (model, perturbation, metric, block_index).

    ``sources`` optionally names what is inside (batch or shard ids). ``merge`` refuses to combine two
    statistics that share a source, because that would count the same images twice — the guard that
    lets a resumed or re-sharded run be merged safely. It grows with the number of batches, not images.
    """

    def __init__(self, sources=()):
        self.records = {}
        self.sources = set(_validated_sources(sources))
        # Each image's observation (its mean over finite channel values; NaN: none) per key, beside the moments,
        # so that paired statistics (`contrasts_frame`) can be computed from committed batches: (model, image id)
        # → {key: value}. Small: images × blocks × metrics.
        self.image_values = {}

    def add(self, model, perturbation, metric, block_index, values, image_ids=None):
        """Add an (N_images, C_channels) array of per-channel metric values for one block.

        Each image's observation is the mean of its finite channel values (the paper averages over
        channels, then images); non-finite values are excluded and counted. With ``image_ids`` (one per row)
        each image's observation is also kept, by image (`image_values`).
        """
        key = _validated_key(model, perturbation, metric, block_index)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(
                f"values for {key} must be 2-D (N_images, C_channels), got shape {values.shape}")
        finite = np.isfinite(values)
        finite_per_image = finite.sum(axis=1)
        sum_per_image = np.where(finite, values, 0.0).sum(axis=1)
        has_value = finite_per_image > 0
        image_means = sum_per_image[has_value] / finite_per_image[has_value]

        record = self.records.setdefault(key, BlockRecord())
        record.moments.update(image_means)
        record.n_values += int(finite.sum())
        record.n_images += values.shape[0]
        record.n_excluded += int(values.size - finite.sum())
        if image_ids is not None:
            if len(image_ids) != values.shape[0]:
                raise ValueError(f"{len(image_ids)} image ids for {values.shape[0]} rows of {key}")
            per_image = np.full(values.shape[0], np.nan)
            per_image[has_value] = image_means
            for image_id, value in zip(image_ids, per_image):
                self.image_values.setdefault((model, int(image_id)), {})[key[1:]] = float(value)
        return self

    def add_many(self, model, values_by_key, image_ids=None):
        """``add`` for a mapping {(perturbation, metric, block_index): (N, C) array} of one batch."""
        for (perturbation, metric, block_index), values in values_by_key.items():
            self.add(model, perturbation, metric, block_index, values, image_ids)
        return self

    def per_image(self, model, perturbation, metric, block_index):
        """{image id: its observation} of one key (NaN where it had no finite channel value)."""
        key = (perturbation, metric, int(block_index))
        return {image: values[key] for (name, image), values in self.image_values.items()
                if name == model and key in values}

    def merge(self, other):
        """Fold another BlockStatistics into this one; returns self.

        Associative and commutative up to float rounding. Raises if both contain the same source.
        """
        shared = self.sources & other.sources
        if shared:
            raise ValueError(
                f"sources {sorted(shared)[:5]} are in both statistics: merging would count their images "
                "twice; merge each batch or shard once")
        for key, record in other.records.items():
            if key in self.records:
                self.records[key].merge(record)
            else:
                self.records[key] = record.copy()
        for image, values in other.image_values.items():
            if image in self.image_values and set(values) & set(self.image_values[image]):
                raise ValueError(f"image {image} has values in both statistics: merging would count it twice")
            self.image_values.setdefault(image, {}).update(values)
        self.sources |= other.sources
        return self

    def keys(self):
        return sorted(self.records)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        return self.records[_validated_key(*key)]

    def to_state(self):
        """Arrays only (no pickled objects): keys as a JSON string array, one entry per record."""
        keys = self.keys()
        records = [self.records[key] for key in keys]
        return {
            "format_version": np.array(STATE_FORMAT_VERSION, dtype=np.int64),
            "keys": np.array([json.dumps(list(key)) for key in keys], dtype=np.str_),
            "count": np.array([r.moments.count for r in records], dtype=np.int64),
            "mean": np.array([r.moments.mean for r in records], dtype=np.float64),
            "m2": np.array([r.moments.m2 for r in records], dtype=np.float64),
            "n_values": np.array([r.n_values for r in records], dtype=np.int64),
            "n_images": np.array([r.n_images for r in records], dtype=np.int64),
            "n_excluded": np.array([r.n_excluded for r in records], dtype=np.int64),
            "sources": np.array(sorted(self.sources), dtype=np.str_),
            **self._image_state(),
        }

    def _image_state(self):
        """The per-image values as arrays: images (model, id), value keys, and an images × keys matrix (NaN
        where an image has no value for a key)."""
        images = sorted(self.image_values)
        keys = sorted({key for values in self.image_values.values() for key in values})
        column = {key: index for index, key in enumerate(keys)}
        matrix = np.full((len(images), len(keys)), np.nan)
        for row, image in enumerate(images):
            for key, value in self.image_values[image].items():
                matrix[row, column[key]] = value
        return {"image_models": np.array([model for model, _ in images], dtype=np.str_),
                "image_ids": np.array([image for _, image in images], dtype=np.int64),
                "image_value_keys": np.array([json.dumps(list(key)) for key in keys], dtype=np.str_),
                "image_values": matrix}

    @classmethod
    def from_state(cls, state):
        version = int(state["format_version"])
        if version not in (1, STATE_FORMAT_VERSION):
            raise ValueError(
                f"statistics state has format version {version}, this code reads {STATE_FORMAT_VERSION}: "
                "recompute it or load it with the matching version of repro")
        statistics = cls(sources=[str(s) for s in state["sources"]])
        columns = [np.asarray(state[name]) for name in ("count", "mean", "m2", "n_values", "n_images", "n_excluded")]
        keys = np.asarray(state["keys"])
        if any(column.shape != keys.shape for column in columns):
            raise ValueError("statistics state is inconsistent: every array must have one entry per key")
        for encoded, count, mean, m2, n_values, n_images, n_excluded in zip(keys, *columns):
            key = _validated_key(*json.loads(str(encoded)))
            statistics.records[key] = BlockRecord(
                RunningMoments(count, mean, m2), int(n_values), int(n_images), int(n_excluded))
        if version >= 2:
            keys = [tuple(json.loads(str(encoded))) for encoded in np.asarray(state["image_value_keys"])]
            matrix = np.asarray(state["image_values"], dtype=np.float64).reshape(len(state["image_ids"]), len(keys))
            for model, image, row in zip(np.asarray(state["image_models"]), np.asarray(state["image_ids"]), matrix):
                statistics.image_values[(str(model), int(image))] = {
                    (key[0], key[1], int(key[2])): float(value) for key, value in zip(keys, row) if not np.isnan(value)}
        return statistics

    def save(self, path):
        """Write the state as .npz atomically: temp file in the same directory, then os.replace.

        A run killed mid-write leaves either the old file or the new one, never a torn one. The file is
        written to exactly ``path`` (no suffix is appended).
        """
        state = self.to_state()
        return atomic_write(path, lambda stream: np.savez(stream, **state), binary=True, sync=True)

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as archive:
            return cls.from_state({name: archive[name] for name in archive.files})

    def __repr__(self):
        return f"BlockStatistics({len(self.records)} records, {len(self.sources)} sources)"


def _validated_sources(sources):
    if isinstance(sources, str):
        raise ValueError("sources must be a collection of ids, not a single string: wrap it in a list")
    sources = list(sources)
    if any(not isinstance(s, str) or not s for s in sources):
        raise ValueError(f"sources must be non-empty strings, got {sources!r}")
    return sources


def merge_statistics(statistics):
    """Merge an iterable of BlockStatistics into a new one (the inputs are not modified)."""
    merged = BlockStatistics()
    for part in statistics:
        merged.merge(part)
    return merged


def load_statistics(paths):
    """Load and merge several saved BlockStatistics files (e.g. one per batch or shard)."""
    return merge_statistics(BlockStatistics.load(path) for path in paths)


def _as_frame(table, required, name):
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it needs {list(required)}")
    return frame


def blocks_frame(statistics, block_table):
    """The tidy per-block table (SPEC §6): one row per model × perturbation × metric × block.

    ``block_table`` (DataFrame or list of dicts) describes each tapped block: model, block_index,
    depth_from_end (0 = final block), group, block (index within the group), tap, channels, height,
    width. Columns and order are BLOCKS_FRAME_COLUMNS; rows are sorted by model, perturbation, metric,
    block_index. mean/std/ci95 are over per-image channel means (see module docstring).
    """
    table = _as_frame(block_table, BLOCK_TABLE_COLUMNS, "block_table")
    duplicated = table.duplicated(["model", "block_index"])
    if duplicated.any():
        first = table.loc[duplicated, ["model", "block_index"]].iloc[0].tolist()
        raise ValueError(f"block_table lists (model, block_index) {first} more than once: keep one row per block")
    blocks = {(row.model, int(row.block_index)): row for row in table.itertuples(index=False)}

    rows = []
    for key in statistics.keys():
        model, perturbation, metric, block_index = key
        block = blocks.get((model, block_index))
        if block is None:
            raise ValueError(
                f"block_table has no row for model {model!r} block_index {block_index}: "
                "pass the block table of every model in the statistics")
        record = statistics.records[key]
        low, high = record.moments.ci95()
        rows.append((
            model, perturbation, metric, block_index, int(block.depth_from_end), int(block.group),
            int(block.block), str(block.tap), int(block.channels), int(block.height), int(block.width),
            record.moments.mean, record.moments.std, low, high,
            record.n_values, record.n_images, record.n_excluded,
        ))
    frame = pd.DataFrame(rows, columns=list(BLOCKS_FRAME_COLUMNS))
    integer_columns = ["block_index", "depth_from_end", "group", "block", "channels", "height", "width",
                       "n_values", "n_images", "n_excluded"]
    frame[integer_columns] = frame[integer_columns].astype(np.int64)
    frame[["mean", "std", "ci95_low", "ci95_high"]] = frame[["mean", "std", "ci95_low", "ci95_high"]].astype(np.float64)
    return frame.sort_values(["model", "perturbation", "metric", "block_index"], kind="stable").reset_index(drop=True)


CONTRASTS_FRAME_COLUMNS = (
    "model", "metric", "contrast", "block_index", "depth_from_end", "tap", "channels", "height", "width", "n",
    "n_left_out", "mean", "sd", "ci95_low", "ci95_high", "t", "p_t", "p_t_holm", "wilcoxon_statistic", "p_wilcoxon",
    "p_wilcoxon_holm", "significant",
)
SIGNIFICANCE = 0.05


def holm(p_values):
    """Holm's step-down adjustment (Holm 1979, Scand. J. Statist. 6:65) of a family of p-values: sorted
    ascending, p_(i) becomes max_{j ≤ i} min(1, (m − j + 1) p_(j)), m the number of (non-NaN) p-values. NaN stays
    NaN and does not count in m."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p_values))
    order = present[np.argsort(p_values[present], kind="stable")]
    running, count = 0.0, len(order)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_difference(after, before):
    """Statistics of the paired differences d_i = after_i − before_i (SPEC §9): n, mean, sd, the 95% t interval,
    the paired t-test (scipy's ``ttest_rel``) and the Wilcoxon signed-rank test (scipy's ``wilcoxon``, two-sided;
    NaN where every difference is zero). NaN throughout below two pairs."""
    after, before = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    differences = after - before
    n = len(differences)
    result = dict(n=n, mean=math.nan, sd=math.nan, ci95_low=math.nan, ci95_high=math.nan, t=math.nan, p_t=math.nan,
                  wilcoxon_statistic=math.nan, p_wilcoxon=math.nan)
    if n == 0:
        return result
    result["mean"] = float(differences.mean())
    if n < 2:
        return result
    sd = float(differences.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    result.update(sd=sd, ci95_low=result["mean"] - half, ci95_high=result["mean"] + half)
    with np.errstate(all="ignore"):
        test = scipy_stats.ttest_rel(after, before)
    result.update(t=float(test.statistic), p_t=float(test.pvalue))
    if np.any(differences != 0):
        test = scipy_stats.wilcoxon(after, before)
        result.update(wilcoxon_statistic=float(test.statistic), p_wilcoxon=float(test.pvalue))
    return result


def _images_by_model(statistics):
    """{model: [each image's {(perturbation, metric, block_index): value}]}."""
    images = {}
    for (model, _), values in statistics.image_values.items():
        images.setdefault(model, []).append(values)
    return images


def _paired(images, after_key, before_key):
    """`paired_difference` of the images holding both observations; the others are left out and counted."""
    pairs = [(values[after_key], values[before_key]) for values in images
             if after_key in values and before_key in values]
    after, before = (np.array([pair[k] for pair in pairs], dtype=np.float64) for k in (0, 1))
    return dict(n_left_out=len(images) - len(pairs), **paired_difference(after, before))


def _holm_family(family):
    """Holm's adjustment of both tests over one family of rows, and ``significant`` (adjusted t-test p < 0.05)."""
    for test in ("p_t", "p_wilcoxon"):
        for row, adjusted in zip(family, holm([row[test] for row in family])):
            row[test + "_holm"] = adjusted
    for row in family:
        row["significant"] = bool(row["p_t_holm"] < SIGNIFICANCE)
    return family


def contrasts_frame(statistics, block_table):
    """The paired contrast adversarial − random per model × metric × block (SPEC §9): for each image, its
    adversarial minus its random observation at the block (each the image's mean over finite channel values, as in
    blocks.csv); an image missing either is left out and counted (``n_left_out``). Holm's adjustment runs over the
    blocks of one model and metric; ``significant``: Holm-adjusted paired t-test p < 0.05. Columns:
    CONTRASTS_FRAME_COLUMNS."""
    table = _as_frame(block_table, BLOCK_TABLE_COLUMNS, "block_table")
    blocks = {(row.model, int(row.block_index)): row for row in table.itertuples(index=False)}
    images = _images_by_model(statistics)
    rows = []
    families = sorted({(model, metric) for model, _, metric, _ in statistics.keys() if model in images})
    for model, metric in families:
        family = []
        for block_index in sorted({key[3] for key in statistics.keys() if key[0] == model and key[2] == metric}):
            block = blocks[(model, block_index)]
            family.append(dict(
                model=model, metric=metric, contrast="adversarial-random", block_index=block_index,
                depth_from_end=int(block.depth_from_end), tap=str(block.tap), channels=int(block.channels),
                height=int(block.height), width=int(block.width),
                **_paired(images[model], ("adversarial", metric, block_index), ("random", metric, block_index))))
        rows += _holm_family(family)
    frame = pd.DataFrame(rows, columns=list(CONTRASTS_FRAME_COLUMNS))
    return frame.sort_values(["model", "metric", "block_index"], kind="stable").reset_index(drop=True)


DENOISING_FRAME_COLUMNS = (
    "model", "perturbation", "metric", "operation", "block_index", "depth_from_end", "tap_before", "tap_after", "n",
    "n_left_out", "mean", "sd", "ci95_low", "ci95_high", "t", "p_t", "p_t_holm", "wilcoxon_statistic", "p_wilcoxon",
    "p_wilcoxon_holm", "significant",
)


def denoising_frame(statistics, block_table):
    """The denoising effect (SPEC §9) per model × perturbation × metric × denoising operation: for each image, its
    observation at the operation's output minus that at the block output entering it (both taps of a ``--tap both``
    run, `repro.taps.denoising_pairs`); left-out images counted as in `contrasts_frame`, Holm over the operations of
    one model, perturbation and metric. ``block_index``/``depth_from_end`` are the operation's tap's;
    ``operation`` its scope (``group2/block5/non_local``, ``group3_denoise``). Empty without such pairs. Columns:
    DENOISING_FRAME_COLUMNS."""
    from repro.taps import denoising_pairs
    table = _as_frame(block_table, BLOCK_TABLE_COLUMNS, "block_table")
    images = _images_by_model(statistics)
    rows = []
    for model, blocks in table.sort_values("block_index", kind="stable").groupby("model", sort=True):
        pairs = denoising_pairs(blocks.to_dict("records"))
        if not pairs or model not in images:
            continue
        present = {key[1:] for key in statistics.keys() if key[0] == model}
        for perturbation, metric in sorted({(p, m) for p, m, _ in present}):
            family = []
            for before, after in pairs:
                after_index, before_index = int(after["block_index"]), int(before["block_index"])
                if (perturbation, metric, after_index) not in present:
                    continue
                family.append(dict(
                    model=model, perturbation=perturbation, metric=metric,
                    operation=str(after["tap"]).rsplit("/add", 1)[0], block_index=after_index,
                    depth_from_end=int(after["depth_from_end"]), tap_before=str(before["tap"]),
                    tap_after=str(after["tap"]),
                    **_paired(images[model], (perturbation, metric, after_index),
                              (perturbation, metric, before_index))))
            rows += _holm_family(family)
    frame = pd.DataFrame(rows, columns=list(DENOISING_FRAME_COLUMNS))
    return frame.sort_values(["model", "perturbation", "metric", "block_index"], kind="stable").reset_index(drop=True)


def wilson_interval(successes, n, z=Z_95):
    """Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209).

    With p̂ = k/n: centre = (p̂ + z²/2n) / (1 + z²/n),
    half-width = z/(1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²). Returns (low, high); (NaN, NaN) for n = 0.
    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 and k = n.
    """
    if isinstance(successes, bool) or isinstance(n, bool) or int(successes) != successes or int(n) != n:
        raise ValueError(f"wilson_interval needs integer counts, got successes={successes!r}, n={n!r}")
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval needs 0 ≤ successes ≤ n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    proportion = successes / n
    z2_over_n = z * z / n
    centre = (proportion + z2_over_n / 2) / (1 + z2_over_n)
    half_width = z / (1 + z2_over_n) * math.sqrt(proportion * (1 - proportion) / n + z2_over_n / (4 * n))
    # Rounding can push the bounds a hair outside [0, 1] at k = 0 or k = n.
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def summary_frame(images_df, attack="targeted"):
    """Top-1 accuracy and attack success per model × perturbation, with Wilson 95% intervals.

    ``images_df`` has one row per model × image with columns model, image, label, target, pred_clean,
    pred_random, pred_adversarial and optionally attack_success (bool). A targeted (or cw) attack succeeds when
    the adversarial prediction equals the target (SPEC §3), an untargeted one when it is not the label; if the
    attack_success column is given it must agree. Attack-success columns are filled for the adversarial rows only
    (<NA>/NaN elsewhere).
    Rows: models sorted by name, perturbations in the order clean, random, adversarial.
    """
    images = _as_frame(images_df, IMAGES_TABLE_COLUMNS, "images table")
    duplicated = images.duplicated(["model", "image"])
    if duplicated.any():
        first = images.loc[duplicated, ["model", "image"]].iloc[0].tolist()
        raise ValueError(f"images table lists (model, image) {first} more than once: each image must be counted once")
    if attack == "untargeted":
        succeeded = images["pred_adversarial"].to_numpy() != images["label"].to_numpy()
    else:
        succeeded = images["pred_adversarial"].to_numpy() == images["target"].to_numpy()
    if "attack_success" in images.columns:
        given = images["attack_success"].astype(bool).to_numpy()
        if not np.array_equal(given, succeeded):
            raise ValueError(
                f"attack_success disagrees with the {attack} attack's success rule for "
                f"{int((given != succeeded).sum())} images: recompute attack_success")

    rows = []
    for model in sorted(images["model"].unique()):
        in_model = (images["model"] == model).to_numpy()
        labels = images.loc[in_model, "label"].to_numpy()
        n_images = int(in_model.sum())
        for perturbation in PERTURBATIONS:
            correct = int((images.loc[in_model, f"pred_{perturbation}"].to_numpy() == labels).sum())
            low, high = wilson_interval(correct, n_images)
            row = [model, perturbation, n_images, correct, correct / n_images, low, high]
            if perturbation == "adversarial":
                successes = int(succeeded[in_model].sum())
                row += [successes, successes / n_images, *wilson_interval(successes, n_images)]
            else:
                row += [pd.NA, math.nan, math.nan, math.nan]
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(SUMMARY_FRAME_COLUMNS))
    frame["n_images"] = frame["n_images"].astype(np.int64)
    frame["top1_correct"] = frame["top1_correct"].astype(np.int64)
    frame["attack_success"] = frame["attack_success"].astype("Int64")
    return frame
