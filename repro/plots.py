"""Figures of the study: Fig. 5.1 (one model over depth), Fig. 5.2 (models aligned at the end), Fig. 2.1-like
feature-map panels.

Each figure has a ``build_*`` function that returns a ``matplotlib.figure.Figure`` (for tests and
notebooks) and a ``plot_*`` function that builds it and writes ``out_stem + '.png'`` (300 dpi) and
``out_stem + '.pdf'``. Figures are made without pyplot, each on its own Agg canvas: no display is
ever opened, no global backend is switched (importing this module leaves a notebook's backend alone)
and no figure lingers in pyplot's registry. Sizes target one journal column (3.5 in) at 7 pt text.

Input is the tidy table of ``repro.aggregate.blocks_frame``.
"""
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

COLUMN_WIDTH_INCHES = 3.5
DPI = 300
DEFAULT_METRICS = ("frobenius", "mse", "sre", "ssim")

# Fig. 5.1 caption: "random perturbations to the input (orange) and ... adversarial perturbations (blue)".
PERTURBATION_COLOURS = {"adversarial": "tab:blue", "random": "tab:orange"}
# Fig. 5.2 caption: "adversarial and random noise perturbations are shown as solid and dashed lines".
PERTURBATION_LINESTYLES = {"adversarial": "-", "random": "--"}
PERTURBATION_ORDER = ("adversarial", "random")
MODEL_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                 "tab:gray", "tab:blue", "tab:orange")
GROUP_SEPARATOR_COLOUR = "0.6"
# Fig. 5.2 lists the baseline first, then the denoising models; other models follow by name.
PAPER_MODEL_ORDER = ("ResNet", "ResNetDenoise", "ResNeXtDenoiseAll")

# metric name (as in repro.engines.tensorflow.metrics.METRICS) -> (panel title, y-axis label). Unknown names fall back to
# themselves. "sre" is the image-similarity-measures form that made the paper's figures; "sre_eq" is
# the paper's equation (SPEC §5).
METRIC_LABELS = {
    "frobenius": ("Euclidean", r"Frobenius distance $\|A-B\|_F$"),
    "mse": ("MSE", "mean squared error"),
    "rmse": ("RMSE", "root mean squared error"),
    "sre": ("SRE", "SRE [dB]"),
    "sre_eq": ("SRE (paper eq.)", "SRE [dB]"),
    "ssim": ("SSIM", "SSIM (1 = identical)"),
    "psnr": ("PSNR", "PSNR [dB]"),
    "uiq": ("UIQ", "UIQ (1 = identical)"),
    "cosine": ("Cosine similarity", "cosine similarity"),
    "rel_l2": ("Relative L2", r"$\|A-B\|_F \,/\, \|A\|_F$"),
    "fsim": ("FSIM", "FSIM (1 = identical)"),
    "issm": ("ISSM", "ISSM"),
    "amplification": ("Amplification", "map change / input change"),
    "cka": ("Linear CKA", "CKA (1 = same)"),
}

# 7 pt text reads at one-column width; thin lines keep 50-block curves apart.
PAPER_STYLE = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "figure.titlesize": 8,
    "figure.labelsize": 7,
    "lines.linewidth": 1.0,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable and searchable
    "savefig.dpi": DPI,
}

REQUIRED_COLUMNS = ("model", "perturbation", "metric", "block_index", "depth_from_end", "group",
                    "mean", "ci95_low", "ci95_high")


def metric_labels(metric):
    """(panel title, y-axis label) for a metric name."""
    return METRIC_LABELS.get(metric, (metric, metric))


def panel_letter(index):
    return f"({'abcdefghijklmnopqrstuvwxyz'[index]})"


def save_figure(figure, out_stem):
    """Write ``out_stem.png`` (300 dpi) and ``out_stem.pdf``; returns both paths.

    Creation dates and software tags are left out so the same data gives the same bytes.
    """
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(PAPER_STYLE):
        for suffix, metadata in ((".png", {"Software": None}), (".pdf", {"CreationDate": None, "Producer": None})):
            path = out_stem.with_name(out_stem.name + suffix)
            # Constrained layout already fits labels and the outside legend; bbox_inches="tight" would
            # only cost a second draw per file.
            figure.savefig(path, dpi=DPI, metadata=metadata)
            paths.append(path)
    return paths


