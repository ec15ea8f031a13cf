"""Reading one finished or unfinished run's workdir for reports: its metrics.jsonl as curves and its
summary.json, tolerant of what a killed run leaves (no file, a torn last line, NaN written as the
string "nan"). Read-only; the trainer writes these files (research/train/metrics.py)."""
from __future__ import annotations

import json
import math
import os

import numpy as np

NOT_CURVES = ("step", "time")


def metric_value(record: dict, metric: str):
  """A (dotted) key of a dict: 'final_eval.eval_loss', 'compute.device_hours'."""
  node = record
  for part in metric.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def final_metric(summary: dict, metric: str):
  """The metric of a finished run: an eval_<name> from the final evaluation, else a summary key."""
  value = metric_value(summary.get("final_eval") or {}, metric)
  return value if value is not None else metric_value(summary, metric)


class MetricsTail:
  """New lines of a run's metrics.jsonl as the run writes them (a resumed run truncates the file
  to its checkpoint's step first: read again from the start)."""

  def __init__(self, path: str):
    self.path, self.offset, self.partial = path, 0, ""

  def read(self) -> list[dict]:
    try:
      size = os.path.getsize(self.path)
    except OSError:
      return []
    if size < self.offset:
      self.offset, self.partial = 0, ""
    with open(self.path) as f:
      f.seek(self.offset)
      text = self.partial + f.read()
      self.offset = f.tell()
    lines = text.split("\n")
    self.partial = lines.pop()
    out = []
    for line in lines:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
    return out


def read_json(path: str):
  """The parsed file, or None when it is missing or not JSON (a run killed mid-write)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def read_metrics(run_dir: str) -> list[dict]:
  """Every complete record of RUN/metrics.jsonl in file order ([] when there is none)."""
  return MetricsTail(os.path.join(run_dir, "metrics.jsonl")).read()


def _number(value):
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
    return float(value)        # the trainer writes non-finite floats as strings
  return None


def curves(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """key -> (steps, values) for every numeric key of the records, steps ascending; the last record
  of a step wins (a resumed run writes its steps again)."""
  by_key: dict[str, dict[int, float]] = {}
  for record in records:
    if "step" not in record:
      continue
    for key, value in record.items():
      number = _number(value)
      if key not in NOT_CURVES and number is not None:
        by_key.setdefault(key, {})[int(record["step"])] = number
  out = {}
  for key, points in by_key.items():
    steps = np.asarray(sorted(points), dtype=np.int64)
    out[key] = (steps, np.asarray([points[s] for s in steps], dtype=float))
  return out


def run_curves(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  return curves(read_metrics(run_dir))


def read_summary(run_dir: str) -> dict | None:
  """RUN/summary.json (written only when a run completes), or None."""
  return read_json(os.path.join(run_dir, "summary.json"))


def summary_metric(summary: dict | None, metric: str):
  """The metric of a finished run (final_eval's eval_<name>, else a summary key), finite, or None."""
  value = final_metric(summary, metric) if summary else None
  return float(value) if value is not None and math.isfinite(value) else None


def eval_keys(run_curves_: dict) -> list[str]:
  """The eval_<name> curves, eval_loss first."""
  keys = sorted(k for k in run_curves_ if k.startswith("eval_"))
  return sorted(keys, key=lambda k: k != "eval_loss")
