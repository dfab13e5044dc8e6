"""The study's report: one self-contained ``report.html`` per output folder, opened in any browser.

    python -m repro report OUT [--validate DIR ...]          (or: repro-report OUT …)

A finished study is tables (blocks.csv, summary.csv, images.csv), a manifest and figure files; the report shows
them on one page: the run's question and settings, the summary table, interactive per-block curves with their 95%
bands (hover a point for its block, C×H×W, mean, interval and n; switch the metric; show one model or all; hide a
model by its legend entry), the paired contrasts and the denoising-block effect where the run has them
(contrasts.csv, denoising.csv), the feature-map panels, validation results (``--validate``), and links to the files.

A report renders the tables; it never computes numbers of its own (STYLE.md): the page embeds the tables' cells
as JSON, exactly as the CSV files hold them, and its script draws those cells (plotly) without arithmetic on
them. Everything is inline — plotly.js, the script, the styles, the feature maps as data: URIs — so the page
opens from disk with no network, and can be mailed or attached to a paper's supplement.

Imports no engine, and plotly and Jinja2 only when a page is made, so that the commands start at once.
"""
import argparse
import base64
import json
import math
import sys
from pathlib import Path
from urllib.parse import quote

if __package__ in (None, ""):
    # Run as a script: the repository on the path, not repro/ itself (whose modules would shadow others by name).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from repro import cli
from repro.fileio import atomic_write_text

REPORT_NAME = "report.html"
RUN_TABLES = ("blocks.csv", "summary.csv", "images.csv")
"""The tables every study writes (`repro.runner.write_tables`); blocks.csv is the one a report cannot do without."""
CONTRASTS_COLUMNS = (
    "model", "metric", "contrast", "block_index", "depth_from_end", "tap", "channels", "height", "width", "n",
    "n_left_out", "mean", "sd", "ci95_low", "ci95_high", "t", "p_t", "p_t_holm", "wilcoxon_statistic", "p_wilcoxon",
    "p_wilcoxon_holm", "significant")
"""contrasts.csv, when a run has it: the paired difference adversarial − random per block, with its tests."""
DENOISING_COLUMNS = (
    "model", "perturbation", "metric", "operation", "block_index", "depth_from_end", "tap_before", "tap_after", "n",
    "n_left_out", "mean", "sd", "ci95_low", "ci95_high", "t", "p_t", "p_t_holm", "wilcoxon_statistic", "p_wilcoxon",
    "p_wilcoxon_holm", "significant")
"""denoising.csv, when a run has it: the change of each metric across each denoising operation, with its tests."""
OPTIONAL_TABLES = {"contrasts": ("contrasts.csv", CONTRASTS_COLUMNS), "denoising": ("denoising.csv", DENOISING_COLUMNS)}
IMAGE_ROWS_EMBEDDED_AT_MOST = 20000
"""images.csv grows with the images studied (50,000 per model on all of ImageNet): beyond this many rows the page
links the file instead of embedding it, which keeps a large run's page under 10 MB."""
LINKED_FILES = ("blocks.csv", "summary.csv", "images.csv", "contrasts.csv", "denoising.csv", "manifest.json",
                "fig5_2.png", "fig5_2.pdf", "fig5_1_*.png", "fig5_1_*.pdf", "feature_maps_*.pdf")
"""What the page links to (relative links: they work while the page stays in its folder)."""


def read_table(path):
    """A CSV file as the report shows it: floats parsed with Python's own (correctly rounded) reading, so that
    every number the page embeds is exactly the one the file holds; None for an empty file."""
    import pandas as pd
    try:
        return pd.read_csv(path, float_precision="round_trip")
    except pd.errors.EmptyDataError:
        return None


