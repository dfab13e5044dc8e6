/* The report's interactive figures, drawn with plotly from the tables embedded in #report-data.
   Every number it draws or shows on hover is a cell of blocks.csv, contrasts.csv or denoising.csv, unchanged (the
   page's promise, checked by tests/test_report.py); its only arithmetic places the grey lines between groups. */
"use strict";
(function () {
  const REPORT = JSON.parse(document.getElementById("report-data").textContent);
  const TABLES = REPORT.tables;
  // Fig. 5.1: adversarial blue, random orange; Fig. 5.2: one colour per model (plots.MODEL_COLOURS), adversarial
  // solid and random dashed.
  const PERTURBATION_COLOURS = {adversarial: "#1f77b4", random: "#ff7f0e"};
  const MODEL_COLOURS = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f"];
  const DASHES = {adversarial: "solid", random: "dash"};
  const PLOT_CONFIG = {displaylogo: false, responsive: true};
  const STATISTICS = ["t {t:.4g} (p {p_t:.3g}, Holm {p_t_holm:.3g})",
                      "Wilcoxon {wilcoxon_statistic:.6g} (p {p_wilcoxon:.3g}, Holm {p_wilcoxon_holm:.3g})",
                      "n {n} images ({n_left_out} left out) · significant: {significant}"];
  const INTERVAL = "95% interval [{ci95_low:.6g}, {ci95_high:.6g}]";

  /* What each figure draws: which table, one curve per combination of the `series` columns, and the hover lines
     ({column} or {column:d3-format} stand for that row's cell). */
  const FIGURES = {
    blocks: {series: ["model", "perturbation"], groupLines: true,
             hover: ["block {block_index} · {tap}", "C×H×W {channels}×{height}×{width}", "mean {mean:.6g}",
                     INTERVAL, "n {n_images} images · {n_values} channel values · {n_excluded} excluded"]},
    contrasts: {series: ["model", "contrast"], marked: "significant", zeroLine: true,
                hover: ["block {block_index} · {tap}", "C×H×W {channels}×{height}×{width}",
                        "mean difference {mean:.6g} (sd {sd:.4g})", INTERVAL].concat(STATISTICS)},
    denoising: {series: ["model", "perturbation"], marked: "significant", zeroLine: true,
                hover: ["{operation} at block {block_index}", "{tap_before} → {tap_after}",
                        "mean change {mean:.6g} (sd {sd:.4g})", INTERVAL].concat(STATISTICS)},
  };

  const metricSelect = document.getElementById("metric-select");
  const modelSelect = document.getElementById("model-select");

  function options(select, entries) {
    for (const [value, text] of entries) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = text;
      select.appendChild(option);
    }
  }

  /* Row numbers of `table` whose cells equal `where` ({column: value}), ordered by the column `order`. */
  function rows(table, where, order) {
    const columns = Object.entries(where).map(([name, value]) => [table.data[name], value]);
    const found = [];
    for (let row = 0; row < table.rows; row++) {
      if (columns.every(([cells, value]) => cells[row] === value)) found.push(row);
    }
    const key = table.data[order];
    return found.sort((a, b) => key[a] - key[b]);
  }

  function distinct(cells) {
    return Array.from(new Set(cells));
  }

  /* A plotly hovertemplate from lines like "mean {mean:.6g}", and the columns its customdata must hold. */
  function hoverTemplate(header, lines) {
    const columns = [];
    const text = lines.join("<br>").replace(/\{(\w+)(?::([^}]+))?\}/g, (match, column, format) => {
      columns.push(column);
      return "%{customdata[" + (columns.length - 1) + "]" + (format ? ":" + format : "") + "}";
    });
    return {columns: columns, template: "<b>" + header + "</b><br>" + text + "<extra></extra>"};
  }

  function translucent(colour, alpha) {
    const channel = (start) => parseInt(colour.slice(start, start + 2), 16);
    return "rgba(" + channel(1) + "," + channel(3) + "," + channel(5) + "," + alpha + ")";
  }

  /* Three traces for one curve: the band's lower and upper edges (filled between) and the means, with hover. */
  function curveTraces(table, selected, x, spec, style) {
    const cells = (column) => selected.map((row) => table.data[column][row]);
    const xs = cells(x);
    const hover = hoverTemplate(style.header, spec.hover);
    const edge = {x: xs, mode: "lines", line: {width: 0, color: style.colour}, hoverinfo: "skip", showlegend: false,
                  legendgroup: style.group, connectgaps: false};
    const marked = spec.marked ? cells(spec.marked) : null;
    return [
      Object.assign({y: cells("ci95_low"), name: style.name + " 95% low"}, edge),
      Object.assign({}, edge, {y: cells("ci95_high"), name: style.name + " 95% high", fill: "tonexty",
                               fillcolor: translucent(style.colour, style.bandAlpha)}),
      {x: xs, y: cells("mean"), name: style.name, legendgroup: style.group, mode: "lines+markers",
       line: {color: style.colour, dash: style.dash, width: 2},
       marker: {color: style.colour, size: marked ? marked.map((m) => (m ? 9 : 6)) : 5,
                symbol: marked ? marked.map((m) => (m ? "circle" : "circle-open")) : "circle"},
       customdata: selected.map((row) => hover.columns.map((column) => table.data[column][row])),
       hovertemplate: hover.template},
    ];
  }

  /* Colour, dash and legend group of one curve: with one model, by perturbation (Fig. 5.1); with all, by model
     (Fig. 5.2), so that a model's legend entry hides all of its curves. */
  function curveStyle(model, kind, oneModel) {
    const modelColour = MODEL_COLOURS[REPORT.models.indexOf(model) % MODEL_COLOURS.length];
    const header = model + " · " + kind;
    if (oneModel) {
      return {name: kind, header: header, group: kind, colour: PERTURBATION_COLOURS[kind] || modelColour, dash: "solid",
              bandAlpha: 0.2};
    }
    // Six or more bands overlap: lighter ones keep the curves readable.
    return {name: header, header: header, group: model, colour: modelColour, dash: DASHES[kind] || "solid",
            bandAlpha: 0.08};
  }

  /* Grey lines between ResNet groups (Fig. 5.1), halfway between the last block of a group and the next. */
  function groupLines(table, selected) {
    const lines = [];
    for (let k = 1; k < selected.length; k++) {
      const [before, after] = [selected[k - 1], selected[k]];
      if (table.data.group[before] !== table.data.group[after]) {
        const x = (table.data.block_index[before] + table.data.block_index[after]) / 2;
        lines.push({type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
                    line: {color: "#999", width: 1}, layer: "below"});
      }
    }
    return lines;
  }

  function figure(name, metric, model) {
    const table = TABLES[name];
    const spec = FIGURES[name];
    const oneModel = model !== "all";
    const x = oneModel ? "block_index" : "depth_from_end";
    const traces = [];
    let shapes = [];
    for (const each of oneModel ? [model] : REPORT.models) {
      const kinds = distinct(rows(table, {model: each, metric: metric}, x)
        .map((row) => table.data[spec.series[1]][row]));
      for (const kind of kinds.sort()) {
        const selected = rows(table, {model: each, metric: metric, [spec.series[1]]: kind}, x);
        traces.push(...curveTraces(table, selected, x, spec, curveStyle(each, kind, oneModel)));
        if (spec.groupLines && oneModel && shapes.length === 0) shapes = groupLines(table, selected);
      }
    }
    if (spec.zeroLine) {
      shapes.push({type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: 0, y1: 0,
                   line: {color: "#444", width: 1}});
    }
    const title = REPORT.metricTitles[metric] || metric;
    const layout = {
      margin: {l: 72, r: 16, t: 36, b: 52}, hovermode: "closest", shapes: shapes,
      legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", traceorder: "grouped"},
      xaxis: {title: {text: oneModel ? "residual block (1 = first, in depth order)"
                                     : "blocks before the final block (0 = final block)"},
              autorange: oneModel ? true : "reversed", zeroline: false},
      yaxis: {title: {text: title}, zeroline: false},
      annotations: traces.length ? [] : [{
        text: "no rows for " + title + (oneModel ? " of " + model : "") + " in " + name + ".csv",
        xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false}],
    };
    return [traces, layout];
  }

  let draws = 0;
  function draw() {
    const metric = metricSelect.value;
    const model = modelSelect.value;
    const drawn = Array.from(document.querySelectorAll(".figure[data-table]")).map((element) => {
      const [traces, layout] = figure(element.dataset.table, metric, model);
      return Plotly.react(element, traces, layout, PLOT_CONFIG);
    });
    return Promise.all(drawn).then(() => {
      draws += 1;
      if (draws === 1) window.reportDrawnAt = performance.now();
      document.documentElement.dataset.draws = String(draws);
    });
  }

  /* images.csv as a table, built when first opened: it can be long, and the page should open fast. */
  function imagesTable() {
    const table = TABLES.images;
    const element = document.createElement("table");
    element.className = "numbers";
    const head = element.createTHead().insertRow();
    for (const column of table.columns) head.appendChild(document.createElement("th")).textContent = column;
    const body = element.createTBody();
    for (let row = 0; row < table.rows; row++) {
      const line = body.insertRow();
      for (const column of table.columns) {
        const cell = table.data[column][row];
        line.insertCell().textContent = cell === null ? "" : String(cell);
      }
    }
    return element;
  }

  options(metricSelect, REPORT.metrics.map((metric) => [metric, REPORT.metricTitles[metric] || metric]));
  options(modelSelect, [["all", "all models"]].concat(REPORT.models.map((model) => [model, model])));
  metricSelect.addEventListener("change", draw);
  modelSelect.addEventListener("change", draw);
  const details = document.getElementById("images-details");
  if (details && TABLES.images) {
    details.addEventListener("toggle", () => {
      const holder = document.getElementById("images-table");
      if (details.open && !holder.firstChild) holder.appendChild(imagesTable());
    });
  }
  // A printed page is narrower than the screen: redraw the figures at its width, and at the screen's after.
  for (const event of ["beforeprint", "afterprint"]) {
    window.addEventListener(event, () => {
      document.querySelectorAll(".figure[data-table]").forEach((element) => Plotly.Plots.resize(element));
    });
  }
  window.reportDrawn = draw();
})();