def _check_frame(blocks_df):
    missing = [column for column in REQUIRED_COLUMNS if column not in blocks_df.columns]
    if missing:
        raise ValueError(f"blocks table lacks columns {missing}: build it with repro.aggregate.blocks_frame")
    duplicated = blocks_df.duplicated(["model", "perturbation", "metric", "block_index"])
    if duplicated.any():
        first = blocks_df.loc[duplicated, ["model", "perturbation", "metric", "block_index"]].iloc[0].tolist()
        raise ValueError(f"blocks table has more than one row for {first}: merge the statistics before plotting")


def _new_figure(width, height):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # headless rendering, independent of the session's matplotlib backend
    return figure


def _panel_grid(figure, n_panels):
    n_columns = 2 if n_panels > 1 else 1
    n_rows = math.ceil(n_panels / n_columns)
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return axes[:n_panels]


def _panel_titles(metrics, titles):
    if titles is None:
        return [metric_labels(metric)[0] for metric in metrics]
    if isinstance(titles, dict):
        return [titles.get(metric, metric_labels(metric)[0]) for metric in metrics]
    titles = list(titles)
    if len(titles) != len(metrics):
        raise ValueError(f"got {len(titles)} titles for {len(metrics)} metrics: give one title per metric")
    return titles


def _note_missing(axis, metric, what):
    """Leave an empty panel with a note instead of failing the whole figure."""
    warnings.warn(f"metric {metric!r} has no rows for {what}: its panel is left empty", stacklevel=3)
    axis.text(0.5, 0.5, f"no data for\n{metric!r}", transform=axis.transAxes, ha="center", va="center",
              color="0.4", gid="missing_note")
    axis.set_xticks([])
    axis.set_yticks([])


def _label_panel(axis, index, title, metric):
    axis.set_title(f"{panel_letter(index)} {title}", loc="left", fontweight="bold")
    axis.set_ylabel(metric_labels(metric)[1])


def group_boundaries(block_rows):
    """x positions halfway between the last block of one group and the first of the next.

    ``block_rows`` is sorted by block_index and has columns block_index and group.
    """
    index = block_rows["block_index"].to_numpy()
    group = block_rows["group"].to_numpy()
    changes = np.flatnonzero(group[1:] != group[:-1])
    return (index[changes] + index[changes + 1]) / 2.0


def depth_ticks(n_blocks, n_bins=5):
    """Integer ticks for blocks 1..n_blocks: round numbers, with the first block (1) always marked."""
    ticks = MaxNLocator(nbins=n_bins, integer=True).tick_values(1, n_blocks)
    ticks = [int(t) for t in ticks if 1 < t <= n_blocks]
    return [1] + ticks


def ordered_models(models):
    """The paper's model order (Fig. 5.2), then any other models by name."""
    models = set(models)
    return [m for m in PAPER_MODEL_ORDER if m in models] + sorted(models - set(PAPER_MODEL_ORDER))


def _model_blocks(blocks_df, model):
    """One row per block of a model (block_index, depth_from_end, group), sorted by depth."""
    rows = blocks_df[blocks_df["model"] == model][["block_index", "depth_from_end", "group"]]
    return rows.drop_duplicates("block_index").sort_values("block_index").reset_index(drop=True)


def _series(blocks_df, model, perturbation, metric):
    """Rows of one curve, sorted by block_index; NaN means stay (they draw as gaps)."""
    selected = blocks_df[(blocks_df["model"] == model) & (blocks_df["perturbation"] == perturbation)
                         & (blocks_df["metric"] == metric)]
    return selected.sort_values("block_index")


def _as_float(values):
    return np.asarray(values, dtype=np.float64)