def read_optional_table(folder, name):
    """contrasts.csv or denoising.csv of ``folder`` (None when the run has none); a table without the columns the
    page draws is an error, not a silently empty figure."""
    file_name, columns = OPTIONAL_TABLES[name]
    path = Path(folder) / file_name
    if not path.is_file():
        return None
    table = read_table(path)
    missing = [column for column in columns if table is not None and column not in table.columns]
    if missing:
        raise cli.UsageError("{} lacks the columns {}: it is not a table this report can show; rebuild it with "
                             "`python -m repro evaluate … --aggregate-only`".format(path, ", ".join(missing)))
    return table


def json_value(value):
    """One cell as JSON: NumPy scalars as plain numbers, a missing cell (NaN, empty) as null, ±∞ — which JSON has
    no number for — as the text the CSV file holds ("inf", "-inf"); floats keep every digit (JSON writes the
    shortest text that reads back as the same float)."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def column_values(series):
    """One column of a table as JSON values (`json_value`)."""
    return [json_value(value) for value in series.astype(object).where(series.notna(), None).tolist()]


def table_json(table):
    """A table as the page embeds it: column-oriented, so a column name is written once, not once per row."""
    return {"columns": [str(column) for column in table.columns], "rows": int(len(table)),
            "data": {str(column): column_values(table[column]) for column in table.columns}}


def data_uri(path, mime="image/png"):
    """The file as a data: URI, which the page shows with no file beside it and no network."""
    return "data:{};base64,{}".format(mime, base64.b64encode(Path(path).read_bytes()).decode("ascii"))


def model_order(names):
    """The paper's order (baseline first, then the denoising models), as the static figures use it."""
    from repro.plots import ordered_models
    return ordered_models(names)


def metric_order(names):
    """The project's metric order (the paper's four first), then metrics this code does not know, by name —
    a table with new metrics (e.g. ``cka``) gets them in its switcher."""
    from repro.protocol import METRIC_NAMES
    names = set(names)
    return [name for name in METRIC_NAMES if name in names] + sorted(names - set(METRIC_NAMES))


def metric_titles(metrics):
    """Each metric's name as the static figures title it (plain text: no TeX in a web page)."""
    from repro.plots import METRIC_LABELS
    return {metric: METRIC_LABELS.get(metric, (metric,))[0] for metric in metrics}


def feature_maps(folder):
    """[(model, data: URI)] of the feature-map panels (``--visualize``) in the folder, in model order."""
    found = {path.stem[len("feature_maps_"):]: path for path in Path(folder).glob("feature_maps_*.png")}
    return [(model, data_uri(found[model])) for model in model_order(found)]


def linked_files(folder):
    """The folder's tables and figure files, by name, for the page's links."""
    folder = Path(folder)
    names = []
    for pattern in LINKED_FILES:
        names += sorted(path.name for path in folder.glob(pattern) if path.is_file())
    return [(name, quote(name)) for name in names]


def validation_results(folders):
    """[{folder, file, table, settings}] for every validate-*.csv in each ``--validate`` folder (as
    `repro.validation` writes them, with the .json beside each for its settings)."""
    results = []
    for folder in folders:
        folder = Path(folder)
        files = sorted(folder.glob("validate-*.csv")) if folder.is_dir() else []
        if not files:
            raise cli.UsageError("--validate {}: no validate-*.csv there; run `python -m repro validate … --out {}` "
                                 "first, or leave --validate out".format(folder, folder))
        for path in files:
            settings = path.with_suffix(".json")
            results.append({"folder": str(folder), "file": path.name, "table": read_table(path),
                            "settings": json.loads(settings.read_text()) if settings.is_file() else {}})
    return results


