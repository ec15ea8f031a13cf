"""One training run's report: charts of its metrics.jsonl under OUT/plots/ (loss.png: training and
eval loss; learning_rate.png; throughput.png: tokens/s and MFU; eval_metrics.png: every eval_<name>)
and a printed summary from its summary.json (final eval metrics, steps, tokens, time, device-hours,
cost). A chart whose keys the run never logged is skipped with a one-line reason."""
from __future__ import annotations

import os

from research.sweeps import figures, runs
from research.sweeps.table import format_number


def _need(c: dict, *keys: str) -> None:
  missing = [k for k in keys if k not in c]
  if len(missing) == len(keys):
    raise ValueError(f"metrics.jsonl has no {' or '.join(keys)}")


def plot_loss(c: dict, path: str) -> str:
  _need(c, "loss", "eval_loss")
  fig, (ax,) = figures.figure()
  if "loss" in c:
    ax.plot(*c["loss"], label="train loss", linewidth=1.2)
  if "eval_loss" in c:
    ax.plot(*c["eval_loss"], marker="o", label="eval loss")
  ax.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
  ax.grid(alpha=0.3)
  ax.legend()
  return figures.save(fig, path)


def plot_learning_rate(c: dict, path: str) -> str:
  _need(c, "learning_rate")
  fig, (ax,) = figures.figure()
  ax.plot(*c["learning_rate"])
  ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
  ax.grid(alpha=0.3)
  return figures.save(fig, path)


def plot_throughput(c: dict, path: str) -> str:
  _need(c, "tokens_per_sec", "mfu")
  fig, (tokens_ax, mfu_ax) = figures.figure(1, 2, width=5.2)
  for ax, key, label in ((tokens_ax, "tokens_per_sec", "tokens/s"), (mfu_ax, "mfu", "MFU")):
    if key in c:
      ax.plot(*c[key])
    ax.set(xlabel="step", ylabel=label, title=label + ("" if key in c else " (not logged)"))
    ax.grid(alpha=0.3)
  return figures.save(fig, path)


def plot_eval_metrics(c: dict, path: str) -> str:
  keys = runs.eval_keys(c)
  if not keys:
    raise ValueError("metrics.jsonl has no eval_<name> key")
  cols = min(3, len(keys))
  rows = -(-len(keys) // cols)
  fig, axes = figures.figure(rows, cols, width=4.4, height=3.4)
  for ax, key in zip(axes, keys):
    ax.plot(*c[key], marker="o")
    ax.set(xlabel="step", title=key)
    ax.grid(alpha=0.3)
  for ax in axes[len(keys):]:
    ax.set_axis_off()
  return figures.save(fig, path)


CHARTS = (("loss.png", plot_loss), ("learning_rate.png", plot_learning_rate),
          ("throughput.png", plot_throughput), ("eval_metrics.png", plot_eval_metrics))


def summary_lines(run_dir: str, summary: dict | None, c: dict) -> list[str]:
  if not summary:
    last = max((int(s[-1]) for s, _ in c.values() if len(s)), default=0)
    return [f"run {run_dir}: no summary.json (not completed); metrics up to step {last}"]
  compute = summary.get("compute") or {}
  final = summary.get("final_eval") or {}
  lines = [f"run {run_dir}: " + ("completed" if not summary.get("preempted") else "preempted")
           + (f" ({summary['stopped']})" if summary.get("stopped") else "")]
  if final:
    lines.append("  final eval: " + ", ".join(f"{k} {format_number(v, 'final')}" for k, v in final.items()))
  cost = compute.get("estimated_cost")
  lines.append("  " + ", ".join([
      f"steps {format_number(summary.get('steps'))}", f"tokens {format_number(summary.get('tokens_seen'))}",
      f"parameters {format_number(summary.get('parameters'))}",
      f"train {format_number(summary.get('train_seconds'), 'wall_seconds')} s",
      f"total {format_number(summary.get('total_seconds'), 'wall_seconds')} s",
      f"device-hours {format_number(compute.get('device_hours'))}",
      f"cost {format_number(cost) if cost is not None else '- (no train.cost_per_device_hour)'}"]))
  return lines


def write_run_report(run_dir: str, log=print, out_dir: str | None = None) -> dict:
  """Charts under OUT/plots/ (OUT: the run's dir unless given) and the printed summary;
  returns {"plots": [paths], "summary": summary.json or None}."""
  out_dir = out_dir or run_dir
  c = runs.run_curves(run_dir)
  summary = runs.read_summary(run_dir)
  for line in summary_lines(run_dir, summary, c):
    log(line)
  written = []
  for name, draw in CHARTS:
    try:
      written.append(draw(c, os.path.join(out_dir, "plots", name)))
    except ValueError as e:
      log(f"plots: skipped {name}: {e}")
  log(f"plots: {len(written)} charts under {os.path.join(out_dir, 'plots')}")
  return {"plots": written, "summary": summary}