def build_model_figure(blocks_df, model, metrics=DEFAULT_METRICS, titles=None, width=COLUMN_WIDTH_INCHES):
    """Fig. 5.1: per-block mean metric over depth for one model, adversarial (blue) vs random (orange).

    x = block index 1..B; shaded bands are the 95% confidence intervals of the mean over images; thin
    grey vertical lines separate ResNet groups ("Vertical gray lines delineate separation of Resnet
    groups", Fig. 5.1 caption). Metrics absent from the table leave an empty panel with a note.
    """
    _check_frame(blocks_df)
    models = sorted(blocks_df["model"].unique())
    if model not in models:
        raise ValueError(f"model {model!r} is not in the blocks table; it has {models}")
    metrics = list(metrics)
    panel_titles = _panel_titles(metrics, titles)
    blocks = _model_blocks(blocks_df, model)
    boundaries = group_boundaries(blocks)
    n_blocks = int(blocks["block_index"].max())

    with matplotlib.rc_context(PAPER_STYLE):
        n_rows = math.ceil(len(metrics) / 2)
        figure = _new_figure(width, 0.55 + 1.35 * n_rows)
        axes = _panel_grid(figure, len(metrics))
        for index, (axis, metric, title) in enumerate(zip(axes, metrics, panel_titles)):
            _label_panel(axis, index, title, metric)
            if not ((blocks_df["model"] == model) & (blocks_df["metric"] == metric)).any():
                _note_missing(axis, metric, f"model {model!r}")
                continue
            for boundary in boundaries:
                axis.axvline(boundary, color=GROUP_SEPARATOR_COLOUR, linewidth=0.5, zorder=0, gid="group_separator")
            for perturbation in PERTURBATION_ORDER:
                series = _series(blocks_df, model, perturbation, metric)
                if series.empty:
                    continue
                x = series["block_index"].to_numpy()
                colour = PERTURBATION_COLOURS[perturbation]
                axis.fill_between(x, _as_float(series["ci95_low"]), _as_float(series["ci95_high"]),
                                  color=colour, alpha=0.25, linewidth=0, gid=f"ci95_{perturbation}")
                axis.plot(x, _as_float(series["mean"]), color=colour, label=perturbation,
                          gid=f"mean_{perturbation}")
            axis.set_xlim(0.5, n_blocks + 0.5)
            axis.set_xticks(depth_ticks(n_blocks))
        figure.supxlabel("residual block (1 = first, in depth order)")
        handles = [Line2D([], [], color=PERTURBATION_COLOURS[p], label=p) for p in PERTURBATION_ORDER]
        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0, label="95% CI"))
        handles.append(Line2D([], [], color=GROUP_SEPARATOR_COLOUR, linewidth=0.5, label="group boundary"))
        figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False,
                      handlelength=1.6, columnspacing=1.2)
    return figure


def plot_model_figure(blocks_df, model, out_stem, metrics=DEFAULT_METRICS, titles=None):
    """Build Fig. 5.1 for ``model`` and write it as ``out_stem.png`` and ``out_stem.pdf``."""
    return save_figure(build_model_figure(blocks_df, model, metrics, titles), out_stem)


def build_models_figure(blocks_df, metrics=DEFAULT_METRICS, models=None, titles=None, show_ci=False,
                        group_separators="all", width=COLUMN_WIDTH_INCHES):
    """Fig. 5.2: the metrics of several models aligned at their final block.

    x = −depth_from_end, so every network's final block sits at 0 and networks of different depth
    share the end of the axis ("The x-axis aligns the final block of each network", Fig. 5.2 caption).
    One colour per model; solid = adversarial, dashed = random. ``models`` picks and orders the models
    (default: all, in the paper's order). ``group_separators``: 'all' draws boundaries shared by every
    model as solid grey lines, those of one model as dotted lines in its colour and those of several as
    dotted grey; 'shared' only the first kind; 'none' nothing. ``show_ci`` adds 95% CI bands.
    """
    if group_separators not in ("all", "shared", "none"):
        raise ValueError(f"group_separators must be 'all', 'shared' or 'none', got {group_separators!r}")
    _check_frame(blocks_df)
    available = ordered_models(blocks_df["model"].unique())
    models = available if models is None else list(models)
    unknown = [model for model in models if model not in available]
    if unknown:
        raise ValueError(f"models {unknown} are not in the blocks table; it has {available}")
    if not models:
        raise ValueError("no model to plot: the blocks table is empty")
    metrics = list(metrics)
    panel_titles = _panel_titles(metrics, titles)
    colours = {model: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, model in enumerate(models)}
    boundaries = {model: _aligned_boundaries(_model_blocks(blocks_df, model)) for model in models}
    deepest = max(int(_model_blocks(blocks_df, model)["depth_from_end"].max()) for model in models)

    with matplotlib.rc_context(PAPER_STYLE):
        n_rows = math.ceil(len(metrics) / 2)
        figure = _new_figure(width, 0.7 + 1.35 * n_rows)
        axes = _panel_grid(figure, len(metrics))
        for index, (axis, metric, title) in enumerate(zip(axes, metrics, panel_titles)):
            _label_panel(axis, index, title, metric)
            if not (blocks_df["model"].isin(models) & (blocks_df["metric"] == metric)).any():
                _note_missing(axis, metric, f"models {models}")
                continue
            _draw_aligned_boundaries(axis, boundaries, colours, group_separators)
            _draw_aligned_curves(axis, blocks_df, models, metric, colours,
                                 bands=PERTURBATION_ORDER if show_ci else (), labelled=True)
            axis.set_xlim(-deepest - 0.5, 0.5)
            axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        figure.supxlabel("blocks before the end of the network (0 = final block)")
        model_handles = [Line2D([], [], color=colours[model], label=model) for model in models]
        style_handles = [Line2D([], [], color="0.2", linestyle=PERTURBATION_LINESTYLES[p], label=p)
                         for p in PERTURBATION_ORDER]
        _legend_in_rows(figure, [model_handles, style_handles], max_columns=3)
    return figure