def read_run(folder, validate=()):
    """Everything a report shows, read from a study's output folder (and ``validate`` folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise cli.UsageError("{} is not a folder: give the --out folder of a study (python -m repro evaluate … "
                             "--out {})".format(folder, folder))
    if (folder / "sweep.csv").is_file():
        settings = sorted(path.parent.name for path in folder.glob("*/blocks.csv"))
        raise cli.UsageError("{} is a sweep: each setting's folder has its own report ({})".format(
            folder, ", ".join(str(folder / name / REPORT_NAME) for name in settings[:3]) + (", …" if len(settings) > 3 else "")))
    if not (folder / "blocks.csv").is_file():
        raise cli.UsageError("{} has no blocks.csv, so it holds no finished study: run `python -m repro evaluate … "
                             "--out {}` (or add --aggregate-only to table the batches already in it)".format(
                                 folder, folder))
    tables = {name[:-len(".csv")]: read_table(folder / name) for name in RUN_TABLES if (folder / name).is_file()}
    if tables.get("blocks") is None or not len(tables["blocks"]):
        raise cli.UsageError("{} is empty: the study tabled no block; re-run it (python -m repro evaluate … --out "
                             "{})".format(folder / "blocks.csv", folder))
    tables.update({name: read_optional_table(folder, name) for name in OPTIONAL_TABLES})
    tables = {name: table for name, table in tables.items() if table is not None}
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    models = model_order(tables["blocks"]["model"].unique())
    metrics = metric_order(set(tables["blocks"]["metric"]).union(
        *(set(tables[name]["metric"]) for name in OPTIONAL_TABLES if name in tables)))
    return {"folder": folder, "tables": tables, "manifest": manifest, "models": models, "metrics": metrics,
            "feature_maps": feature_maps(folder), "links": linked_files(folder),
            "validation": validation_results(validate)}


def embeds_images(run):
    """Whether the page holds images.csv (see IMAGE_ROWS_EMBEDDED_AT_MOST)."""
    return "images" in run["tables"] and len(run["tables"]["images"]) <= IMAGE_ROWS_EMBEDDED_AT_MOST


def embedded_data(run):
    """The JSON the page's script draws from: the tables' cells, the model and metric order, metric titles."""
    tables = dict(run["tables"])
    images = tables.pop("images", None)
    data = {"tables": {name: table_json(table) for name, table in tables.items()},
            "models": run["models"], "metrics": run["metrics"], "metricTitles": metric_titles(run["metrics"])}
    if embeds_images(run):
        data["tables"]["images"] = table_json(images)
    data["validation"] = [{"folder": result["folder"], "file": result["file"], "table": table_json(result["table"])}
                          for result in run["validation"]]
    return data


def script_json(data):
    """JSON that is safe inside <script>: no ``</script>`` or ``<!--`` can end or change the element early
    (``<``, ``>`` and ``&`` only occur inside JSON strings, where the escapes mean the same characters)."""
    text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def template_text(name):
    """A file of repro/templates (package data, so an installed package has it too)."""
    from importlib import resources
    return resources.files("repro").joinpath("templates", name).read_text(encoding="utf-8")


def percent(value, digits=1):
    """A proportion as the page shows it (0.625 → '62.5%'); '–' for a missing one."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        "{:.{}f}%".format(100 * value, digits)


