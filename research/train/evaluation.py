"""Evaluation: mean token loss over fixed validation batches (the same batches every time)."""
from __future__ import annotations

import jax
import numpy as np


def evaluate(eval_fn, params, device_batches) -> float:
  """Exact mean over all weighted tokens: sums on device, one transfer at the end."""
  totals = [eval_fn(params, batch) for batch in device_batches]
  sums = np.asarray(jax.device_get(totals), np.float64)  # [num_batches, 2]
  return float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0))