def plot_models_figure(blocks_df, out_stem, metrics=DEFAULT_METRICS, models=None, titles=None, show_ci=False,
                       group_separators="all"):
    """Build Fig. 5.2 and write it as ``out_stem.png`` and ``out_stem.pdf``."""
    return save_figure(build_models_figure(blocks_df, metrics, models, titles, show_ci, group_separators), out_stem)


def _draw_aligned_curves(axis, rows, models, metric, colours, bands=(), gid_suffix="", labelled=False):
    """Each model's mean of ``metric`` per block at x = −depth_from_end (final blocks aligned at 0, Fig. 5.2), one
    colour per model, adversarial solid and random dashed; the perturbations in ``bands`` with their 95% band."""
    for model in models:
        for perturbation in PERTURBATION_ORDER:
            series = _series(rows, model, perturbation, metric)
            if series.empty:
                continue
            x = -series["depth_from_end"].to_numpy()
            if perturbation in bands:
                axis.fill_between(x, _as_float(series["ci95_low"]), _as_float(series["ci95_high"]),
                                  color=colours[model], alpha=0.15, linewidth=0)
            axis.plot(x, _as_float(series["mean"]), color=colours[model],
                      linestyle=PERTURBATION_LINESTYLES[perturbation], linewidth=0.9,
                      label=f"{model} {perturbation}" if labelled else None,
                      gid=f"mean_{perturbation}_{model}{gid_suffix}")


def _aligned_boundaries(blocks):
    """Group boundaries of one model on the aligned axis x = −depth_from_end (halfway between blocks)."""
    x = -blocks["depth_from_end"].to_numpy()
    group = blocks["group"].to_numpy()
    changes = np.flatnonzero(group[1:] != group[:-1])
    return [float((x[i] + x[i + 1]) / 2.0) for i in changes]


def _draw_aligned_boundaries(axis, boundaries, colours, mode):
    if mode == "none":
        return
    models_at = {}
    for model, positions in boundaries.items():
        for position in positions:
            models_at.setdefault(position, []).append(model)
    for position, owners in sorted(models_at.items()):
        if len(owners) == len(boundaries):
            axis.axvline(position, color=GROUP_SEPARATOR_COLOUR, linewidth=0.5, zorder=0, gid="group_separator")
        elif mode == "all":
            colour = colours[owners[0]] if len(owners) == 1 else GROUP_SEPARATOR_COLOUR
            axis.axvline(position, color=colour, linewidth=0.5, linestyle=":", alpha=0.7, zorder=0,
                         gid="group_separator_" + "+".join(owners))


def _legend_in_rows(figure, handle_rows, max_columns):
    """One figure legend above the panels with each list of handles on its own row(s).

    Matplotlib fills legends column by column, so the grid is padded with invisible entries and
    transposed to make rows come out as given.
    """
    n_columns = min(max_columns, max(len(row) for row in handle_rows))
    grid = []
    for row in handle_rows:
        for start in range(0, len(row), n_columns):
            chunk = row[start:start + n_columns]
            grid.append(chunk + [Line2D([], [], linestyle="none", label=" ")] * (n_columns - len(chunk)))
    column_major = [grid[r][c] for c in range(n_columns) for r in range(len(grid))]
    figure.legend(handles=column_major, loc="outside upper center", ncols=n_columns, frameon=False,
                  handlelength=2.0, columnspacing=1.2)


