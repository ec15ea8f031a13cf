"""A seeded shuffle of training rows in windows, with a small, exact checkpoint.

Reads `window` rows from its parent, emits them in a permutation drawn from (seed, window index), and
checkpoints only the parent's state where the window began plus how many rows of it were emitted:
restoring re-reads that window and skips them, so a resume continues with exactly the next row.

Why not grain.experimental.WindowShuffleIterDataset: it restores its parent to the state the parent
had before its first element, and Grain's ConcatThenSplitIterDataset (data.packing=chunk) does not
come back exactly from that initial state (measured with grain 0.2.18: other rows), so a run resumed
within the first window would read other data. Here a parent that has not moved yet is left alone.
"""
from __future__ import annotations

import copy

import grain
import numpy as np


class RowShuffleIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, window: int, seed: int):
    super().__init__(parent)
    self.window, self.seed = window, seed

  def __iter__(self) -> "RowShuffleIterator":
    return RowShuffleIterator(self._parent.__iter__(), self.window, self.seed)

  def __str__(self) -> str:
    return f"RowShuffleIterDataset(window={self.window})"


class RowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, window: int, seed: int):
    super().__init__(parent)
    self.window, self.seed = window, seed
    self._index = 0                  # which window is (or will next be) emitted
    self._emitted = 0                # rows of it already returned
    self._rows: list = []            # the current window, in emission order
    self._start_state = None         # the parent's state where the current window began
    self._parent_moved = False

  def _fill(self) -> None:
    self._start_state = copy.deepcopy(self._parent.get_state()) if self._parent_moved else None
    rows = []
    for _ in range(self.window):
      try:
        rows.append(next(self._parent))
      except StopIteration:
        break
    self._parent_moved = True
    order = np.random.default_rng([self.seed, self._index]).permutation(len(rows))
    self._rows = [rows[i] for i in order]

  def __next__(self):
    if self._emitted == len(self._rows):
      if self._rows:
        self._index += 1
      self._emitted = 0
      self._fill()
      if not self._rows:
        raise StopIteration
    row = self._rows[self._emitted]
    self._emitted += 1
    return row

  def get_state(self) -> dict:
    if self._emitted == len(self._rows):  # at a window boundary: the next window starts from here
      start = copy.deepcopy(self._parent.get_state()) if self._parent_moved else None
      return {"window_start": start, "window": self._index + (1 if self._rows else 0), "emitted": 0}
    return {"window_start": copy.deepcopy(self._start_state), "window": self._index, "emitted": self._emitted}

  def set_state(self, state: dict) -> None:
    if state["window_start"] is None and self._parent_moved:
      raise ValueError("a state from before the first window restores only into a fresh iterator")
    if state["window_start"] is not None:
      self._parent.set_state(copy.deepcopy(state["window_start"]))
      self._parent_moved = True
    self._index, self._rows, self._emitted = state["window"], [], 0
    if state["emitted"]:
      self._fill()
      self._emitted = state["emitted"]

  def __str__(self) -> str:
    return f"RowShuffleIterator(window={self.window})"
