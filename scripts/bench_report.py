#!/usr/bin/env python
"""Size and speed of the study's report (repro/report.py): how large is report.html, how long does it take to
write, and how long does it take headless Chromium to open it and draw every figure (offline, from disk).

    python scripts/bench_report.py                                   # a synthetic full-size run: 3 models × 50 blocks × 10 metrics
    python scripts/bench_report.py --page results/demo/report.html --screenshot docs/report_demo.png    # an existing page

Without ``--page`` it fabricates an output folder in the real formats — blocks.csv, summary.csv, images.csv,
manifest.json, contrasts.csv, denoising.csv and feature-map panels, with the column lists of `repro.aggregate` and
`repro.report` and the feature maps drawn by `repro.plots` — of the paper's size, and writes its report. The load
time is the page's own clock from navigation to the end of the first drawing of every figure, median (and
slowest) of ``--loads`` loads, each in a new browser. ``--markdown FILE`` appends the figures with the command, machine and
date to FILE (docs/performance.md). Needs Chromium and chromedriver (see scripts/report_browser.py).
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from repro import aggregate, report  # noqa: E402
from repro.protocol import DEFAULT_METRICS  # noqa: E402

from bench_common import append_markdown, best_of  # noqa: E402

PAPER_MODELS = ("ResNet", "ResNetDenoise", "ResNeXtDenoiseAll")
RESNET152_GROUPS = (3, 8, 36, 3)          # ResNet-152's blocks per group: 50 in all
FEATURE_MAP_PANELS = 8


def group_sizes(blocks):
    """ResNet-152's blocks per group (3, 8, 36, 3) scaled to ``blocks`` blocks (4 or more: one per group at least)."""
    sizes = [max(1, round(count * blocks / sum(RESNET152_GROUPS))) for count in RESNET152_GROUPS]
    sizes[2] += blocks - sum(sizes)
    return sizes


