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
STATE_FORMAT_VERSION = 1
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

    def add(self, model, perturbation, metric, block_index, values):
        """Add an (N_images, C_channels) array of per-channel metric values for one block.

        Each image's observation is the mean of its finite channel values (the paper averages over
        channels, then images); non-finite values are excluded and counted.
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
        return self

    def add_many(self, model, values_by_key):
        """``add`` for a mapping {(perturbation, metric, block_index): (N, C) array} of one batch."""
        for (perturbation, metric, block_index), values in values_by_key.items():
            self.add(model, perturbation, metric, block_index, values)
        return self

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
        }

    @classmethod
    def from_state(cls, state):
        version = int(state["format_version"])
        if version != STATE_FORMAT_VERSION:
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


def summary_frame(images_df):
    """Top-1 accuracy and targeted attack success per model × perturbation, with Wilson 95% intervals.

    ``images_df`` has one row per model × image with columns model, image, label, target, pred_clean,
    pred_random, pred_adversarial and optionally attack_success (bool). A targeted attack succeeds when
    the adversarial prediction equals the target (SPEC §3); if the attack_success column is given it
    must agree. Attack-success columns are filled for the adversarial rows only (<NA>/NaN elsewhere).
    Rows: models sorted by name, perturbations in the order clean, random, adversarial.
    """
    images = _as_frame(images_df, IMAGES_TABLE_COLUMNS, "images table")
    duplicated = images.duplicated(["model", "image"])
    if duplicated.any():
        first = images.loc[duplicated, ["model", "image"]].iloc[0].tolist()
        raise ValueError(f"images table lists (model, image) {first} more than once: each image must be counted once")
    succeeded = images["pred_adversarial"].to_numpy() == images["target"].to_numpy()
    if "attack_success" in images.columns:
        given = images["attack_success"].astype(bool).to_numpy()
        if not np.array_equal(given, succeeded):
            raise ValueError(
                f"attack_success disagrees with pred_adversarial == target for {int((given != succeeded).sum())} "
                "images: the attack is targeted, recompute attack_success")

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
