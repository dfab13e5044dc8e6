"""The study's report (repro/report.py): the page holds exactly the tables' numbers, shows the optional tables when a
run has them, asks for nothing outside itself, fails in one line; and in headless Chromium, offline, it draws every
figure without a console error, hovering a point shows its blocks.csv row, and switching the metric redraws the
curves with that metric's numbers. Without Chromium the browser tests skip, or fail where REPRO_REQUIRE_BROWSER is
set (CI: .ci/run)."""
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import pandas as pd
import pytest

from repro import cli, report, zoo

REPO = zoo.REPO_ROOT
sys.path.insert(0, str(REPO / "scripts"))
import bench_report  # noqa: E402
import report_browser  # noqa: E402

TABLES = ("blocks", "summary", "images", "contrasts", "denoising")
RESOURCE_ATTRIBUTES = {"script": "src", "img": "src", "link": "href", "iframe": "src", "source": "src",
                       "video": "src", "audio": "src", "embed": "src", "object": "data"}


# --- reading a page back -----------------------------------------------------------------------------------------

def embedded(page):
    """The JSON the page's script draws from (#report-data)."""
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page.read_text(), re.S)
    assert match, "no #report-data in {}".format(page)
    return json.loads(match.group(1))


def same_cell(text, value):
    """A CSV cell and the page's value for it are the same: empty is null, numbers are equal as floats (the file's
    text read by Python's correctly rounded float()), booleans and text are equal as written."""
    if text == "":
        return value is None
    if isinstance(value, bool):
        return text == str(value)
    if isinstance(value, (int, float)):
        return float(text) == value
    return text == value


def assert_same_cells(path, table):
    """Every cell of the CSV file ``path`` is in the embedded ``table``, unchanged, in the same place."""
    with open(path, newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader)
        rows = list(reader)
    assert table["columns"] == header, (path.name, table["columns"], header)
    assert table["rows"] == len(rows), (path.name, table["rows"], len(rows))
    for column, name in enumerate(header):
        cells = table["data"][name]
        differ = [(number, row[column], cells[number]) for number, row in enumerate(rows)
                  if not same_cell(row[column], cells[number])]
        assert not differ, "{} column {}: (row, file, page) {}".format(path.name, name, differ[:3])


def csv_rows(path, **where):
    """The rows of a CSV file (as dicts of text) whose cells equal ``where``."""
    with open(path, newline="") as stream:
        return [row for row in csv.DictReader(stream) if all(row[key] == str(value) for key, value in where.items())]


class ResourceFinder(HTMLParser):
    """Every URL the page would load by itself: script, image, style sheet, frame sources, CSS url(…)."""

    def __init__(self):
        super().__init__()
        self.urls = []
        self.inline_scripts = 0

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "script" and not attributes.get("src"):
            self.inline_scripts += 1
        if tag in RESOURCE_ATTRIBUTES and attributes.get(RESOURCE_ATTRIBUTES[tag]):
            if not (tag == "link" and attributes.get("rel") not in ("stylesheet", "icon", "preload", "modulepreload")):
                self.urls.append(attributes[RESOURCE_ATTRIBUTES[tag]])
        self.urls += re.findall(r"url\(\s*['\"]?([^)'\"]+)", attributes.get("style") or "")

    def handle_data(self, data):
        if self.lasttag == "style":
            self.urls += re.findall(r"url\(\s*['\"]?([^)'\"]+)", data)


def external_resources(html):
    """The URLs a page would fetch from elsewhere (http, https, protocol-relative): none for a self-contained one."""
    finder = ResourceFinder()
    finder.feed(html)
    return [url for url in finder.urls if re.match(r"(https?:)?//", url.strip(), re.I)], finder