def build_feature_maps_figure(panels, title=None, width=COLUMN_WIDTH_INCHES, cmap="viridis"):
    """Fig. 2.1-like: one row per feature map, columns clean / random / adversarial on one colour scale.

    ``panels`` is a list of dicts {'label': str, 'clean': H×W, 'random': H×W, 'adversarial': H×W}.
    Sharing the colour scale within a row is what makes the three maps comparable by eye.
    """
    panels = list(panels)
    if not panels:
        raise ValueError("plot_feature_maps needs at least one panel dict with label, clean, random, adversarial")
    columns = ("clean", "random", "adversarial")
    maps = [_checked_maps(number, panel, columns) for number, panel in enumerate(panels)]

    with matplotlib.rc_context(PAPER_STYLE):
        figure = _new_figure(width, 0.35 + 1.25 * len(panels))
        rows = figure.subfigures(len(panels), 1, squeeze=False).ravel()
        for number, (row, panel, row_maps) in enumerate(zip(rows, panels, maps)):
            low, high = _shared_limits(row_maps)
            axes = row.subplots(1, 3)
            for axis, column, image in zip(axes, columns, row_maps):
                artist = axis.imshow(image, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                for spine in axis.spines.values():
                    spine.set_visible(True)
                    spine.set_linewidth(0.4)
                if number == 0:  # column headings once, on the first row
                    axis.set_title(column)
            colourbar = row.colorbar(artist, ax=list(axes), shrink=0.9, pad=0.02, aspect=12)
            colourbar.ax.tick_params(labelsize=5.5)
            row.suptitle(str(panel.get("label", "")), fontsize=6.5)
        if title:
            figure.suptitle(title)
    return figure


def _checked_maps(number, panel, columns):
    missing = [column for column in columns if column not in panel]
    if missing:
        raise ValueError(f"feature-map panel {number} lacks {missing}: give clean, random and adversarial maps")
    maps = [np.asarray(panel[column], dtype=np.float64) for column in columns]
    shapes = {image.shape for image in maps}
    if len(shapes) != 1 or maps[0].ndim != 2:
        raise ValueError(f"feature-map panel {number} needs three 2-D maps of one shape, got {[m.shape for m in maps]}")
    return maps


def _shared_limits(maps):
    finite = np.concatenate([image[np.isfinite(image)] for image in maps])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if low == high:  # a constant map (e.g. a dead ReLU channel) still needs a non-empty colour range
        low, high = low - 0.5, high + 0.5
    return low, high


def plot_feature_maps(panels, out_stem, title=None):
    """Build the feature-map figure and write it as ``out_stem.png`` and ``out_stem.pdf``."""
    return save_figure(build_feature_maps_figure(panels, title), out_stem)


def build_contrasts_figure(contrasts_df, metrics, column="mean", significant="significant",
                           xlabel="blocks before the end of the network (0 = final block)",
                           ylabel="adversarial − random, per image", width=COLUMN_WIDTH_INCHES, legend_columns=3):
    """The paired contrasts (`repro.aggregate.contrasts_frame`, or the denoising effects of
    `repro.aggregate.denoising_frame`): per metric a panel, per model the mean paired difference at each block with
    its 95% t interval, aligned at the final block as Fig. 5.2; filled markers where the Holm-adjusted paired t-test
    is significant (p < 0.05), open ones elsewhere; a zero line."""
    metrics = [metric for metric in metrics if (contrasts_df["metric"] == metric).any()]
    models = ordered_models(contrasts_df["model"].unique())
    colours = {model: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, model in enumerate(models)}
    with matplotlib.rc_context(PAPER_STYLE):
        n_rows = max(1, math.ceil(len(metrics) / 2))
        figure = _new_figure(width, 0.7 + 1.35 * n_rows)
        axes = _panel_grid(figure, max(1, len(metrics)))
        for index, (axis, metric, title) in enumerate(zip(axes, metrics, _panel_titles(metrics, None))):
            _label_panel(axis, index, title, metric)
            axis.axhline(0.0, color="0.6", linewidth=0.5)
            for model in models:
                rows = contrasts_df[(contrasts_df["model"] == model) & (contrasts_df["metric"] == metric)]
                rows = rows.sort_values("depth_from_end", ascending=False)
                if rows.empty:
                    continue
                x = -rows["depth_from_end"].to_numpy()
                axis.fill_between(x, _as_float(rows["ci95_low"]), _as_float(rows["ci95_high"]), color=colours[model],
                                  alpha=0.15, linewidth=0)
                axis.plot(x, _as_float(rows[column]), color=colours[model], linewidth=0.9, label=model)
                marked = rows[significant].astype(bool).to_numpy()
                axis.plot(x[marked], _as_float(rows[column])[marked], "o", color=colours[model], markersize=2.5,
                          gid=f"significant_{model}")
                axis.plot(x[~marked], _as_float(rows[column])[~marked], "o", markerfacecolor="none",
                          color=colours[model], markersize=2.5, markeredgewidth=0.5)
            axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        figure.supxlabel(xlabel)
        figure.supylabel(ylabel)
        handles = [Line2D([], [], color=colours[model], label=model) for model in models]
        handles += [Line2D([], [], marker="o", linestyle="", color="0.2", markersize=3, label="Holm p < 0.05"),
                    Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.2", markersize=3,
                           label="not significant")]
        _legend_in_rows(figure, [handles], max_columns=legend_columns)
    return figure


