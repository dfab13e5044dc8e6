"""Tests for repro.aggregate: moments against NumPy/SciPy, merge invariance, state files, tables, Wilson."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from repro.aggregate import (
    BLOCKS_FRAME_COLUMNS,
    SUMMARY_FRAME_COLUMNS,
    BlockStatistics,
    RunningMoments,
    blocks_frame,
    load_statistics,
    merge_statistics,
    summary_frame,
    wilson_interval,
)

Z = 1.959963984540054


def reference_ci95(values):
    """Student-t interval of the mean computed directly with SciPy's own interval routine."""
    values = np.asarray(values, dtype=np.float64)
    return scipy_stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=scipy_stats.sem(values))


# ---------------------------------------------------------------- RunningMoments

def test_running_moments_match_numpy_and_scipy():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=257)
    moments = RunningMoments().update(values)
    assert moments.count == 257
    assert moments.mean == pytest.approx(values.mean(), rel=1e-14)
    assert moments.std == pytest.approx(values.std(ddof=1), rel=1e-13)
    np.testing.assert_allclose(moments.ci95(), reference_ci95(values), rtol=1e-13)


def test_running_moments_chunked_updates_and_merge_equal_one_pass():
    values = np.random.default_rng(1).exponential(5.0, size=1000)
    whole = RunningMoments().update(values)
    chunked = RunningMoments()
    for chunk in np.array_split(values, [1, 2, 50, 51, 600]):  # includes 1-element and empty-free splits
        chunked.update(chunk)
    merged = RunningMoments().update(values[:333]).merge(RunningMoments().update(values[333:]))
    for other in (chunked, merged):
        assert other.count == whole.count
        assert other.mean == pytest.approx(whole.mean, rel=1e-13)
        assert other.std == pytest.approx(whole.std, rel=1e-12)
        np.testing.assert_allclose(other.ci95(), whole.ci95(), rtol=1e-12)


def test_running_moments_stay_accurate_with_large_offset():
    # Naive Σx² − n·mean² loses every digit here (variance 1e-2 on values near 1e9); Chan's update must not.
    values = 1e9 + np.random.default_rng(2).normal(0.0, 0.1, size=4000)
    moments = RunningMoments()
    for chunk in np.array_split(values, 40):
        moments.update(chunk)
    assert moments.std == pytest.approx(values.std(ddof=1), rel=1e-6)


def test_running_moments_small_counts():
    empty = RunningMoments()
    assert empty.count == 0 and math.isnan(empty.mean) and math.isnan(empty.std)
    assert all(math.isnan(v) for v in empty.ci95())
    single = RunningMoments().update([4.0])
    assert single.mean == 4.0 and math.isnan(single.std) and all(math.isnan(v) for v in single.ci95())
    assert RunningMoments().update([]).count == 0
    # Merging an empty part changes nothing, in either order.
    assert RunningMoments().merge(single) == single
    assert single.copy().merge(RunningMoments()) == single
    # Two values: hand-computed. mean 3, s = √2, t_{0.975,1} = 12.7062047…, half = t·√2/√2 = t.
    pair = RunningMoments().update([2.0, 4.0])
    assert pair.std == pytest.approx(math.sqrt(2.0))
    low, high = pair.ci95()
    assert (high - low) / 2 == pytest.approx(12.706204736174698, rel=1e-12)


def test_running_moments_reject_bad_input_and_round_trip_state():
    with pytest.raises(ValueError, match="non-finite"):
        RunningMoments().update([1.0, np.inf])
    with pytest.raises(ValueError, match="1-D"):
        RunningMoments().update(np.ones((2, 2)))
    moments = RunningMoments().update([1.0, 2.5, 7.0])
    assert RunningMoments.from_state(moments.to_state()) == moments


# ---------------------------------------------------------------- BlockStatistics

def test_add_averages_finite_channels_per_image_and_counts_exclusions():
    values = np.array([
        [1.0, 2.0, np.inf],        # image mean 1.5, one excluded
        [np.nan, np.nan, -np.inf],  # no finite channel: seen, but no observation
        [3.0, 5.0, 7.0],            # image mean 5.0
    ])
    statistics = BlockStatistics().add("ResNet", "random", "sre", 2, values)
    record = statistics["ResNet", "random", "sre", 2]
    assert record.n_images == 3
    assert record.n_values == 5
    assert record.n_excluded == 4
    assert record.moments.count == 2
    assert record.moments.mean == pytest.approx(3.25)
    assert record.moments.std == pytest.approx(np.std([1.5, 5.0], ddof=1))


