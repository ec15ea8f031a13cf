"""A sweep's charts, PNGs under OUT/plots/: the metric against each swept parameter
(metric_vs_<key>.png), every trial's loss curves on one chart (loss_curves.png), and Optuna's
parallel coordinates and importances (optuna_plots.py). A chart that cannot be drawn is skipped
with a one-line reason; a report never fails for want of one."""
from __future__ import annotations

import os

import numpy as np

from research.sweeps import figures, optuna_plots
from research.sweeps.figures import STATUS_STYLE
from research.sweeps.table import format_number, param_names, value_of

LEGEND_TRIALS = 10      # more trials than this: no per-trial legend, only the statuses


def _is_log(spec: dict | None, values: list) -> bool:
  if spec:
    return spec.get("kind") == "loguniform" or (spec.get("kind") == "int" and bool(spec.get("log")))
  positive = [v for v in values if v > 0]
  return len(positive) == len(values) and len(values) > 1 and max(values) / min(values) >= 100


def _numeric(values: list) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def metric_vs_param(sweep: dict, rows: list[dict], name: str, path: str) -> str:
  """The metric (final; a pruned trial's last report) of each trial against param `name`; failed
  trials, which have no value, as crosses along the top edge at their param value."""
  have = [r for r in rows if name in r["params"]]
  if not have:
    raise ValueError(f"no trial has {name!r}")
  spec = sweep["space"].get(name)
  values = [r["params"][name] for r in have]
  numeric = _numeric(values) and (spec or {}).get("kind") != "choice"   # a choice is drawn as categories
  if numeric:
    xs = {id(r): float(r["params"][name]) for r in have}
  else:
    categories = [format_number(v) for v in (spec or {}).get("values") or []]
    categories += sorted({format_number(v) for v in values} - set(categories))
    xs = {id(r): float(categories.index(format_number(r["params"][name]))) for r in have}
  fig, (ax,) = figures.figure()
  best = next((r for r in have if r["status"] == "complete" and value_of(r) is not None), None)
  for status, style in STATUS_STYLE.items():
    group = [r for r in have if r["status"] == status]
    with_value = [r for r in group if value_of(r) is not None]
    if with_value:
      ax.scatter([xs[id(r)] for r in with_value], [value_of(r) for r in with_value], color=style["color"],
                 marker=style["marker"], s=40, label=f"{status} ({len(with_value)})",
                 facecolors="none" if status == "pruned" else None)
    without = [r for r in group if value_of(r) is None]
    if without:
      known = [value_of(r) for r in have if value_of(r) is not None] or [0.0]
      ax.scatter([xs[id(r)] for r in without], [float(np.median(known))] * len(without), alpha=0)  # in the x limits
      ax.scatter([xs[id(r)] for r in without], [0.97] * len(without), transform=ax.get_xaxis_transform(),
                 color=style["color"], marker="x", s=50, label=f"{status}, no value ({len(without)})")
  _lines_per_other_param(ax, sweep, have, name, xs)
  if best is not None:
    ax.scatter([xs[id(best)]], [value_of(best)], marker="*", s=220, color="gold", edgecolors="black", zorder=3,
               label=f"best {format_number(value_of(best), 'final')}")
  if numeric and _is_log(spec, list(xs.values())):
    ax.set_xscale("log")
  if not numeric:
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlim(-0.5, len(categories) - 0.5)
  ax.set_xlabel(name)
  ax.set_ylabel(sweep["metric"])
  ax.set_title(f"{sweep['name']}: {sweep['metric']} vs {name}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return figures.save(fig, path)


def _lines_per_other_param(ax, sweep: dict, rows: list[dict], name: str, xs: dict) -> None:
  """With two swept parameters, the completed trials that share the other one's value joined by a
  line (the learning rate curve of each width, say)."""
  others = [n for n in param_names(sweep, rows) if n != name]
  if len(others) != 1:
    return
  other = others[0]
  groups: dict = {}
  for r in rows:
    if r["status"] == "complete" and value_of(r) is not None and other in r["params"]:
      groups.setdefault(format_number(r["params"][other]), []).append(r)
  if not 1 < len(groups) <= LEGEND_TRIALS:
    return
  for label, group in groups.items():
    group.sort(key=lambda r: xs[id(r)])
    ax.plot([xs[id(r)] for r in group], [value_of(r) for r in group], alpha=0.6, linewidth=1.2,
            label=f"{other.split('.')[-1]}={label}")


def _label(row: dict, names: list[str]) -> str:
  params = ", ".join(f"{n.split('.')[-1]}={format_number(row['params'][n])}" for n in names if n in row["params"])
  return f"{params} ({row['status']})" if params else f"{row['trial_id']} ({row['status']})"


def loss_curves(sweep: dict, rows: list[dict], curves: dict, path: str) -> str:
  """Training loss vs step for every trial; beside it the sweep's metric (or eval_loss) vs step."""
  metric = sweep["metric"] if any(sweep["metric"] in c for c in curves.values()) else "eval_loss"
  drawn = [r for r in rows if "loss" in curves.get(r["trial_id"], {}) or metric in curves.get(r["trial_id"], {})]
  if not drawn:
    raise ValueError("no trial has a metrics.jsonl with loss values")
  fig, (train_ax, eval_ax) = figures.figure(1, 2)
  names = param_names(sweep, rows)
  colours = iter(np.linspace(0, 1, max(2, len(drawn))))
  legend = len(drawn) <= LEGEND_TRIALS
  import matplotlib
  cmap = matplotlib.colormaps["viridis"]
  for row in drawn:
    c = curves[row["trial_id"]]
    style = STATUS_STYLE.get(row["status"], STATUS_STYLE["unknown"])
    colour = cmap(next(colours)) if row["status"] == "complete" else style["color"]
    label = _label(row, names) if legend else None
    for ax, key in ((train_ax, "loss"), (eval_ax, metric)):
      if key in c:
        steps, values = c[key]
        ax.plot(steps, values, color=colour, linestyle=style["linestyle"], linewidth=1.2,
                marker="o" if key != "loss" else None, markersize=3, label=label)
  for ax, key in ((train_ax, "training loss"), (eval_ax, metric)):
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  train_ax.set_title(f"{sweep['name']}: training loss ({len(drawn)} trials)")
  eval_ax.set_title(f"{metric} (dashed: pruned, dotted: failed)")
  if legend:
    eval_ax.legend(fontsize=7)
  return figures.save(fig, path)


def write_sweep_plots(sweep: dict, rows: list[dict], curves: dict, out_dir: str, log=print) -> list[str]:
  """Every chart that can be drawn, under OUT/plots/; returns their paths."""
  plots = os.path.join(out_dir, "plots")
  jobs = [(f"metric_vs_{figures.file_safe(n)}.png", lambda p, n=n: metric_vs_param(sweep, rows, n, p))
          for n in param_names(sweep, rows)]
  jobs.append(("loss_curves.png", lambda p: loss_curves(sweep, rows, curves, p)))
  study = []   # rebuilt once, on first use, for both Optuna charts

  def optuna_chart(draw):
    def run(p):
      if not study:
        study.append(optuna_plots.rebuild_study(sweep, rows))
      return draw(sweep, rows, p, study=study[0])
    return run
  jobs.append(("parallel_coordinates.png", optuna_chart(optuna_plots.parallel_coordinates)))
  jobs.append(("importances.png", optuna_chart(optuna_plots.importances)))
  written = []
  for name, draw in jobs:
    try:
      written.append(draw(os.path.join(plots, name)))
    except Exception as e:    # noqa: BLE001  a chart is optional: say why and go on
      log(f"plots: skipped {name}: {_reason(e)}")
  return written


def _reason(error: Exception) -> str:
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"

