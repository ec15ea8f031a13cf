"""Early stopping, for any task: stop after `train.early_stopping_patience` evaluations in a row that
did not improve `checkpoint.best_metric` (by `checkpoint.best_mode`, by more than
`train.early_stopping_min_delta`).

The trainer shows it every evaluation during training and the final one (not the one at step 0:
that step has no checkpoint to return to). A step that improved must be kept, so the trainer saves
it and the checkpoint manager's keep_best (at least 1 with early stopping) keeps it; the step that
stops the run is saved too, so a rerun of the same command finds the run stopped instead of
training on. The counter's state goes into each checkpoint's meta, so a resumed run decides
exactly as an uninterrupted one. At the end the best step's parameters are restored.
"""
from __future__ import annotations

import math


class EarlyStopping:

  def __init__(self, metric: str, mode: str, patience: int, min_delta: float = 0.0, state: dict | None = None):
    if mode not in ("min", "max"):
      raise ValueError(f"checkpoint.best_mode={mode!r} is not one of min, max")
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    state = state or {}
    self.best_value: float | None = state.get("best_value")
    self.best_step: int | None = state.get("best_step")
    self.waited: int = state.get("waited", 0)          # evaluations since the best, without improvement
    self.stopped_at: int | None = state.get("stopped_at")

  @classmethod
  def from_config(cls, cfg, state: dict | None = None) -> "EarlyStopping | None":
    """None when train.early_stopping_patience is 0; `state`: a checkpoint's (resuming)."""
    t = cfg.train
    if not t.early_stopping_patience:
      return None
    return cls(cfg.checkpoint.best_metric, cfg.checkpoint.best_mode, t.early_stopping_patience,
               t.early_stopping_min_delta, state)

  @property
  def stopped(self) -> bool:
    return self.stopped_at is not None

  def improves(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best_value is None:
      return True
    if self.mode == "min":
      return value < self.best_value - self.min_delta
    return value > self.best_value + self.min_delta

  def observe(self, step: int, metrics: dict | None, can_stop: bool = True) -> bool:
    """Counts the evaluation of `step` (none: nothing to count); True when the step must be kept (it
    is the new best, or it stops the run). The final evaluation (`can_stop=False`) may be the best,
    but stops nothing: the run ends there anyway."""
    if metrics is None or self.stopped:
      return False
    value = float(metrics[self.metric])
    if self.improves(value):
      self.best_value, self.best_step, self.waited = value, step, 0
      return True
    self.waited += 1
    if can_stop and self.waited >= self.patience:
      self.stopped_at = step
      return True
    return False

  def state(self) -> dict:
    """JSON-able; EarlyStopping(..., state=state()) continues where this one is."""
    return {"best_value": self.best_value, "best_step": self.best_step, "waited": self.waited,
            "stopped_at": self.stopped_at}

  def summary(self) -> dict:
    return {"metric": self.metric, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
            **self.state()}

  def line(self) -> str:
    best = (f"best {self.metric} {self.best_value:.4f} at step {self.best_step}" if self.best_step is not None
            else f"no finite {self.metric}")
    if self.stopped:
      return (f"early stopping: stopped at step {self.stopped_at}, {self.waited} evaluation(s) without "
              f"improving {self.metric} by more than {self.min_delta:g}; {best}")
    return f"early stopping: did not stop (patience {self.patience}); {best}"
