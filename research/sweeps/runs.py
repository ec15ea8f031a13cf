"""Reading one finished or unfinished run's workdir for reports: its metrics.jsonl as curves and its
summary.json, tolerant of what a killed run leaves (no file, a torn last line, NaN written as the
string "nan"). Read-only; the trainer writes these files (research/train/metrics.py)."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from research.sweeps.trial_run import MetricsTail, final_metric

NOT_CURVES = ("step", "time")


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
