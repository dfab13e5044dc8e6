"""Tests for repro.plots: files written and valid, and the figures' content (lines, x data, separators, labels)."""
import warnings

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import numpy as np
import pandas as pd
import pytest

from repro.aggregate import BlockStatistics, blocks_frame
from repro.plots import (
    build_feature_maps_figure,
    build_model_figure,
    build_models_figure,
    depth_ticks,
    ordered_models,
    plot_feature_maps,
    plot_model_figure,
    plot_models_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"
METRICS = ("frobenius", "mse", "sre", "ssim")
# Two networks of different depth, 4 groups each (blocks per group).
ARCHITECTURES = {"Small": [1, 1, 3, 1], "Deep": [2, 3, 3, 1]}


def _block_table(model, blocks_per_group):
    rows, index, total = [], 0, sum(blocks_per_group)
    for group, count in enumerate(blocks_per_group):
        for block in range(count):
            index += 1
            rows.append(dict(model=model, block_index=index, depth_from_end=total - index, group=group,
                             block=block, tap=f"group{group}/block{block}/block_output",
                             channels=8 << group, height=32 >> group, width=32 >> group))
    return rows


def make_blocks_df():
    """blocks_frame of synthetic statistics: every block's values ~ N(block_index, 0.5)."""
    rng = np.random.default_rng(0)
    statistics, table = BlockStatistics(), []
    for model, groups in ARCHITECTURES.items():
        table += _block_table(model, groups)
        for block_index in range(1, sum(groups) + 1):
            for perturbation in ("random", "adversarial"):
                for metric in METRICS:
                    statistics.add(model, perturbation, metric, block_index,
                                   rng.normal(block_index, 0.5, size=(5, 4)))
    return blocks_frame(statistics, pd.DataFrame(table))


@pytest.fixture(scope="module")
def blocks_df():
    return make_blocks_df()


def _lines(axis, prefix):
    return [line for line in axis.lines if str(line.get_gid()).startswith(prefix)]


def _vertical_positions(axis, gid):
    return sorted(float(line.get_xdata()[0]) for line in axis.lines if line.get_gid() == gid)


def _visible_axes(figure):
    return [axis for axis in figure.axes if axis.get_visible()]


def _assert_valid_files(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert paths[1].read_bytes()[:5] == PDF_MAGIC
    assert paths[1].read_bytes().rstrip().endswith(b"%%EOF")


# ---------------------------------------------------------------- Fig. 5.1

def test_model_figure_content(blocks_df):
    figure = build_model_figure(blocks_df, "Small")
    axes = _visible_axes(figure)
    assert len(axes) == 4
    for letter, metric, axis in zip("abcd", METRICS, axes):
        assert axis.get_title(loc="left").startswith(f"({letter})")
        assert axis.get_ylabel()
        assert len(_lines(axis, "mean_")) == 2
        assert len([c for c in axis.collections if str(c.get_gid()).startswith("ci95_")]) == 2
        # Groups [1, 1, 3, 1]: boundaries after blocks 1, 2 and 5.
        assert _vertical_positions(axis, "group_separator") == [1.5, 2.5, 5.5]
        for perturbation, colour in (("adversarial", "tab:blue"), ("random", "tab:orange")):
            (line,) = _lines(axis, f"mean_{perturbation}")
            expected = blocks_df[(blocks_df.model == "Small") & (blocks_df.perturbation == perturbation)
                                 & (blocks_df.metric == metric)].sort_values("block_index")
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 7))
            np.testing.assert_allclose(line.get_ydata(), expected["mean"].to_numpy())
            assert mcolors.same_color(line.get_color(), colour)
    assert axes[2].get_ylabel() == "SRE [dB]"
    assert "residual block" in figure.get_supxlabel()
    assert axes[0].get_xticks()[0] == 1
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert {"adversarial", "random", "95% CI"} <= set(legend_labels)