@pytest.mark.parametrize("bad_call, message", [
    (lambda s: s.add("m", "random", "mse", 1, np.ones(3)), "2-D"),
    (lambda s: s.add("m", "random", "mse", 0, np.ones((1, 3))), "block_index"),
    (lambda s: s.add("m", "", "mse", 1, np.ones((1, 3))), "perturbation"),
    (lambda s: s.add("m", "random", "mse", 1.0, np.ones((1, 3))), "block_index"),
])
def test_add_rejects_bad_input(bad_call, message):
    with pytest.raises(ValueError, match=message):
        bad_call(BlockStatistics())


def _random_batch(rng, n_images, channels=(4, 6, 8)):
    """Per-block values with some non-finite entries and one all-NaN image row."""
    batch = {}
    for perturbation in ("random", "adversarial"):
        for metric in ("mse", "ssim"):
            for block_index, n_channels in enumerate(channels, start=1):
                values = rng.gamma(2.0, 1.5, size=(n_images, n_channels))
                values[rng.random(values.shape) < 0.1] = np.inf
                values[0, :] = np.nan
                batch[(perturbation, metric, block_index)] = values
    return batch


def _assert_same_statistics(first, second, rtol=1e-12):
    assert first.keys() == second.keys()
    for key in first.keys():
        a, b = first.records[key], second.records[key]
        assert (a.n_values, a.n_images, a.n_excluded, a.moments.count) == \
               (b.n_values, b.n_images, b.n_excluded, b.moments.count)
        assert a.moments.mean == pytest.approx(b.moments.mean, rel=rtol)
        assert a.moments.std == pytest.approx(b.moments.std, rel=rtol)
        np.testing.assert_allclose(a.moments.ci95(), b.moments.ci95(), rtol=rtol)


def test_halves_merged_equal_whole_including_std_and_ci():
    batch = _random_batch(np.random.default_rng(3), n_images=40)
    whole = BlockStatistics().add_many("ResNet", batch)
    first = BlockStatistics().add_many("ResNet", {k: v[:17] for k, v in batch.items()})
    second = BlockStatistics().add_many("ResNet", {k: v[17:] for k, v in batch.items()})
    _assert_same_statistics(merge_statistics([first, second]), whole)
    _assert_same_statistics(merge_statistics([second, first]), whole)  # commutative


def test_merge_is_associative_and_leaves_inputs_untouched():
    batch = _random_batch(np.random.default_rng(4), n_images=30)
    parts = [BlockStatistics().add_many("X", {k: v[i::3] for k, v in batch.items()}) for i in range(3)]
    before = [p.to_state() for p in parts]
    left = merge_statistics([merge_statistics(parts[:2]), parts[2]])
    right = merge_statistics([parts[0], merge_statistics(parts[1:])])
    _assert_same_statistics(left, right)
    for part, state in zip(parts, before):
        np.testing.assert_array_equal(part.to_state()["count"], state["count"])
        np.testing.assert_array_equal(part.to_state()["m2"], state["m2"])


def test_block_statistics_match_direct_numpy_reference():
    batch = _random_batch(np.random.default_rng(5), n_images=25)
    statistics = BlockStatistics()
    for start in range(0, 25, 7):  # batches of 7, 7, 7, 4 images
        statistics.add_many("ResNet", {k: v[start:start + 7] for k, v in batch.items()})
    for key, values in batch.items():
        record = statistics["ResNet", *key]
        masked = np.where(np.isfinite(values), values, np.nan)
        per_image = np.array([np.nanmean(row) for row in masked if np.isfinite(row).any()])
        assert record.moments.mean == pytest.approx(per_image.mean(), rel=1e-12)
        assert record.moments.std == pytest.approx(per_image.std(ddof=1), rel=1e-12)
        np.testing.assert_allclose(record.moments.ci95(), reference_ci95(per_image), rtol=1e-12)
        assert record.n_excluded == int((~np.isfinite(values)).sum())
        assert record.n_images == 25