# --- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """A small hand-made output folder in the real formats, with contrasts.csv, denoising.csv, a metric the code
    does not know (cka), feature maps and a validation folder; and its report."""
    folder = bench_report.fabricate_run(tmp_path_factory.mktemp("fabricated") / "run",
                                        models=("ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"), blocks=6,
                                        metrics=("ssim", "cka", "frobenius"), images=5)
    contrasts = pd.read_csv(folder / "contrasts.csv")
    contrasts.loc[0, "t"], contrasts.loc[1, "p_t"] = math.inf, math.nan     # cells JSON has no number for
    contrasts.to_csv(folder / "contrasts.csv", index=False)
    validation = tmp_path_factory.mktemp("validation")
    rows = [dict(model="ResNet", zoo="mini", attack_iter=2, quantity="top1_error", n=20, count=6, measured=30.0,
                 ci95_low=14.547724486760431, ci95_high=51.89728183535235, published=31.0, tolerance=0.3,
                 verdict="PASS"),
            dict(model="ResNet", zoo="mini", attack_iter=2, quantity="attack_success", n=20, count=1, measured=5.0,
                 ci95_low=0.8881448800795402, ci95_high=23.613119344674203, published=40.0, tolerance=0.3,
                 verdict="FAIL")]
    with open(validation / "validate-mini-k2.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (validation / "validate-mini-k2.json").write_text(json.dumps({"images": 20, "attack_iter": 2, "epsilon": 16.0}))
    report.write_report(folder, [validation])
    return folder, validation


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """A miniature study (2 models, 4 images, 2 PGD steps) by the command line: it writes its own report."""
    out = tmp_path_factory.mktemp("mini") / "run"
    result = subprocess.run([sys.executable, "-m", "repro", "evaluate", "--zoo", "mini", "--model", "ResNet",
                             "ResNetDenoise", "--images", "4", "--batch", "4", "--attack-iter", "2", "--visualize", "1",
                             "--out", str(out)], cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, offline. Where it cannot start the browser tests skip — or fail with REPRO_REQUIRE_BROWSER
    (CI), so that a machine without Chromium never passes them unseen."""
    try:
        session = report_browser.start()
    except report_browser.BrowserUnavailable as error:
        if os.environ.get("REPRO_REQUIRE_BROWSER"):
            pytest.fail("REPRO_REQUIRE_BROWSER is set and {}".format(error))
        pytest.skip(str(error))
    report_browser.go_offline(session)
    yield session
    session.quit()


# --- the page, without a browser ----------------------------------------------------------------------------------

def test_the_page_holds_exactly_the_numbers_of_every_table(fabricated):
    folder, validation = fabricated
    data = embedded(folder / report.REPORT_NAME)
    assert set(data["tables"]) == set(TABLES)
    for name in TABLES:
        assert_same_cells(folder / (name + ".csv"), data["tables"][name])
    assert [entry["file"] for entry in data["validation"]] == ["validate-mini-k2.csv"]
    assert_same_cells(validation / "validate-mini-k2.csv", data["validation"][0]["table"])


def test_the_comparison_fails_on_a_changed_number_a_lost_row_or_a_renamed_column(fabricated):
    """The check above can fail: one number one ulp off, one row short, one column renamed."""
    folder, _ = fabricated
    blocks = embedded(folder / report.REPORT_NAME)["tables"]["blocks"]
    nudged = json.loads(json.dumps(blocks))
    nudged["data"]["mean"][3] = math.nextafter(nudged["data"]["mean"][3], math.inf)
    short = json.loads(json.dumps(blocks))
    short["rows"] -= 1
    renamed = json.loads(json.dumps(blocks))
    renamed["columns"][0] = "network"
    for broken in (nudged, short, renamed):
        with pytest.raises(AssertionError):
            assert_same_cells(folder / "blocks.csv", broken)


def test_the_metric_switcher_lists_every_metric_of_the_tables_the_papers_first(fabricated):
    folder, _ = fabricated
    data = embedded(folder / report.REPORT_NAME)
    assert data["metrics"] == ["frobenius", "ssim", "cka"]          # cka: a metric this code does not know
    assert data["models"] == ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"]