def number(value, digits=4):
    """A number as a table cell shows it ('–' for a missing one); the exact value is in the embedded data."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "{:.{}g}".format(value, digits) if isinstance(value, float) else str(value)


def settings(manifest, models):
    """The run's settings in words, as (label, text) sentences of the page's first paragraph, read off manifest.json
    (what it lacks reads '?': a folder an older version wrote still gets its page)."""
    config, engine, git = manifest.get("config", {}), manifest.get("engine", {}), manifest.get("git") or {}
    data = config.get("data") or {}
    zoos = sorted({str(model.get("zoo", "?")) for model in manifest.get("models", {}).values()}) or ["?"]
    versions = ", ".join("{} {}".format(name, version) for name, version in manifest.get("packages", {}).items()
                         if version)
    return [
        ("Models", "{} ({} zoo)".format(", ".join(models), ", ".join(zoos))),
        ("Images", "{} per model ({})".format(manifest.get("images_selected", "?"),
                                              data.get("dataset") or data.get("folder") or "?")),
        ("Attack", "targeted PGD, ε = {}/255, {} steps of α = {}/255; random noise: {} in the same ε-ball; seed "
                   "{}".format(number(config.get("epsilon", "?")), config.get("attack_iterations", "?"),
                               number(config.get("step_size_used", config.get("attack_step_size", "?"))),
                               config.get("noise", "?"), config.get("seed", "?"))),
        ("Measured", "{} per channel of each block's {}, the clean image's map as the reference; averaged over "
                     "channels, then images".format(", ".join(config.get("metrics", [])) or "?",
                                                    config.get("tap", "?"))),
        ("Engine", "{} on {}, precision {}".format(engine.get("framework", engine.get("engine", "?")),
                                                   engine.get("device", "?"), engine.get("precision", "?"))),
        ("Versions", "{}; git {}{}".format(versions or "?", (git.get("commit") or "?")[:12],
                                           " (with uncommitted changes)" if git.get("dirty") else "")),
        ("Run", "started {}, {} s{}".format(manifest.get("started", "?"), manifest.get("wall_seconds", "?"),
                                            " (tables rebuilt with --aggregate-only)"
                                            if manifest.get("aggregate_only") else "")),
    ]


def summary_rows(run):
    """summary.csv's rows, models in the page's order (the file sorts them by name)."""
    table = run["tables"]["summary"]
    rank = {model: index for index, model in enumerate(run["models"])}
    return sorted(table.to_dict("records"), key=lambda row: rank.get(row["model"], len(rank)))


def render(run, title=None):
    """The page's HTML (a string): the template, filled with the run and its embedded data; ``title`` defaults to
    the folder's name."""
    import jinja2
    import plotly.offline
    from markupsafe import Markup
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters.update(percent=percent, number=number)
    template = environment.from_string(template_text("report.html.j2"))
    rows = {"summary": summary_rows(run)} if "summary" in run["tables"] else {}
    return template.render(
        run=run, manifest=run["manifest"], rows=rows, title=title or run["folder"].resolve().name,
        settings=settings(run["manifest"], run["models"]),
        data_json=Markup(script_json(embedded_data(run))),
        images_embedded=embeds_images(run), optional=[name for name in OPTIONAL_TABLES if name in run["tables"]],
        style=Markup(template_text("report.css")),
        script=Markup(template_text("report.js")),
        plotly_js=Markup(plotly.offline.get_plotlyjs()))


def write_report(folder, validate=(), title=None):
    """Write ``folder``/report.html (atomically: a reader never sees half a page); returns its path."""
    run = read_run(folder, validate)
    return atomic_write_text(Path(folder) / REPORT_NAME, render(run, title))


def write_after_run(folder, title=None):
    """The report at the end of a study (`repro.evaluate`, on the output set it is about to publish). A report
    that cannot be made is one line (`cli.RunFailed`, exit status 1) that says so, and how to make it later."""
    try:
        return write_report(folder, title=title)
    except Exception as error:      # whatever stops the page, the run's results stand (REPRO_DEBUG: the traceback)
        raise cli.RunFailed("the study's tables and figures are in {0}, but its report.html could not be written "
                            "({1}: {2}); fix that and run `python -m repro report {0}`".format(
                                folder, type(error).__name__, error)) from error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="repro-report", description=(
        "Write report.html into a study's output folder: its tables, interactive per-block figures, feature maps "
        "and settings on one self-contained page that opens in any browser with no network."))
    parser.add_argument("out", help="a study's output folder (evaluate's --out); report.html is written into it")
    parser.add_argument("--validate", nargs="+", default=[], metavar="DIR",
                        help="validate's --out folder(s): their results are shown on the page")
    return parser.parse_args(argv)


def main(argv=None):
    """The command line: write the report of an existing output folder."""
    args = parse_args(argv)
    path = write_report(args.out, args.validate)
    print("wrote {} ({:.1f} MB)".format(path, path.stat().st_size / 1e6))
    return 0


def console_main():
    """The ``repro-report`` command."""
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    console_main()