def block_table(model, blocks):
    """The blocks of a ResNet-like network of ``blocks`` blocks, as `repro.taps.block_table` describes them."""
    rows = []
    for group, size in enumerate(group_sizes(blocks)):
        for block in range(size):
            index = len(rows) + 1
            rows.append(dict(model=model, block_index=index, depth_from_end=blocks - index, group=group, block=block,
                             tap="group{}/block{}/block_output".format(group, block), channels=256 * 2 ** group,
                             height=56 // 2 ** group, width=56 // 2 ** group))
    return rows


def blocks_rows(rng, model, blocks, metrics, images):
    """blocks.csv's rows of one model: a curve per perturbation and metric, with intervals and counts."""
    rows = []
    for row in block_table(model, blocks):
        for perturbation in ("adversarial", "random"):
            for metric in metrics:
                mean, std = rng.gamma(2.0, 1.5 if perturbation == "adversarial" else 0.5), rng.gamma(2.0, 0.2)
                half_width = 1.984 * std / np.sqrt(images)
                rows.append(dict(row, perturbation=perturbation, metric=metric, mean=mean, std=std,
                                 ci95_low=mean - half_width, ci95_high=mean + half_width,
                                 n_values=images * row["channels"] - 3, n_images=images, n_excluded=3))
    return rows


def paired_test_columns(rng, images):
    """The statistics columns shared by contrasts.csv and denoising.csv (paired differences and their tests)."""
    mean, sd = rng.normal(0.5, 1.0), rng.gamma(2.0, 0.5)
    p_t, p_wilcoxon = rng.uniform(0, 0.2), rng.uniform(0, 0.2)
    return dict(n=images - 1, n_left_out=1, mean=mean, sd=sd, ci95_low=mean - 0.2 * sd, ci95_high=mean + 0.2 * sd,
                t=mean / sd * np.sqrt(images), p_t=p_t, p_t_holm=min(1.0, 3 * p_t), wilcoxon_statistic=rng.uniform(0, 2000),
                p_wilcoxon=p_wilcoxon, p_wilcoxon_holm=min(1.0, 3 * p_wilcoxon), significant=bool(3 * p_t < 0.05))


def contrasts_rows(rng, model, blocks, metrics, images):
    return [dict({key: row[key] for key in ("model", "block_index", "depth_from_end", "tap", "channels", "height",
                                            "width")}, metric=metric, contrast="adversarial-random",
                 **paired_test_columns(rng, images)) for row in block_table(model, blocks) for metric in metrics]


def denoising_rows(rng, model, blocks, metrics, images, every):
    """A denoising operation after every ``every``-th block (0: the model has none)."""
    rows = []
    for row in block_table(model, blocks):
        if not every or row["block_index"] % every:
            continue
        for perturbation in ("adversarial", "random"):
            for metric in metrics:
                rows.append(dict(model=model, perturbation=perturbation, metric=metric,
                                 operation="group{}_denoise/add".format(row["group"]), block_index=row["block_index"],
                                 depth_from_end=row["depth_from_end"], tap_before=row["tap"],
                                 tap_after=row["tap"].replace("block_output", "denoised"), **paired_test_columns(rng, images)))
    return rows


def images_frame(rng, models, images, classes=1000):
    rows = []
    for model in models:
        for image in range(images):
            label, target = int(rng.integers(classes)), int(rng.integers(classes))
            adversarial = target if rng.uniform() < 0.3 else label
            rows.append(dict(model=model, image=image, path="val/n{:08d}/{:05d}.JPEG".format(label, image), label=label,
                             target=target, pred_clean=label, pred_random=label, pred_adversarial=adversarial,
                             attack_success=adversarial == target, error=None))
    return pd.DataFrame(rows)


def write_feature_maps(rng, folder, model):
    from repro import plots
    panels = [dict(label="group{}/block0 ch {}".format(k % 4, k), clean=rng.random((14, 14)),
                   random=rng.random((14, 14)), adversarial=rng.random((14, 14))) for k in range(FEATURE_MAP_PANELS)]
    plots.plot_feature_maps(panels, folder / "feature_maps_{}".format(model), title="{}: image 0".format(model))


def fabricate_run(folder, models=PAPER_MODELS, blocks=50, metrics=DEFAULT_METRICS, images=100, optional=True,
                  feature_maps=True, seed=0):
    """An output folder in the real formats, of the given size, with made-up numbers (timings and sizes depend on
    the shape of the tables, not their values). ``optional``: also contrasts.csv and denoising.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks_table = pd.DataFrame([row for model in models for row in blocks_rows(rng, model, blocks, metrics, images)])
    blocks_table[list(aggregate.BLOCKS_FRAME_COLUMNS)].to_csv(folder / "blocks.csv", index=False)
    image_table = images_frame(rng, models, images)
    image_table.to_csv(folder / "images.csv", index=False)
    aggregate.summary_frame(image_table.drop(columns=["path", "error"])).to_csv(folder / "summary.csv", index=False)
    if optional:
        contrasts = [row for model in models for row in contrasts_rows(rng, model, blocks, metrics, images)]
        pd.DataFrame(contrasts)[list(report.CONTRASTS_COLUMNS)].to_csv(folder / "contrasts.csv", index=False)
        denoising = [row for index, model in enumerate(models)
                     for row in denoising_rows(rng, model, blocks, metrics, images, every=(0, max(1, blocks // 4), 1)[index % 3])]
        pd.DataFrame(denoising)[list(report.DENOISING_COLUMNS)].to_csv(folder / "denoising.csv", index=False)
    if feature_maps:
        for model in models:
            write_feature_maps(rng, folder, model)
    manifest = {"command": "scripts/bench_report.py (fabricated)", "images_selected": images,
                "config": {"epsilon": 16.0, "attack_iterations": 100, "step_size_used": 1.0, "noise": "uniform",
                           "tap": "block_output", "metrics": list(metrics), "seed": 0,
                           "data": {"dataset": "fabricated"}},
                "models": {model: {"zoo": "imagenet", "depth": 152, "checkpoint": model + ".npz", "sha256": "0" * 64}
                           for model in models},
                "engine": {"framework": "none (fabricated tables)", "device": "cpu", "precision": "float32"},
                "packages": {"python": sys.version.split()[0]}, "git": {"commit": None}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def load_times(page, loads, screenshot=None, screenshot_height=None):
    """Seconds from navigation to every figure drawn, and to the first paint of text, for ``loads`` offline loads
    of ``page``, each in a new browser (a fresh profile: nothing compiled or cached by an earlier load, as for a
    reader opening the file)."""
    import report_browser
    times, paints = [], []
    for load in range(loads):
        session = report_browser.start()
        try:
            report_browser.go_offline(session)
            times.append(report_browser.open_page(session, page))
            paints.append(report_browser.first_contentful_paint(session))
            errors = report_browser.console_errors(session)
            if errors:
                raise SystemExit("the page logged errors: {}".format(errors))
            if screenshot and load == loads - 1:
                report_browser.screenshot(session, screenshot, screenshot_height)
        finally:
            session.quit()
    return times, paints


def shrink_png(path, colours=256):
    """A screenshot for the README: the same picture in a palette of ``colours`` (a fraction of the bytes)."""
    from PIL import Image
    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return Path(path).stat().st_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", help="measure this existing report.html instead of a fabricated full-size run")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=len(DEFAULT_METRICS))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="writes of the report timed (best of, after a warm-up)")
    parser.add_argument("--screenshot", help="save a screenshot of the page (palette PNG) to this file")
    parser.add_argument("--screenshot-height", type=int, default=1500)
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    parser.add_argument("--note", default="", help="a remark for the Markdown entry (e.g. what else ran)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.page:
            page, what, written = Path(args.page), "the report {}".format(args.page), None
        else:
            models = [PAPER_MODELS[k % 3] + ("" if k < 3 else str(k)) for k in range(args.models)]
            metrics = (list(DEFAULT_METRICS) + ["extra{}".format(k) for k in range(args.metrics)])[:args.metrics]
            folder = fabricate_run(Path(scratch) / "run", models, args.blocks, metrics, args.images)
            written = best_of(lambda: report.write_report(folder), args.repeats)
            page = folder / report.REPORT_NAME
            what = "a fabricated run of {} models × {} blocks × {} metrics, {} images (with contrasts.csv, " \
                   "denoising.csv, {} feature-map panels per model)".format(
                       args.models, args.blocks, args.metrics, args.images, FEATURE_MAP_PANELS)
        size = page.stat().st_size
        times, paints = load_times(page, args.loads, args.screenshot, args.screenshot_height)
    rows = [("page size", "{:.2f} MB".format(size / 1e6), "< 10 MB"),
            ("load and draw every figure, median of {} (slowest)".format(args.loads),
             "{:.2f} s ({:.2f} s)".format(statistics.median(times), max(times)), "< 2 s"),
            ("first paint of the page's text, median (slowest)",
             "{:.2f} s ({:.2f} s)".format(statistics.median(paints), max(paints)), "")]
    if written is not None:
        rows.insert(1, ("write report.html, best of {}".format(args.repeats), "{:.2f} s".format(written), ""))
    table = "| quantity | measured | target |\n|---|---|---|\n" + "\n".join("| {} | {} | {} |".format(*row) for row in rows)
    print(what)
    print(table)
    if args.screenshot:
        print("screenshot: {} ({:.0f} kB)".format(args.screenshot, shrink_png(args.screenshot) / 1e3))
    if args.markdown:
        append_markdown(args.markdown, "report", "bench_report.py", argv, what + "; headless Chromium, offline, "
                        "from disk, a new browser per load; load = navigation to every figure drawn" +
                        ("; " + args.note if args.note else ""), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