def test_optional_tables_are_shown_when_present_and_left_out_silently_when_absent(fabricated, tmp_path):
    folder, _ = fabricated
    page = (folder / report.REPORT_NAME).read_text()
    for name in ("contrasts", "denoising"):
        assert 'id="{}-figure"'.format(name) in page and '<a href="{}.csv">'.format(name) in page
    bare = shutil.copytree(folder, tmp_path / "bare")
    for name in ("contrasts.csv", "denoising.csv", "report.html", "manifest.json"):
        (bare / name).unlink()
    page = report.write_report(bare).read_text()
    assert "contrasts-figure" not in page and "denoising-figure" not in page
    assert "no manifest.json" in page
    assert set(embedded(bare / report.REPORT_NAME)["tables"]) == {"blocks", "summary", "images"}
    assert 'id="blocks-figure"' in page


def test_the_settings_read_what_the_manifest_holds_and_a_question_mark_for_what_it_lacks(fabricated):
    folder, _ = fabricated
    manifest = json.loads((folder / "manifest.json").read_text())
    said = dict(report.settings(manifest, ["ResNet"]))
    assert said["Attack"].startswith("targeted PGD, ε = 16/255, 100 steps of α = 1/255")
    assert said["Images"] == "5 per model (fabricated)"
    assert dict(report.settings({}, ["ResNet"]))["Attack"] == \
        "targeted PGD, ε = ?/255, ? steps of α = ?/255; random noise: ? in the same ε-ball; seed ?"


def test_an_optional_table_without_the_columns_the_page_draws_is_refused_by_name(fabricated, tmp_path):
    folder, _ = fabricated
    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "denoising.csv").write_text("model,metric,mean\nResNet,ssim,0.5\n")
    with pytest.raises(cli.UsageError, match=r"denoising\.csv lacks the columns perturbation, operation"):
        report.write_report(broken)


def test_the_page_asks_for_nothing_outside_itself(fabricated):
    """No script, style sheet, image or frame from elsewhere: everything is inline or a data: URI; the links to the
    run's files are relative and name files that are there."""
    folder, _ = fabricated
    html = (folder / report.REPORT_NAME).read_text()
    external, finder = external_resources(html)
    assert external == []
    assert finder.inline_scripts >= 3 and all(url.startswith("data:") for url in finder.urls)
    assert len([url for url in finder.urls if url.startswith("data:image/png;base64,")]) == 3    # the feature maps
    links = re.findall(r'<a href="([^"]+)"', html[html.index('<section id="files">'):html.index("</main>")])
    assert "blocks.csv" in links and all((folder / link).is_file() for link in links)
    injected = html.replace("</head>", '<script src="https://cdn.plot.ly/plotly-3.0.0.min.js"></script>'
                                       '<link rel="stylesheet" href="//example.org/a.css"></head>')
    assert len(external_resources(injected)[0]) == 2            # the check sees a page that would fetch


def test_validation_results_are_shown_with_their_verdicts(fabricated):
    folder, validation = fabricated
    page = (folder / report.REPORT_NAME).read_text()
    assert 'class="verdict pass">PASS' in page and 'class="verdict fail">FAIL' in page
    assert "validate-mini-k2.csv" in page
    with pytest.raises(cli.UsageError, match="no validate-"):
        report.write_report(folder, [folder])


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_a_folder_that_holds_no_study_is_one_clear_line(tmp_path, case):
    folder = tmp_path / "study"
    if case == "empty":
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "repro", "report", str(folder)], cwd=str(REPO),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert ("has no blocks.csv" if case == "empty" else "is not a folder") in result.stderr
    assert "python -m repro evaluate" in result.stderr
    assert not (folder / report.REPORT_NAME).exists()


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_the_tables(fabricated, tmp_path, capsys):
    folder = shutil.copytree(fabricated[0], tmp_path / "run")
    (folder / report.REPORT_NAME).unlink()
    (folder / report.REPORT_NAME).mkdir()                   # a folder where the page should go
    before = {path.name: path.read_bytes() for path in folder.glob("*.csv")}
    status = cli.run_main(lambda argv: report.write_after_run(folder))
    error = capsys.readouterr().err
    assert status == 1 and len(error.strip().splitlines()) == 1
    assert "report.html could not be written" in error and "python -m repro report {}".format(folder) in error
    assert {path.name: path.read_bytes() for path in folder.glob("*.csv")} == before
    assert not list(folder.glob(".report.html.*"))           # no temporary left behind