def test_merge_refuses_to_count_a_source_twice():
    first = BlockStatistics(sources=["batch-000"]).add("m", "random", "mse", 1, np.ones((2, 3)))
    second = BlockStatistics(sources=["batch-001"]).add("m", "random", "mse", 1, np.ones((2, 3)))
    merged = merge_statistics([first, second])
    assert merged.sources == {"batch-000", "batch-001"}
    with pytest.raises(ValueError, match="twice"):
        merged.merge(first)


def test_save_load_round_trip_is_exact_atomic_and_pickle_free(tmp_path):
    batch = _random_batch(np.random.default_rng(6), n_images=12)
    statistics = BlockStatistics(sources=["shard-a"]).add_many("ResNetDenoise", batch)
    path = tmp_path / "stats" / "batch_0000.npz"
    statistics.save(path)
    statistics.save(path)  # overwriting an existing file must work too
    assert sorted(os.listdir(path.parent)) == ["batch_0000.npz"]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as archive:
        keys = [json.loads(k) for k in archive["keys"]]
        assert all(archive[name].dtype != object for name in archive.files)
    assert keys[0] == ["ResNetDenoise", "adversarial", "mse", 1]
    loaded = BlockStatistics.load(path)
    assert loaded.sources == {"shard-a"}
    for key in statistics.keys():
        assert loaded.records[key].moments == statistics.records[key].moments
        assert loaded.records[key] == statistics.records[key]
    # Empty statistics survive the round trip as well.
    BlockStatistics().save(tmp_path / "empty.npz")
    assert len(BlockStatistics.load(tmp_path / "empty.npz")) == 0


def test_batches_saved_separately_then_loaded_equal_one_pass(tmp_path):
    batch = _random_batch(np.random.default_rng(7), n_images=20)
    whole = BlockStatistics().add_many("ResNet", batch)
    paths = []
    for index, start in enumerate(range(0, 20, 6)):
        part = BlockStatistics(sources=[f"batch-{index}"])
        part.add_many("ResNet", {k: v[start:start + 6] for k, v in batch.items()})
        paths.append(part.save(tmp_path / f"batch_{index}.npz"))
    loaded = load_statistics(paths)
    _assert_same_statistics(loaded, whole)
    assert loaded.sources == {"batch-0", "batch-1", "batch-2", "batch-3"}


# ---------------------------------------------------------------- blocks_frame

def _block_table(model, blocks_per_group, channels=(4, 6, 8, 10)):
    rows, index = [], 0
    total = sum(blocks_per_group)
    for group, count in enumerate(blocks_per_group):
        for block in range(count):
            index += 1
            rows.append(dict(model=model, block_index=index, depth_from_end=total - index, group=group,
                             block=block, tap=f"group{group}/block{block}/block_output",
                             channels=channels[group], height=56 >> group, width=56 >> group))
    return rows


def test_blocks_frame_columns_order_values_and_join():
    rng = np.random.default_rng(8)
    table = pd.DataFrame(_block_table("B", [1, 1, 2, 1]) + _block_table("A", [1, 1, 1, 1]))
    statistics = BlockStatistics()
    reference = {}
    for model, n_blocks in (("B", 5), ("A", 4)):
        for perturbation in ("random", "adversarial"):
            for metric in ("ssim", "frobenius"):
                for block_index in range(n_blocks, 0, -1):  # added out of order on purpose
                    values = rng.normal(size=(6, 3))
                    statistics.add(model, perturbation, metric, block_index, values)
                    reference[(model, perturbation, metric, block_index)] = values.mean(axis=1)
    frame = blocks_frame(statistics, table)
    assert list(frame.columns) == list(BLOCKS_FRAME_COLUMNS)
    assert len(frame) == 2 * 2 * (5 + 4)
    keys = list(zip(frame.model, frame.perturbation, frame.metric, frame.block_index))
    assert keys == sorted(keys)
    row = frame[(frame.model == "B") & (frame.perturbation == "random") & (frame.metric == "ssim")
                & (frame.block_index == 4)].iloc[0]
    per_image = reference[("B", "random", "ssim", 4)]
    assert row["mean"] == pytest.approx(per_image.mean())
    assert row["std"] == pytest.approx(per_image.std(ddof=1))
    assert (row.ci95_low, row.ci95_high) == pytest.approx(reference_ci95(per_image))
    assert (row.depth_from_end, row.group, row.block, row.tap, row.channels, row.height) == \
           (1, 2, 1, "group2/block1/block_output", 8, 14)
    assert (row.n_values, row.n_images, row.n_excluded) == (18, 6, 0)
    assert frame.groupby("model").depth_from_end.min().tolist() == [0, 0]


