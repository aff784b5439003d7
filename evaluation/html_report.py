"""The static evaluation report: index.html and its PNG images, from evaluation results.

Flow position: evaluation.runner (one result per model: tasks, curves, slices; the metrics
JSON) -> **html_report** -> DIR/index.html + DIR/images/*.png. Self-contained: images are
files beside index.html (relative paths), the CSS is inline, nothing is fetched from the
network, no server is needed (open the file in a browser).

Sections (each a <section id=...>):
  overview     the data, examples, truth and models;
  comparison   one table of every model x task (AUC, GAUC, log loss, calibration, ECE,
               Bayes AUC and gap; cvr/all: cvr over the entire space against the truth),
               and the models' reliability curves overlaid per task;
  model-NAME   per model: its table, reliability diagrams (observed rate by equal-mass
               prediction bin, with 95% intervals, bin counts, and the truth's curve),
               the entire-space CVR against the truth (clicked vs unclicked exposures),
               and the score distributions of positives and negatives;
  slices       per slice feature: AUC by value for every model (small slices hollow),
               and per task a table of n, positives, AUC and calibration of every model
               per value; small slices are marked, not hidden (tables longer than 12
               values start folded).
A tiny inline script records on <body> how many images loaded (data-images,
data-images-loaded): the browser test reads it.
"""