# --- the study writes it ------------------------------------------------------------------------------------------

def test_the_study_writes_a_report_whose_numbers_are_its_tables(mini_run):
    data = embedded(mini_run / report.REPORT_NAME)
    for name in ("blocks", "summary", "images"):
        assert_same_cells(mini_run / (name + ".csv"), data["tables"][name])
    assert data["models"] == ["ResNet", "ResNetDenoise"]
    page = (mini_run / report.REPORT_NAME).read_text()
    manifest = json.loads((mini_run / "manifest.json").read_text())
    assert manifest["models"]["ResNet"]["sha256"] in page and "2 steps" in page


def test_aggregate_only_writes_the_report_again(mini_run):
    (mini_run / report.REPORT_NAME).unlink()
    result = subprocess.run([sys.executable, "-m", "repro", "evaluate", "--zoo", "mini", "--model", "ResNet",
                             "ResNetDenoise", "--images", "4", "--batch", "4", "--attack-iter", "2", "--visualize", "1",
                             "--aggregate-only", "--out", str(mini_run)], cwd=str(REPO), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_cells(mini_run / "blocks.csv", embedded(mini_run / report.REPORT_NAME)["tables"]["blocks"])


# --- in headless Chromium, offline --------------------------------------------------------------------------------

FIGURE_CONTENT = """
const drawn = (path) => (path.getAttribute('d') || '').length > 10;
return Array.from(document.querySelectorAll('.figure[data-table]')).map(figure => {
    const traces = Array.from(figure.querySelectorAll('.scatterlayer .trace'));
    return [figure.id,
            traces.filter(trace => trace.querySelector('.points path')
                                   && Array.from(trace.querySelectorAll('path.js-line')).some(drawn)).length,
            Array.from(figure.querySelectorAll('.scatterlayer .trace path.js-fill')).filter(drawn).length];
});
"""
MEAN_TRACES = """
return document.getElementById(arguments[0]).data.filter(trace => trace.mode === 'lines+markers')
    .map(trace => ({name: trace.name, x: trace.x, y: trace.y, symbol: trace.marker.symbol}));
"""
EDGE_TRACES = """
return document.getElementById(arguments[0]).data.filter(trace => trace.mode === 'lines')
    .map(trace => ({name: trace.name, y: trace.y}));
"""
POINT_POSITION = """
const figure = document.getElementById(arguments[0]), x = arguments[1], y = arguments[2];
figure.scrollIntoView({block: 'center'});
const xaxis = figure._fullLayout.xaxis, yaxis = figure._fullLayout.yaxis, box = figure.getBoundingClientRect();
return [xaxis._offset + xaxis.l2p(x) - box.width / 2, yaxis._offset + yaxis.l2p(y) - box.height / 2];
"""
HOVER_LINES = """
return Array.from(document.querySelectorAll('.hoverlayer .hovertext text.nums tspan.line')).map(t => t.textContent);
"""


def choose(session, select_id, value):
    """Pick ``value`` in a control of the page and wait until the figures are drawn again."""
    from selenium.webdriver.support.ui import Select
    draws = session.execute_script("return document.documentElement.dataset.draws")
    Select(session.find_element("id", select_id)).select_by_value(value)
    deadline = time.monotonic() + 10
    while session.execute_script("return document.documentElement.dataset.draws") == draws:
        assert time.monotonic() < deadline, "the figures were not drawn again after choosing {}".format(value)
        time.sleep(0.02)


def test_offline_the_page_draws_every_figure_without_a_console_error(browser, mini_run, tmp_path):
    seconds = report_browser.open_page(browser, mini_run / report.REPORT_NAME)
    assert report_browser.console_errors(browser) == []
    assert browser.execute_script("return navigator.onLine") is False          # the network really was off
    requested = report_browser.requested_urls(browser)
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
    drawn = browser.execute_script(FIGURE_CONTENT)
    # curves and bands: 2 models × 2 perturbations; the paired difference adversarial − random: 2 models
    assert drawn == [["blocks-figure", 4, 4], ["contrasts-figure", 2, 2]]
    images = browser.execute_script("return Array.from(document.images).map(image => image.naturalWidth)")
    assert len(images) == len(list(mini_run.glob("feature_maps_*.png"))) == 2 and min(images) > 100
    browser.execute_script("document.getElementById('images-details').open = true")
    deadline = time.monotonic() + 5
    while browser.execute_script("return document.querySelectorAll('#images-table tbody tr').length") == 0:
        assert time.monotonic() < deadline, "the per-image table was not built when opened"
        time.sleep(0.02)
    shown = browser.execute_script("return document.querySelectorAll('#images-table tbody tr').length")
    assert shown == len(csv_rows(mini_run / "images.csv")) == 8
    shot = report_browser.screenshot(browser, tmp_path / "report.png")
    assert shot.stat().st_size > 20000
    print("\nscreenshot of the miniature run's report: {} (drawn after {:.2f} s)".format(shot, seconds))


def test_hovering_a_point_shows_the_value_blocks_csv_holds_for_it(browser, mini_run):
    from selenium.webdriver.common.action_chains import ActionChains
    report_browser.open_page(browser, mini_run / report.REPORT_NAME)
    choose(browser, "model-select", "ResNetDenoise")
    adversarial = csv_rows(mini_run / "blocks.csv", model="ResNetDenoise", metric="frobenius", perturbation="adversarial")
    random = {row["block_index"]: float(row["mean"]) for row in
              csv_rows(mini_run / "blocks.csv", model="ResNetDenoise", metric="frobenius", perturbation="random")}
    # The block where the two curves are furthest apart: no other point lies under the pointer.
    target = max(adversarial, key=lambda row: abs(float(row["mean"]) - random[row["block_index"]]))
    dx, dy = browser.execute_script(POINT_POSITION, "blocks-figure", int(target["block_index"]), float(target["mean"]))
    ActionChains(browser).move_to_element_with_offset(browser.find_element("id", "blocks-figure"), 0, 0) \
        .move_by_offset(round(dx), round(dy)).perform()
    deadline = time.monotonic() + 5
    while not browser.execute_script(HOVER_LINES):
        assert time.monotonic() < deadline, "no hover label appeared over the point"
        time.sleep(0.05)
    lines = browser.execute_script(HOVER_LINES)
    assert lines[0] == "ResNetDenoise · adversarial", lines
    assert lines[1] == "block {} · {}".format(target["block_index"], target["tap"]), lines
    assert lines[2] == "C×H×W {}×{}×{}".format(target["channels"], target["height"], target["width"]), lines
    shown = re.fullmatch(r"mean (\S+)", lines[3])
    assert shown and float(shown.group(1)) == pytest.approx(float(target["mean"]), rel=5e-6), lines
    low, high = re.fullmatch(r"95% interval \[(\S+), (\S+)\]", lines[4]).groups()
    assert float(low) == pytest.approx(float(target["ci95_low"]), rel=5e-6)
    assert float(high) == pytest.approx(float(target["ci95_high"]), rel=5e-6)
    assert lines[5].startswith("n {} images · {} channel values".format(target["n_images"], target["n_values"]))
    assert report_browser.console_errors(browser) == []


def test_switching_the_metric_redraws_the_curves_with_that_metrics_numbers(browser, mini_run):
    report_browser.open_page(browser, mini_run / report.REPORT_NAME)
    shapes = browser.execute_script("return Array.from(document.querySelectorAll('#blocks-figure path.js-line'))"
                                    ".map(path => path.getAttribute('d'))")
    choose(browser, "metric-select", "ssim")
    assert browser.execute_script("return Array.from(document.querySelectorAll('#blocks-figure path.js-line'))"
                                  ".map(path => path.getAttribute('d'))") != shapes
    traces = browser.execute_script(MEAN_TRACES, "blocks-figure")
    edges = {trace["name"]: trace["y"] for trace in browser.execute_script(EDGE_TRACES, "blocks-figure")}
    assert len(traces) == 4
    for trace in traces:
        model, perturbation = trace["name"].split(" · ")
        rows = sorted(csv_rows(mini_run / "blocks.csv", model=model, metric="ssim", perturbation=perturbation),
                      key=lambda row: int(row["depth_from_end"]))
        assert trace["x"] == [int(row["depth_from_end"]) for row in rows]        # all models: aligned at the end
        assert trace["y"] == [float(row["mean"]) for row in rows]
        assert edges[trace["name"] + " 95% low"] == [float(row["ci95_low"]) for row in rows]
        assert edges[trace["name"] + " 95% high"] == [float(row["ci95_high"]) for row in rows]
    assert report_browser.console_errors(browser) == []


def test_a_models_legend_entry_hides_all_its_curves(browser, mini_run):
    report_browser.open_page(browser, mini_run / report.REPORT_NAME)
    toggle = browser.execute_script("""
        const figure = document.getElementById('blocks-figure');
        figure.scrollIntoView({block: 'center'});
        const entry = Array.from(figure.querySelectorAll('.legend .traces'))
            .find(item => item.textContent === 'ResNet · adversarial');
        return entry.querySelector('.legendtoggle');""")
    toggle.click()
    hidden = "return document.getElementById('blocks-figure').data.filter(t => t.visible === 'legendonly')" \
             ".map(t => t.legendgroup)"
    deadline = time.monotonic() + 5
    while not browser.execute_script(hidden):
        assert time.monotonic() < deadline, "clicking the legend entry hid nothing"
        time.sleep(0.02)
    assert browser.execute_script(hidden) == ["ResNet"] * 6      # both curves and their bands' edges


def test_the_contrast_and_denoising_figures_draw_their_tables_with_significance_marked(browser, fabricated):
    folder, _ = fabricated
    report_browser.open_page(browser, folder / report.REPORT_NAME)
    assert report_browser.console_errors(browser) == []
    drawn = {name: (curves, bands) for name, curves, bands in browser.execute_script(FIGURE_CONTENT)}
    # 3 models × 2 perturbations; 3 models × 1 contrast; denoising: ResNet has no denoising operation
    assert drawn == {"blocks-figure": (6, 6), "contrasts-figure": (3, 3), "denoising-figure": (4, 4)}
    choose(browser, "metric-select", "cka")
    for name, series in (("contrasts", "contrast"), ("denoising", "perturbation")):
        traces = browser.execute_script(MEAN_TRACES, name + "-figure")
        assert traces
        for trace in traces:
            model, kind = trace["name"].split(" · ")
            rows = sorted(csv_rows(folder / (name + ".csv"), model=model, metric="cka", **{series: kind}),
                          key=lambda row: int(row["depth_from_end"]))
            assert trace["y"] == [float(row["mean"]) for row in rows]
            assert trace["symbol"] == ["circle" if row["significant"] == "True" else "circle-open" for row in rows]


def test_the_browser_checks_see_a_broken_page(browser, fabricated, tmp_path):
    """A script error reaches the console check, and a page that draws no curve fails the figure check."""
    folder, _ = fabricated
    html = (folder / report.REPORT_NAME).read_text()
    failing = tmp_path / "failing.html"
    failing.write_text(html.replace("</main>", "</main><script>document.body.undefinedFunction();</script>"))
    report_browser.open_page(browser, failing)
    assert any("undefinedFunction" in message for message in report_browser.console_errors(browser))
    empty = tmp_path / "empty.html"
    empty.write_text(re.sub(r'"metrics":\[[^\]]*\]', '"metrics":["no-such-metric"]', html, count=1))
    report_browser.open_page(browser, empty)
    assert all(curves == bands == 0 for _, curves, bands in browser.execute_script(FIGURE_CONTENT))
