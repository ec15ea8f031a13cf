"""A sweep's trials as a table: DIR/sweep.json and DIR/trials/<id>/trial.json read into one row per
trial, best first, written as CSV and printed aligned. A field a trial's record lacks (a killed
trial, or one whose record was never written) is read from its run's summary.json and
metrics.jsonl where they have it, else left empty. Reads only; the worker writes these files."""
from __future__ import annotations

import csv
import math
import os

from research.sweeps import runs

COLUMNS_BEFORE = ("trial_id", "number", "status")
COLUMNS_AFTER = ("seed", "final", "best", "best_step", "steps", "tokens", "parameters", "wall_seconds",
                 "device_hours", "cost", "error")
# Completed trials first, then pruned / still running, failed last; by the metric within each.
STATUS_ORDER = {"complete": 0, "pruned": 1, "running": 1, "interrupted": 1, "unknown": 1, "failed": 2}


class ReportError(Exception):
  """A directory that is not what a report reads."""


def read_sweep(sweep_dir: str) -> dict:
  """DIR/sweep.json with defaults for the keys a report uses."""
  sweep = runs.read_json(os.path.join(sweep_dir, "sweep.json"))
  if not isinstance(sweep, dict):
    raise ReportError(f"{sweep_dir}: no readable sweep.json (expected a sweep's workdir)")
  sweep.setdefault("name", os.path.basename(os.path.normpath(sweep_dir)))
  sweep["space"] = sweep.get("space") or {}
  sweep["metric"] = sweep.get("metric") or "eval_loss"
  sweep["direction"] = sweep.get("direction") or "minimize"
  return sweep


def trial_dirs(sweep_dir: str) -> list[str]:
  root = os.path.join(sweep_dir, "trials")
  if not os.path.isdir(root):
    return []
  return [os.path.join(root, name) for name in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, name))]


def _trial_row(trial_dir: str, sweep: dict) -> dict:
  record = runs.read_json(os.path.join(trial_dir, "trial.json"))
  record = record if isinstance(record, dict) else {}
  summary = runs.read_summary(trial_dir)
  metric, direction = sweep["metric"], sweep["direction"]
  status = record.get("status") or ("complete" if summary else "unknown")
  row = {"trial_id": str(record.get("trial_id") or os.path.basename(trial_dir)), "number": record.get("number"),
         "status": status, "params": dict(record.get("params") or {}), "dir": trial_dir}
  for key in COLUMNS_AFTER:
    row[key] = record.get(key)
  compute = (summary or {}).get("compute") or {}
  if row["final"] is None and status in ("complete", "pruned"):
    row["final"] = runs.summary_metric(summary, metric)
  needs_metrics = row["best"] is None or row["steps"] is None or row["tokens"] is None
  values = runs.run_curves(trial_dir).get(metric) if needs_metrics else None
  if row["best"] is None and values is not None and len(values[1]):
    finite = [(v, int(s)) for s, v in zip(*values) if math.isfinite(v)]
    if finite:
      row["best"], row["best_step"] = (min if direction == "minimize" else max)(finite)
  fallbacks = {"steps": (summary or {}).get("steps"), "tokens": (summary or {}).get("tokens_seen"),
               "parameters": (summary or {}).get("parameters"), "device_hours": compute.get("device_hours"),
               "cost": compute.get("estimated_cost"), "wall_seconds": (summary or {}).get("total_seconds")}
  for key, value in fallbacks.items():
    if row[key] is None:
      row[key] = value
  if row["steps"] is None or row["tokens"] is None:
    records = runs.read_metrics(trial_dir)
    if row["steps"] is None and records:
      row["steps"] = max(int(r.get("step", 0)) for r in records)
    if row["tokens"] is None:
      row["tokens"] = max((int(r["tokens_seen"]) for r in records if isinstance(r.get("tokens_seen"), int)), default=None)
  return row


def value_of(row: dict):
  """The number a trial is ranked by: its final metric, else its best (a pruned trial's last report)."""
  for key in ("final", "best"):
    value = row.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
      return float(value)
  return None


def sort_rows(rows: list[dict], direction: str) -> list[dict]:
  sign = 1.0 if direction == "minimize" else -1.0

  def key(row):
    value = value_of(row)
    return (STATUS_ORDER.get(row["status"], 1), value is None, sign * value if value is not None else 0.0,
            row["trial_id"])
  return sorted(rows, key=key)


def param_names(sweep: dict, rows: list[dict]) -> list[str]:
  """The space's keys in declaration order, then any other key a trial's params carry."""
  names = list(sweep["space"])
  for row in rows:
    names += [k for k in row["params"] if k not in names]
  return names


def read_trials(sweep_dir: str) -> tuple[dict, list[dict]]:
  """(sweep.json, one row per trial best first). A row: trial_id, number, status, params {key: value},
  seed, final, best, best_step, steps, tokens, parameters, wall_seconds, device_hours, cost, error,
  dir (the trial's run workdir)."""
  sweep = read_sweep(sweep_dir)
  rows = [_trial_row(d, sweep) for d in trial_dirs(sweep_dir)]
  return sweep, sort_rows(rows, sweep["direction"])


def trial_curves(rows: list[dict]) -> dict[str, dict]:
  """trial_id -> its run's curves (key -> (steps, values), runs.curves); {} for a trial with no metrics."""
  return {row["trial_id"]: runs.run_curves(row["dir"]) for row in rows}


def columns(sweep: dict, rows: list[dict]) -> list[str]:
  return [*COLUMNS_BEFORE, *param_names(sweep, rows), *COLUMNS_AFTER]


def flat(row: dict, names: list[str]) -> dict:
  """A row with its params as columns (a param a conditional trial lacks: None)."""
  return {name: row["params"].get(name) if name in row["params"] else row.get(name) for name in names}


def write_csv(sweep: dict, rows: list[dict], path: str) -> str:
  names = columns(sweep, rows)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"   # renamed into place: several workers may write it at their ends
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=names)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if v is None else v for k, v in flat(row, names).items()})
  os.replace(tmp, path)
  return path


def format_number(value, column: str = "") -> str:
  """A table cell: '-' for nothing; metrics to 4 decimals; 0.003 but 3.0e-05; 7,680 tokens."""
  if value is None or value == "":
    return "-"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if not math.isfinite(value):
    return str(value)
  if column in ("final", "best"):
    return f"{value:.4f}"
  if column == "wall_seconds":
    return f"{value:.1f}"
  if value == 0:
    return "0"
  if 1e-3 <= abs(value) < 1e5:
    return f"{value:.4g}"
  return f"{value:.1e}"


def format_table(sweep: dict, rows: list[dict], max_error: int = 40) -> str:
  """The rows as an aligned text table under a line naming the sweep and its metric."""
  names = [n for n in columns(sweep, rows) if n not in ("number", "seed")]
  if len({r.get("seed") for r in rows if r.get("seed") is not None}) > 1:
    names.insert(names.index("final"), "seed")
  header = [n.replace("optimizer.", "opt.").replace("final", f"final {sweep['metric']}") for n in names]
  cells = []
  for row in rows:
    values = flat(row, names)
    line = [format_number(values[n], n) for n in names]
    if values.get("error"):
      line[-1] = str(values["error"])[:max_error]
    cells.append(line)
  widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
  counts = {}
  for row in rows:
    counts[row["status"]] = counts.get(row["status"], 0) + 1
  title = (f"sweep {sweep['name']}: {len(rows)} trials (" + ", ".join(f"{v} {k}" for k, v in counts.items())
           + f"), {sweep['metric']} ({sweep['direction']}), best first")
  lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
  lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
  return "\n".join(lines)