def test_plot_model_figure_writes_valid_column_width_files(blocks_df, tmp_path):
    paths = plot_model_figure(blocks_df, "Deep", tmp_path / "sub" / "fig5_1")
    _assert_valid_files(paths)
    height, width = mimage.imread(paths[0]).shape[:2]
    assert 900 < width < 1200  # 3.5 in at 300 dpi, give or take the tight bounding box
    again = plot_model_figure(blocks_df, "Deep", tmp_path / "again")
    assert again[0].read_bytes() == paths[0].read_bytes()  # no timestamps: same data, same bytes
    assert again[1].read_bytes() == paths[1].read_bytes()


def test_model_figure_missing_metric_leaves_a_noted_panel(blocks_df, tmp_path):
    with pytest.warns(UserWarning, match="psnr"):
        figure = build_model_figure(blocks_df, "Small", metrics=("frobenius", "psnr"), titles=["A", "B"])
    first, second = _visible_axes(figure)
    assert len(_lines(first, "mean_")) == 2 and first.get_title(loc="left") == "(a) A"
    assert _lines(second, "mean_") == []
    assert [t.get_gid() for t in second.texts] == ["missing_note"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_valid_files(plot_model_figure(blocks_df, "Small", tmp_path / "missing", metrics=("psnr",)))


def test_model_figure_draws_nan_means_as_gaps(blocks_df):
    frame = blocks_df.copy()
    hole = (frame.model == "Small") & (frame.metric == "ssim") & (frame.perturbation == "adversarial") \
        & (frame.block_index == 3)
    frame.loc[hole, ["mean", "ci95_low", "ci95_high"]] = np.nan
    figure = build_model_figure(frame, "Small")
    (line,) = _lines(_visible_axes(figure)[3], "mean_adversarial")
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(y[2]) and np.isfinite(np.delete(y, 2)).all()
    figure.canvas.draw()  # NaN must not break rendering (e.g. the CI band's polygon)


def test_model_figure_rejects_bad_input(blocks_df):
    with pytest.raises(ValueError, match="'Nope' is not in the blocks table"):
        build_model_figure(blocks_df, "Nope")
    with pytest.raises(ValueError, match="more than one row"):
        build_model_figure(pd.concat([blocks_df, blocks_df.iloc[:1]]), "Small")
    with pytest.raises(ValueError, match="one title per metric"):
        build_model_figure(blocks_df, "Small", titles=["only one"])
    with pytest.raises(ValueError, match="lacks columns"):
        build_model_figure(blocks_df.drop(columns="group"), "Small")


def test_depth_ticks_mark_first_block_and_round_numbers():
    assert depth_ticks(50) == [1, 10, 20, 30, 40, 50]
    ticks = depth_ticks(6)
    assert ticks[0] == 1 and max(ticks) <= 6 and ticks == sorted(set(ticks))


# ---------------------------------------------------------------- Fig. 5.2

def test_models_figure_aligns_every_model_at_zero(blocks_df):
    figure = build_models_figure(blocks_df)
    axes = _visible_axes(figure)
    assert len(axes) == 4
    for axis in axes:
        assert axis.get_ylabel()
        assert len(_lines(axis, "mean_")) == 4
        assert axis.get_xlim()[1] == pytest.approx(0.5)
        for model, groups in ARCHITECTURES.items():
            n_blocks = sum(groups)
            for perturbation, style in (("adversarial", "-"), ("random", "--")):
                (line,) = _lines(axis, f"mean_{perturbation}_{model}")
                np.testing.assert_array_equal(line.get_xdata(), np.arange(-(n_blocks - 1), 1))
                assert line.get_linestyle() == style
        colours = {line.get_color() for line in _lines(axis, "mean_adversarial_")}
        assert len(colours) == 2
        # Small [1,1,3,1] ends groups at −4.5, −3.5, −0.5; Deep [2,3,3,1] at −6.5, −3.5, −0.5.
        assert _vertical_positions(axis, "group_separator") == [-3.5, -0.5]
        assert _vertical_positions(axis, "group_separator_Small") == [-4.5]
        assert _vertical_positions(axis, "group_separator_Deep") == [-6.5]
    assert "0 = final block" in figure.get_supxlabel()
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert {"Small", "Deep", "adversarial", "random"} <= set(legend_labels)


def test_models_figure_single_model_and_model_choice(blocks_df, tmp_path):
    figure = build_models_figure(blocks_df, models=["Small"], group_separators="shared")
    for axis in _visible_axes(figure):
        assert len(_lines(axis, "mean_")) == 2
        assert _vertical_positions(axis, "group_separator") == [-4.5, -3.5, -0.5]
    only_small = blocks_df[blocks_df.model == "Small"]
    _assert_valid_files(plot_models_figure(only_small, tmp_path / "fig5_2_single"))
    with pytest.raises(ValueError, match="not in the blocks table"):
        build_models_figure(blocks_df, models=["Small", "Missing"])
    none = build_models_figure(blocks_df, group_separators="none")
    assert all(not _lines(axis, "group_separator") for axis in _visible_axes(none))


def test_models_figure_missing_metric_and_ci_bands(blocks_df):
    with pytest.warns(UserWarning, match="uiq"):
        figure = build_models_figure(blocks_df, metrics=("sre", "uiq", "ssim"), show_ci=True)
    axes = _visible_axes(figure)
    assert len(axes) == 3
    assert [len(_lines(axis, "mean_")) for axis in axes] == [4, 0, 4]
    assert [len(axis.collections) for axis in axes] == [4, 0, 4]  # one band per model and perturbation


def test_ordered_models_follow_the_paper_then_names():
    assert ordered_models(["Zeta", "ResNeXtDenoiseAll", "Alpha", "ResNet", "ResNetDenoise"]) == \
        ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll", "Alpha", "Zeta"]


# ---------------------------------------------------------------- feature maps

def _panels():
    rng = np.random.default_rng(1)
    clean = rng.random((14, 14))
    return [
        dict(label="group1/block3 ch 17, SSIM adv 0.41 vs rand 0.83", clean=clean,
             random=clean + 0.1, adversarial=clean - 2.0),
        dict(label="group3/block0 ch 2, constant map", clean=np.ones((7, 7)), random=np.ones((7, 7)),
             adversarial=np.ones((7, 7))),
    ]


def test_feature_maps_share_one_colour_scale_per_row(tmp_path):
    panels = _panels()
    figure = build_feature_maps_figure(panels, title="digital clock")
    rows = figure.subfigs
    assert len(rows) == 2
    first_row_images = [image for axis in rows[0].axes for image in axis.images]
    assert len(first_row_images) == 3
    stacked = np.stack([panels[0][k] for k in ("clean", "random", "adversarial")])
    for image in first_row_images:
        assert image.get_clim() == pytest.approx((stacked.min(), stacked.max()))
    low, high = rows[1].axes[0].images[0].get_clim()
    assert low < 1.0 < high  # a constant map still gets a non-empty colour range
    assert all(len(row.axes) == 4 for row in rows)  # three maps and one colour bar per row
    assert [axis.get_title() for axis in rows[0].axes[:3]] == ["clean", "random", "adversarial"]
    row_texts = [text.get_text() for row in rows for text in row.texts]
    assert panels[0]["label"] in row_texts and panels[1]["label"] in row_texts
    _assert_valid_files(plot_feature_maps(panels, tmp_path / "maps", title="digital clock"))


def test_feature_maps_reject_bad_panels():
    with pytest.raises(ValueError, match="lacks"):
        build_feature_maps_figure([dict(label="x", clean=np.ones((3, 3)), random=np.ones((3, 3)))])
    with pytest.raises(ValueError, match="one shape"):
        build_feature_maps_figure([dict(label="x", clean=np.ones((3, 3)), random=np.ones((3, 3)),
                                        adversarial=np.ones((4, 3)))])
    with pytest.raises(ValueError, match="at least one panel"):
        build_feature_maps_figure([])


def test_figures_render_on_agg_without_touching_the_global_backend(blocks_df):
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    backend_before = matplotlib.get_backend()
    figure = build_model_figure(blocks_df, "Small")
    assert isinstance(figure.canvas, FigureCanvasAgg)
    assert matplotlib.get_backend() == backend_before


def test_every_metric_label_renders():
    from matplotlib.mathtext import MathTextParser

    from repro.plots import METRIC_LABELS

    parser = MathTextParser("agg")
    for title, ylabel in METRIC_LABELS.values():
        for text in (title, ylabel):
            parser.parse(text, dpi=72)  # raises ValueError on broken mathtext