def test_blocks_frame_rejects_incomplete_or_duplicated_tables():
    statistics = BlockStatistics().add("A", "random", "mse", 3, np.ones((2, 2)))
    with pytest.raises(ValueError, match="no row for model 'A' block_index 3"):
        blocks_frame(statistics, _block_table("A", [1, 1]))
    with pytest.raises(ValueError, match="more than once"):
        blocks_frame(statistics, _block_table("A", [3]) * 2)
    with pytest.raises(ValueError, match="lacks columns"):
        blocks_frame(statistics, [dict(model="A", block_index=3)])
    empty = blocks_frame(BlockStatistics(), _block_table("A", [3]))
    assert list(empty.columns) == list(BLOCKS_FRAME_COLUMNS) and len(empty) == 0


# ---------------------------------------------------------------- Wilson and summary

def wilson_by_hand(k, n, z=Z):
    """Wilson bounds written out: (p + z²/2n ∓ z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    root = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (p + z * z / (2 * n) - root) / (1 + z * z / n), (p + z * z / (2 * n) + root) / (1 + z * z / n)


@pytest.mark.parametrize("k, n, expected", [
    # Literals from the roots of (1 + z²/n)q² − (2p̂ + z²/n)q + p̂² = 0, i.e. (p̂ − q)² = z²q(1−q)/n.
    (0, 10, (0.0, 0.2775327998628892)),
    (10, 10, (0.7224672001371111, 1.0)),
    (5, 10, (0.23659309051256394, 0.7634069094874361)),
    (37, 100, (0.2818236053432454, 0.4677947041905708)),
])
def test_wilson_interval_hand_computed(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


def test_wilson_interval_closed_forms_and_edges():
    # At k = 0 the upper bound is z²/(n + z²); at k = n the lower bound is n/(n + z²).
    for n in (1, 7, 100):
        assert wilson_interval(0, n)[1] == pytest.approx(Z * Z / (n + Z * Z), rel=1e-12)
        assert wilson_interval(n, n)[0] == pytest.approx(n / (n + Z * Z), rel=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    # A 90% interval (z = 1.6448536…) is narrower than the 95% one.
    low90, high90 = wilson_interval(37, 100, z=1.6448536269514722)
    low95, high95 = wilson_interval(37, 100)
    assert low95 < low90 < 0.37 < high90 < high95
    for bad in ((11, 10), (-1, 10), (1.5, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def _images_table():
    # Model "A": 4 images; model "B": 2 images. Labels 0..3, targets differ from labels.
    return pd.DataFrame([
        dict(model="B", image="b0", label=5, target=9, pred_clean=5, pred_random=5, pred_adversarial=9),
        dict(model="B", image="b1", label=6, target=2, pred_clean=1, pred_random=6, pred_adversarial=6),
        dict(model="A", image="a0", label=0, target=7, pred_clean=0, pred_random=0, pred_adversarial=7),
        dict(model="A", image="a1", label=1, target=8, pred_clean=1, pred_random=1, pred_adversarial=1),
        dict(model="A", image="a2", label=2, target=3, pred_clean=2, pred_random=4, pred_adversarial=4),
        dict(model="A", image="a3", label=3, target=5, pred_clean=0, pred_random=0, pred_adversarial=5),
    ])


def test_summary_frame_counts_rates_and_intervals():
    images = _images_table()
    images["attack_success"] = images.pred_adversarial == images.target
    frame = summary_frame(images)
    assert list(frame.columns) == list(SUMMARY_FRAME_COLUMNS)
    assert list(zip(frame.model, frame.perturbation)) == [
        ("A", "clean"), ("A", "random"), ("A", "adversarial"),
        ("B", "clean"), ("B", "random"), ("B", "adversarial")]
    # Hand counts: A clean 3/4, random 2/4, adversarial 1/4 correct, 2/4 attacks hit the target;
    # B clean 1/2, random 2/2, adversarial 1/2 correct, 1/2 attacks succeeded.
    assert frame.top1_correct.tolist() == [3, 2, 1, 1, 2, 1]
    assert frame.n_images.tolist() == [4, 4, 4, 2, 2, 2]
    assert frame.top1_accuracy.tolist() == [0.75, 0.5, 0.25, 0.5, 1.0, 0.5]
    for row in frame.itertuples():
        assert (row.top1_ci95_low, row.top1_ci95_high) == pytest.approx(wilson_by_hand(row.top1_correct, row.n_images))
    adversarial = frame[frame.perturbation == "adversarial"]
    assert adversarial.attack_success.tolist() == [2, 1]
    assert adversarial.attack_success_rate.tolist() == [0.5, 0.5]
    assert adversarial.attack_success_ci95_low.tolist() == pytest.approx([wilson_by_hand(2, 4)[0], wilson_by_hand(1, 2)[0]])
    others = frame[frame.perturbation != "adversarial"]
    assert others.attack_success.isna().all() and others.attack_success_rate.isna().all()
    assert others.attack_success_ci95_high.isna().all()


def test_summary_frame_rejects_duplicates_and_inconsistent_success():
    images = _images_table()
    with pytest.raises(ValueError, match="more than once"):
        summary_frame(pd.concat([images, images.iloc[:1]]))
    images["attack_success"] = True
    with pytest.raises(ValueError, match="disagrees"):
        summary_frame(images)
    with pytest.raises(ValueError, match="lacks columns"):
        summary_frame(images.drop(columns="target"))


# --- paired statistics -------------------------------------------------------------------------------------

def test_holm_matches_a_textbook_example():
    """Holm (1979) on four p-values: sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04,
    made monotone (0.04 → 0.06); a NaN is neither adjusted nor counted."""
    from repro.aggregate import holm
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, np.nan, 0.04])
    assert np.isnan(adjusted[1]) and np.allclose(adjusted[[0, 2]], [0.02, 0.04])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def test_paired_differences_are_scipys_tests():
    from scipy import stats

    from repro.aggregate import paired_difference
    rng = np.random.default_rng(3)
    before = rng.normal(size=30)
    after = before + 0.3 + rng.normal(scale=0.5, size=30)
    result = paired_difference(after, before)
    t = stats.ttest_rel(after, before)
    w = stats.wilcoxon(after, before)
    assert result["n"] == 30 and result["mean"] == pytest.approx(np.mean(after - before))
    assert (result["t"], result["p_t"]) == pytest.approx((t.statistic, t.pvalue))
    assert (result["wilcoxon_statistic"], result["p_wilcoxon"]) == pytest.approx((w.statistic, w.pvalue))
    half = stats.t.ppf(0.975, 29) * np.std(after - before, ddof=1) / np.sqrt(30)
    assert (result["ci95_low"], result["ci95_high"]) == pytest.approx((result["mean"] - half, result["mean"] + half))
    same = paired_difference(before, before)
    assert same["mean"] == 0 and np.isnan(same["p_wilcoxon"])
    assert np.isnan(paired_difference([1.0], [0.0])["sd"])


def test_per_image_values_survive_saving_and_merging(tmp_path):
    first = BlockStatistics(sources=["a"]).add("M", "random", "mse", 1, [[1.0, 3.0], [np.nan, np.nan]],
                                               image_ids=[0, 1])
    second = BlockStatistics(sources=["b"]).add("M", "random", "mse", 1, [[5.0, np.inf]], image_ids=[2])
    first.save(tmp_path / "a.npz")
    merged = BlockStatistics.load(tmp_path / "a.npz").merge(second)
    assert merged.per_image("M", "random", "mse", 1) == {0: 2.0, 2: 5.0}        # image 1: no finite value
    with pytest.raises(ValueError, match="has values in both statistics"):
        merged.merge(BlockStatistics(sources=["c"]).add("M", "random", "mse", 1, [[1.0]], image_ids=[2]))
