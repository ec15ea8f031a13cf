"""Evaluation: the task's metrics over fixed validation batches (the same batches every time)."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def evaluate(eval_fn, params, device_batches, metrics: Callable[[dict], dict]) -> dict[str, float]:
  """Exact: each batch's summed statistics stay on device, are fetched once, summed in float64 and
  turned into metrics by the task (`metrics(sums)`)."""
  per_batch = jax.device_get([eval_fn(params, batch) for batch in device_batches])
  sums = {k: float(np.sum(np.asarray([b[k] for b in per_batch], np.float64))) for k in per_batch[0]}
  return metrics(sums)