import html
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGES_DIR = "images"
INDEX = "index.html"
MAIN_TASKS = ("ctr", "cvr", "ctcvr")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
DPI = 80
OPEN_SLICE_ROWS = 12  # longer slice tables start folded (<details>), one click away

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
 max-width:1250px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ccc;
 padding-bottom:4px;margin-top:32px} h3{font-size:15px;margin-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
tr.small td{color:#999;font-style:italic} .badge{font-size:11px;background:#eee;
 border-radius:3px;padding:0 4px;color:#666;font-style:normal}
.bad{color:#b00} .note{color:#555;font-size:13px;max-width:1000px}
img{max-width:100%;border:1px solid #eee;margin:4px 0}
nav a{margin-right:12px;font-size:14px} summary{cursor:pointer;margin:6px 0;font-size:14px}
"""

CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded.length));
});
</script>"""


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _number(value: Any, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return html.escape(str(value))


def _finite(values) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _save(figure, directory: str, filename: str) -> str:
  os.makedirs(os.path.join(directory, IMAGES_DIR), exist_ok=True)
  figure.savefig(os.path.join(directory, IMAGES_DIR, filename), dpi=DPI, bbox_inches="tight")
  plt.close(figure)
  return f"{IMAGES_DIR}/{filename}"


def _tasks(results: Sequence[Mapping[str, Any]]) -> List[str]:
  names = []
  for result in results:
    names += [task for task in result["tasks"] if task not in names]
  return names


def _log_axes(axis, low: float, high: float) -> None:
  axis.set_xscale("log")
  axis.set_yscale("log")
  axis.plot([low, high], [low, high], color="#999", linewidth=1, linestyle=":")
  axis.set_xlim(low, high)
  axis.set_ylim(low, high)
  for scale in (axis.xaxis, axis.yaxis):
    scale.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _range(*columns) -> tuple:
  values = np.concatenate([_finite(c) for c in columns if c]) if columns else np.zeros(0)
  values = values[np.isfinite(values) & (values > 0)]
  if not len(values):
    return 1e-4, 1.0
  return float(values.min()) / 1.6, min(1.0, float(values.max()) * 1.6)


# -- figures ---------------------------------------------------------------------------


def _reliability_panel(axis, bins: Mapping[str, list], color: str, label: str,
                       with_truth: bool = True, error_bars: bool = True) -> None:
  predicted = _finite(bins["mean_prediction"])
  observed = _finite(bins["observed"])
  counts = np.asarray(bins["n"], np.float64)
  standard_error = np.sqrt(np.clip(observed * (1 - observed), 0, None) / np.maximum(counts, 1))
  shown = observed > 0
  if error_bars:
    lower = np.minimum(1.96 * standard_error, observed * 0.999)
    axis.errorbar(predicted[shown], observed[shown], yerr=[lower[shown], 1.96 * standard_error[shown]],
                  fmt="o-", color=color, markersize=4, linewidth=1.2, capsize=2, label=label)
  else:
    axis.plot(predicted[shown], observed[shown], "o-", color=color, markersize=4,
              linewidth=1.2, label=label)
  if (~shown).any():  # bins with no positive: drawn on the bottom edge, hollow
    axis.plot(predicted[~shown], np.full((~shown).sum(), axis.get_ylim()[0] * 1.05), "v",
              color=color, markerfacecolor="none", markersize=5)
  if with_truth and "mean_truth" in bins:
    axis.plot(predicted, _finite(bins["mean_truth"]), "--", color=color, linewidth=1.2,
              alpha=0.8, label=f"{label}: truth" if label else "truth (Bayes)")


def reliability_figure(result: Mapping[str, Any], directory: str) -> Optional[str]:
  """Per task: observed vs predicted by bin, the truth's curve, counts below; one PNG."""
  curves = result.get("curves") or {}
  tasks = [task for task in result["tasks"] if task in curves]
  if not tasks:
    return None
  figure, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 5.4),
                              gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
  for column, task in enumerate(tasks):
    bins = curves[task]["reliability"]
    top, bottom = axes[0][column], axes[1][column]
    low, high = _range(bins["mean_prediction"], bins["observed"], bins.get("mean_truth"))
    _log_axes(top, low, high)
    _reliability_panel(top, bins, COLORS[0], "observed")
    if "mean_truth" in bins:
      top.lines[-1].set_label("truth (Bayes-optimal)")
      top.lines[-1].set_color("#444")
    entry = result["tasks"][task]
    top.set_title(f"{task} ({entry['rows']}): calib {_number(entry['calibration'], 2)}",
                  fontsize=10)
    top.set_xlabel("mean predicted (bin)")
    top.set_ylabel("observed rate")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(range(len(bins["n"])), bins["n"], color="#bbb", label="exposures")
    bottom.bar(range(len(bins["n"])), bins["positives"], color=COLORS[0], label="positives")
    bottom.set_yscale("log")
    bottom.set_xlabel("bin (equal mass, by prediction)")
    bottom.set_ylabel("count")
    bottom.legend(fontsize=7, loc="upper left")
  figure.suptitle(f"{result['name']}: reliability (equal-mass bins, 95% intervals)", fontsize=11)
  figure.tight_layout()
  return _save(figure, directory, f"{_safe(result['name'])}_reliability.png")


def entire_space_figure(result: Mapping[str, Any], directory: str) -> Optional[str]:
  """Predicted cvr vs the true p(purchase | click, x), clicked vs unclicked exposures."""
  space = ((result.get("curves") or {}).get("cvr") or {}).get("entire_space")
  if not space:
    return None
  calibration = (result["tasks"].get("cvr") or {}).get("entire_space") or {}
  figure, axis = plt.subplots(figsize=(5.2, 4.4))
  low, high = _range(*[space[g]["mean_prediction"] for g in space],
                     *[space[g]["observed"] for g in space])
  _log_axes(axis, low, high)
  for color, group in zip(COLORS, ("clicked", "unclicked")):
    ratio = _number(calibration.get(f"calibration_{group}"), 2)
    _reliability_panel(axis, space[group], color, f"{group} exposures (pred/true {ratio})",
                       error_bars=False)
  axis.set_xlabel("mean predicted cvr (bin)")
  axis.set_ylabel("mean true p(purchase | click, x)")
  axis.set_title(f"{result['name']}: cvr over the entire space", fontsize=10)
  axis.legend(fontsize=8, loc="upper left")
  figure.tight_layout()
  return _save(figure, directory, f"{_safe(result['name'])}_cvr_entire_space.png")


def score_figure(result: Mapping[str, Any], directory: str) -> Optional[str]:
  """Per task: the distributions of log10(prediction) for positives and negatives."""
  curves = result.get("curves") or {}
  tasks = [task for task in result["tasks"] if task in curves]
  if not tasks:
    return None
  figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
  for axis, task in zip(axes[0], tasks):
    histogram = curves[task]["histogram"]
    edges = np.asarray(histogram["log10_edges"])
    for name, color in (("negatives", "#888"), ("positives", COLORS[1])):
      counts = np.asarray(histogram[name], np.float64)
      total = counts.sum()
      density = counts / total / np.diff(edges) if total else counts
      axis.stairs(density, edges, color=color, fill=name == "negatives", alpha=0.5 if
                  name == "negatives" else 1.0, linewidth=1.5, label=f"{name} ({int(total)})")
    axis.set_title(f"{task}: AUC {_number(result['tasks'][task]['auc'])}", fontsize=10)
    axis.set_xlabel("log10(predicted)")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
  figure.suptitle(f"{result['name']}: score distributions", fontsize=11)
  figure.tight_layout()
  return _save(figure, directory, f"{_safe(result['name'])}_scores.png")


def comparison_figure(results: Sequence[Mapping[str, Any]], directory: str) -> Optional[str]:
  """The models' reliability curves overlaid per task (+ cvr on unclicked exposures)."""
  panels = [(task, "reliability") for task in _tasks(results) if task in MAIN_TASKS
            and any(task in (r.get("curves") or {}) for r in results)]
  if any(((r.get("curves") or {}).get("cvr") or {}).get("entire_space") for r in results):
    panels.append(("cvr", "unclicked"))
  if not panels:
    return None
  figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
  for axis, (task, kind) in zip(axes[0], panels):
    series = []
    for result in results:
      curve = (result.get("curves") or {}).get(task) or {}
      bins = curve.get("reliability") if kind == "reliability" else (
          curve.get("entire_space") or {}).get("unclicked")
      series.append(bins)
    present = [s for s in series if s]
    low, high = _range(*[s["mean_prediction"] for s in present], *[s["observed"] for s in present])
    _log_axes(axis, low, high)
    truth_drawn = False
    for color, result, bins in zip(COLORS, results, series):
      if not bins:
        continue
      _reliability_panel(axis, bins, color, result["name"], with_truth=False, error_bars=False)
      if "mean_truth" in bins and not truth_drawn:
        axis.plot(_finite(bins["mean_prediction"]), _finite(bins["mean_truth"]), "--",
                  color="#444", linewidth=1, label=f"truth (bins of {result['name']})")
        truth_drawn = True
    if kind == "reliability":
      axis.set_title(f"{task}: observed vs predicted", fontsize=10)
      axis.set_ylabel("observed rate")
    else:
      axis.set_title("cvr on unclicked exposures vs truth", fontsize=10)
      axis.set_ylabel("mean true p(purchase | click, x)")
    axis.set_xlabel("mean predicted (bin)")
    axis.legend(fontsize=8, loc="upper left")
  figure.tight_layout()
  return _save(figure, directory, "comparison_reliability.png")


def slice_figure(feature: str, results: Sequence[Mapping[str, Any]],
                 directory: str) -> Optional[str]:
  """Per task: AUC by slice value for each model; small slices hollow."""
  entries = [(r, (r.get("slices") or {}).get(feature)) for r in results]
  entries = [(r, e) for r, e in entries if e]
  if not entries:
    return None
  values = entries[0][1]["values"][:30]
  tasks = [t for t in MAIN_TASKS if any(t in e["tasks"] for _, e in entries)]
  figure, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
  for axis, task in zip(axes[0], tasks):
    width = 0.8 / len(entries)
    for index, (result, entry) in enumerate(entries):
      rows = {row["value"]: row for row in entry["tasks"].get(task, [])}
      for position, value in enumerate(values):
        row = rows.get(value)
        if not row or row["auc"] is None or not math.isfinite(row["auc"]):
          continue
        axis.plot(position + (index - (len(entries) - 1) / 2) * width, row["auc"], "o",
                  color=COLORS[index % len(COLORS)],
                  markerfacecolor="none" if row["small"] else COLORS[index % len(COLORS)],
                  label=result["name"] if position == 0 or not axis.get_legend_handles_labels()[1]
                  else None)
    axis.set_xticks(range(len(values)))
    axis.set_xticklabels(values, rotation=60 if len(values) > 6 else 0, fontsize=8)
    axis.set_title(f"{task} AUC by {feature} (hollow: small slice)", fontsize=10)
    axis.axhline(0.5, color="#ccc", linewidth=1)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
  figure.tight_layout()
  return _save(figure, directory, f"slice_{_safe(feature)}.png")


# -- tables ----------------------------------------------------------------------------

TABLE_HEADER = ("model", "task", "rows", "n", "positives", "AUC", "GAUC", "log loss",
                "calibration", "ECE", "Bayes AUC", "AUC gap")


def _metrics_rows(result: Mapping[str, Any], with_model: bool) -> List[str]:
  rows = []
  for task, entry in result["tasks"].items():
    truth = entry.get("truth") or {}
    calibration = entry.get("calibration")
    bad = calibration is not None and math.isfinite(calibration) and abs(calibration - 1) > 0.2
    cells = ([f'<td class="l">{html.escape(result["name"])}</td>'] if with_model else []) + [
        f'<td class="l">{html.escape(task)}</td>', f'<td class="l">{html.escape(entry["rows"])}</td>',
        f"<td>{_number(entry['n'])}</td>", f"<td>{_number(entry['positives'])}</td>",
        f"<td>{_number(entry['auc'])}</td>", f"<td>{_number(entry.get('gauc'))}</td>",
        f"<td>{_number(entry['log_loss'])}</td>",
        f'<td class="{"bad" if bad else ""}">{_number(calibration, 3)}</td>',
        f"<td>{_number(entry['ece'])}</td>", f"<td>{_number(truth.get('bayes_auc'))}</td>",
        f"<td>{_number(truth.get('auc_gap'))}</td>"]
    rows.append("<tr>" + "".join(cells) + "</tr>")
    space = entry.get("entire_space")
    if space:
      unclicked = space.get("calibration_unclicked")
      bad = unclicked is not None and math.isfinite(unclicked) and abs(unclicked - 1) > 0.2
      cells = ([f'<td class="l">{html.escape(result["name"])}</td>'] if with_model else []) + [
          '<td class="l">cvr/all</td>',
          '<td class="l">all exposures vs true p(purchase | click)</td>',
          f"<td>{_number(space['n'])}</td>", "<td>-</td>",
          f"<td>{_number(space['expected_auc'])}</td>", "<td>-</td>", "<td>-</td>",
          f'<td class="{"bad" if bad else ""}">{_number(space["calibration"], 3)} '
          f'(clicked {_number(space.get("calibration_clicked"), 2)}, unclicked '
          f'{_number(unclicked, 2)})</td>', "<td>-</td>",
          f"<td>{_number(space['bayes_expected_auc'])}</td>",
          f"<td>{_number(space['expected_auc_gap'])}</td>"]
      rows.append("<tr>" + "".join(cells) + "</tr>")
  return rows


def metrics_table(results: Sequence[Mapping[str, Any]], with_model: bool = True) -> str:
  header = TABLE_HEADER if with_model else TABLE_HEADER[1:]
  body = [row for result in results for row in _metrics_rows(result, with_model)]
  return ('<table class="metrics"><tr>' + "".join(
      f'<th class="{"l" if h in ("model", "task", "rows") else ""}">{h}</th>' for h in header)
          + "</tr>"
          + "".join(body) + "</table>")


def slice_table(feature: str, task: str, results: Sequence[Mapping[str, Any]]) -> str:
  """Rows: slice values; columns: n, positives, rate, then AUC and calibration per model."""
  entries = [(r["name"], {row["value"]: row for row in
                          (((r.get("slices") or {}).get(feature) or {}).get("tasks") or {})
                          .get(task, [])}) for r in results]
  entries = [(name, rows) for name, rows in entries if rows]
  if not entries:
    return ""
  first = next(iter(r for r in results if ((r.get("slices") or {}).get(feature))))
  header = ["value", "n", "positives", "rate"]
  header += [f"AUC {name}" for name, _ in entries] + [f"calib {name}" for name, _ in entries]
  lines = ['<table class="slices"><tr>' + "".join(
      f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
           + "</tr>"]
  for value in first["slices"][feature]["values"]:
    reference = entries[0][1].get(value)
    if reference is None:
      continue
    small = any((rows.get(value) or {}).get("small") for _, rows in entries)
    badge = ' <span class="badge">small</span>' if small else ""
    cells = [f'<td class="l">{html.escape(value)}{badge}</td>',
             f"<td>{_number(reference['n'])}</td>", f"<td>{_number(reference['positives'])}</td>",
             f"<td>{_number(reference['positive_rate'])}</td>"]
    cells += [f"<td>{_number((rows.get(value) or {}).get('auc'))}</td>" for _, rows in entries]
    cells += [f"<td>{_number((rows.get(value) or {}).get('calibration'), 3)}</td>"
              for _, rows in entries]
    lines.append(f'<tr class="{"small" if small else ""}">' + "".join(cells) + "</tr>")
  return "".join(lines) + "</table>"


# -- the page --------------------------------------------------------------------------


def _img(path: Optional[str], alt: str) -> str:
  return f'<img src="{html.escape(path)}" alt="{html.escape(alt)}">' if path else ""


def write_html_report(results: Sequence[Mapping[str, Any]], directory: str,
                      title: str = "CVR evaluation report") -> str:
  """Writes DIR/index.html and DIR/images/*.png for one or more evaluation results.

  Args:
    results: evaluation results (evaluation.runner.evaluate, or its JSON loaded back),
      each with a distinct "name"; they should be on the same data for the comparison.
    directory: the report directory (created).
    title: the page title.

  Returns:
    The path of index.html.
  """
  if not results:
    raise ValueError("no evaluation results to report")
  names = [result["name"] for result in results]
  if len(set(names)) != len(names):
    raise ValueError(f"model names must be distinct, got {names}")
  os.makedirs(directory, exist_ok=True)
  first = results[0]
  truth = first.get("truth")
  nav = ['<a href="#overview">overview</a>', '<a href="#comparison">comparison</a>']
  nav += [f'<a href="#model-{_safe(n)}">{html.escape(n)}</a>' for n in names]
  slice_features = []
  for result in results:
    slice_features += [f for f in (result.get("slices") or {}) if f not in slice_features]
  if slice_features:
    nav.append('<a href="#slices">slices</a>')

  parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
           f"{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1><nav>{''.join(nav)}</nav>"]
  overview = [f"<li>data: <code>{html.escape(str(first.get('file_pattern', first.get('data'))))}"
              f"</code>, {_number(first.get('examples'))} examples</li>"]
  if truth:
    overview.append(f"<li>simulator truth: <code>{html.escape(str(truth['path']))}</code>, "
                    f"{truth['matched']} rows matched</li>")
  else:
    overview.append("<li>no simulator truth: Bayes AUCs and truth curves are absent</li>")
  for result in results:
    overview.append(f"<li>model <b>{html.escape(result['name'])}</b>: "
                    f"<code>{html.escape(str(result.get('saved_model')))}</code></li>")
  parts.append('<section id="overview"><h2>Overview</h2><ul>' + "".join(overview)
               + "</ul></section>")

  parts.append('<section id="comparison"><h2>Comparison</h2>'
               '<p class="note">cvr: over clicked exposures; cvr/all: the predicted cvr over '
               'every exposure against the true p(purchase | click, x) (AUC column: the '
               'expected AUC; calibration: sum predicted / sum true, with the clicked and '
               'unclicked exposures apart). Bayes AUC: the AUC of the true probability on '
               'the same rows; gap = Bayes AUC - AUC. Calibration off by more than 20% in '
               'red.</p>' + metrics_table(results)
               + _img(comparison_figure(results, directory), "reliability of every model")
               + "</section>")

  for result in results:
    anchor = _safe(result["name"])
    parts.append(
        f'<section id="model-{anchor}" class="model"><h2>Model {html.escape(result["name"])}'
        f"</h2>{metrics_table([result], with_model=False)}"
        f"<h3>Reliability</h3><p class=\"note\">Equal-mass bins of the prediction: mean "
        f"predicted vs observed rate (95% binomial intervals; a bin without a positive is a "
        f"hollow triangle on the bottom edge), the dashed curve is the mean true probability "
        f"of the same bins (what a Bayes-optimal model would observe); below, each bin's "
        f"exposures and positives.</p>"
        + _img(reliability_figure(result, directory), f"reliability of {result['name']}")
        + _img(entire_space_figure(result, directory), f"entire-space cvr of {result['name']}")
        + "<h3>Score distributions</h3>"
        + _img(score_figure(result, directory), f"score distributions of {result['name']}")
        + "</section>")

  if slice_features:
    parts.append('<section id="slices"><h2>Slices</h2><p class="note">Per value of each '
                 'feature: the exposures, positives and rate of the task\'s rows, and each '
                 'model\'s AUC and calibration. A slice with fewer than '
                 f'{first.get("slices", {}).get(slice_features[0], {}).get("min_positives", "?")}'
                 ' positives (or negatives) is marked <span class="badge">small</span>: its '
                 'numbers are noisy, not hidden.</p>')
    for feature in slice_features:
      parts.append(f'<h3 id="slice-{_safe(feature)}">{html.escape(feature)}</h3>'
                   + _img(slice_figure(feature, results, directory), f"AUC by {feature}"))
      for task in MAIN_TASKS + tuple(t for t in _tasks(results) if t not in MAIN_TASKS):
        table = slice_table(feature, task, results)
        if table:
          rows = table.count("<tr") - 1
          small = table.count('<tr class="small">')
          parts.append(f"<details{' open' if rows <= OPEN_SLICE_ROWS else ''}><summary>"
                       f"<b>{html.escape(feature)}: {html.escape(task)}</b> ({rows} values, "
                       f"{small} small)</summary>{table}</details>")
    parts.append("</section>")
  parts.append(CHECK_SCRIPT + "</body></html>")
  path = os.path.join(directory, INDEX)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(parts))
  return path