def plot_contrasts_figure(contrasts_df, out_stem, metrics, **options):
    """Build the contrasts figure and write it as ``out_stem.png`` and ``out_stem.pdf``."""
    return save_figure(build_contrasts_figure(contrasts_df, metrics, **options), out_stem)


def plot_denoising_figure(denoising_df, out_stem, metrics):
    """The denoising effects (`repro.aggregate.denoising_frame`) drawn as the contrasts are, one series per model and
    perturbation, at the operations' taps; written as ``out_stem.png`` and ``out_stem.pdf``."""
    series = denoising_df.assign(model=denoising_df["model"] + " · " + denoising_df["perturbation"])
    return save_figure(build_contrasts_figure(
        series, metrics, xlabel="taps before the end of the network (0 = final tap)",
        ylabel="after − before denoising, per image", legend_columns=2), out_stem)


def build_sweep_figure(sweep_df, metrics, settings, width_per_setting=1.9):
    """A sweep's grid (sweep.csv, `repro.evaluate.run_sweep`): a row of panels per metric, a column per setting
    (``settings``: the ``setting`` values in order), blocks on x aligned at the final block as Fig. 5.2; per model
    one colour, adversarial solid with its 95% band, random dashed; the y axis shared along a row, so the settings
    compare at a glance."""
    for setting in settings:
        _check_frame(sweep_df[sweep_df["setting"] == setting])
    metrics = [metric for metric in metrics if (sweep_df["metric"] == metric).any()]
    models = ordered_models(sweep_df["model"].unique())
    colours = {model: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, model in enumerate(models)}
    with matplotlib.rc_context(PAPER_STYLE):
        figure = _new_figure(0.6 + width_per_setting * len(settings), 0.8 + 1.3 * max(1, len(metrics)))
        axes = figure.subplots(max(1, len(metrics)), len(settings), squeeze=False, sharey="row")
        for row, metric in enumerate(metrics):
            for column, setting in enumerate(settings):
                axis = axes[row][column]
                if row == 0:
                    axis.set_title(setting, fontweight="bold")
                if column == 0:
                    axis.set_ylabel(metric_labels(metric)[1])
                rows = sweep_df[(sweep_df["setting"] == setting) & (sweep_df["metric"] == metric)]
                _draw_aligned_curves(axis, rows, models, metric, colours, bands=("adversarial",),
                                     gid_suffix="_" + setting)
                axis.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        figure.supxlabel("blocks before the end of the network (0 = final block)")
        handles = [Line2D([], [], color=colours[model], label=model) for model in models]
        handles += [Line2D([], [], color="0.2", linestyle=PERTURBATION_LINESTYLES[p], label=p)
                    for p in PERTURBATION_ORDER]
        _legend_in_rows(figure, [handles], max_columns=5)
    return figure


def plot_sweep_figure(sweep_df, out_stem, metrics, settings):
    """Build the sweep's grid figure and write it as ``out_stem.png`` and ``out_stem.pdf``."""
    return save_figure(build_sweep_figure(sweep_df, metrics, settings), out_stem)
