"""Evaluation: the task's metrics over fixed validation batches (the same batches every time)."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def evaluate_sums(eval_fn, params, device_batches) -> dict:
  """Exact: each batch's summed statistics stay on device, are fetched once and summed in float64.
  A scalar statistic sums to a float; an array one (a [C, C] confusion matrix) to a float64 array."""
  per_batch = jax.device_get([eval_fn(params, batch) for batch in device_batches])
  sums = {}
  for k in per_batch[0]:
    total = np.sum(np.asarray([b[k] for b in per_batch], np.float64), axis=0)
    sums[k] = float(total) if total.ndim == 0 else total
  return sums


def evaluate(eval_fn, params, device_batches, metrics: Callable[[dict], dict]) -> dict[str, float]:
  """The task's metrics (`metrics(sums)`) of evaluate_sums."""
  return metrics(evaluate_sums(eval_fn, params, device_batches))
