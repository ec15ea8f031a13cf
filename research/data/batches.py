"""Batches of next-token windows from a token stream (a 1-D array of ids, documents joined by EOS).

Training batch `step` is a pure function of (seed, step): a global set of random window starts, of
which each process takes its own rows. Resuming at step N therefore yields exactly the batches an
uninterrupted run would have seen, and the iterator state is just the step.
Evaluation batches are fixed consecutive windows, the same every time.
"""
from __future__ import annotations

import numpy as np


def _windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
  rows = stream[idx].astype(np.int32)
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": np.ones((len(starts), seq_len), np.float32)}


class TrainBatches:
  """Random windows; `batch(step)` returns this process's rows of global batch `step`."""

  def __init__(self, stream: np.ndarray, batch_size: int, seq_len: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if len(stream) < seq_len + 2:
      raise ValueError(f"the training split has {len(stream)} tokens, fewer than train.seq_len+2={seq_len + 2}")
    if batch_size % process_count:
      raise ValueError(f"train.batch_size={batch_size} is not divisible by the {process_count} processes")
    self.stream, self.batch_size, self.seq_len, self.seed = stream, batch_size, seq_len, seed
    per = batch_size // process_count
    self.rows = slice(process_index * per, (process_index + 1) * per)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    starts = rng.integers(0, len(self.stream) - self.seq_len - 1, size=self.batch_size)
    return _windows(self.stream, starts[self.rows], self.seq_len)


def eval_batches(stream: np.ndarray, batch_size: int, seq_len: int, max_batches: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Consecutive non-overlapping windows; the last batch is padded with zero-weight rows.

  max_batches=0 covers the whole stream.
  """
  num_windows = (len(stream) - 1) // seq_len
  if num_windows < 1:
    raise ValueError(f"the validation split has {len(stream)} tokens, fewer than train.seq_len+1={seq_len + 1}")
  starts = np.arange(num_windows) * seq_len
  if max_batches:
    starts = starts[: max_batches * batch_size]
  per = batch_size // process_count
  batches = []
  for first in range(0, len(starts), batch_size):
    chunk = starts[first:first + batch_size]
    valid = len(chunk)
    chunk = np.pad(chunk, (0, batch_size - valid))
    b = _windows(stream, chunk, seq_len)
    b["weights"][valid:] = 0.0
    rows = slice(process_index * per, (process_index + 1) * per)
    batches.append({k: v[rows] for k, v in b.items()})
  return batches
