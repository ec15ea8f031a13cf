"""The host side of the training loop: each step's metrics (non-finite handling, windowed logging,
throughput and MFU) and evaluation. The device loop itself is in trainer.py; this keeps what happens
after each step in one object a reader can follow."""
from __future__ import annotations

import math
import time

import jax
import numpy as np

from research.train import mfu as mfu_lib
from research.train.evaluation import evaluate_sums


class NonFiniteError(RuntimeError):
  """A step's loss, gradient or updated parameters were NaN/Inf and train.nonfinite is 'stop', or it
  is 'skip' and more than train.max_consecutive_skips steps in a row were skipped."""


class StepLog:
  """finish(step, metrics) after each step; evaluate(step, params) at evaluation points."""

  def __init__(self, cfg, task, writer, progress, eval_fn, eval_batches, flops_per_token: float, peak: float,
               reports=None, eval_tasks=None):
    self.t, self.task = cfg.train, task
    self.eval_tasks = eval_tasks  # research.evals.training.TrainingEvals (train.eval_tasks) or None
    self.reports, self.report = reports, None  # reports: EvalReports (eval/<step>.json) or None
    self.writer, self.progress = writer, progress
    self.eval_fn, self.eval_batches = eval_fn, eval_batches
    self.fpt, self.peak = flops_per_token, peak
    self.tokens_per_step = self.t.batch_size * self.t.seq_len
    self.consecutive_skips = 0
    self._reset_window()

  def _reset_window(self) -> None:
    self.losses, self.grad_norms, self.steps, self.t0 = [], [], 0, time.time()

  def exclude_elapsed(self) -> None:
    """Time since the last step (evaluation, saving) is not training throughput."""
    self.t0 = time.time()

  def evaluate(self, step: int, params, record: bool = True) -> dict[str, float]:
    """The task's metrics on the fixed validation batches, written as eval_<name> (and the task's
    report to eval/<step>.json) unless not `record` (a step evaluated again: the best, restored)."""
    sums = evaluate_sums(self.eval_fn, params, self.eval_batches)
    metrics = self.task.metrics(sums)
    assert tuple(metrics) == self.task.metric_names, f"{self.task.name}: metrics {tuple(metrics)} vs metric_names"
    self.report = self.task.eval_report(sums)
    written = {f"eval_{k}": v for k, v in metrics.items()}
    if self.eval_tasks is not None:  # on every process: the scoring is collective
      written.update(self.eval_tasks.run(params))
    if record:
      self.writer.write(step, written)
      self.progress.write(f"step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in written.items()))
      if self.report is not None and self.reports is not None:
        self.reports.write(step, self.report)
    return written

  def write_figures(self, step: int) -> list[str]:
    """The task's figures of the last evaluation's report (the run's final one) under eval/."""
    if self.report is None or self.reports is None:
      return []
    return self.reports.write_files(self.task.report_figures(self.report, step))

  def finish(self, step: int, metrics) -> None:
    """Host side of step `step` (1-based), run after step+1 was dispatched so the device never waits."""
    t, m = self.t, jax.device_get(metrics)
    if not m["finite"]:
      self._nonfinite(step, m)
    else:
      self.consecutive_skips = 0
      self.losses.append(float(m["loss"]))
      self.grad_norms.append(float(m["grad_norm"]))
    self.steps += 1
    if step % t.log_every == 0 or step == t.num_steps:
      elapsed = max(time.time() - self.t0, 1e-9)
      tps = self.steps * self.tokens_per_step / elapsed
      record = {"loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                "learning_rate": float(m["learning_rate"]),
                "grad_norm": float(np.mean(self.grad_norms)) if self.grad_norms else float("nan"),
                "tokens_per_sec": tps, "mfu": mfu_lib.mfu(self.fpt, tps, self.peak),
                "step_time_ms": 1000 * elapsed / self.steps, "skipped_steps": int(m["skipped_steps"]),
                "tokens_seen": step * self.tokens_per_step}
      if "l1_penalty" in m:
        record["l1_penalty"] = float(m["l1_penalty"])
      self.writer.write(step, record)
      self.progress.update(step, f"loss {record['loss']:.4f} lr {record['learning_rate']:.2e} "
                           f"{tps:,.0f} tok/s mfu {100 * record['mfu']:.1f}%", log_line=True)
      self._reset_window()
    else:
      self.progress.update(step, f"loss {float(m['loss']):.4f}", log_line=False)

  def _nonfinite(self, step: int, m) -> None:
    t = self.t
    loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
    if math.isfinite(loss) and math.isfinite(grad_norm) and not m["update_finite"]:
      msg = (f"step {step}: loss {loss} and grad norm {grad_norm} are finite but the updated parameters "
             f"are not (learning rate {float(m['learning_rate']):.3g}); the update was not applied")
    else:
      msg = f"step {step}: loss {loss}, grad norm {grad_norm} is not finite; the update was not applied"
    if t.nonfinite == "stop":
      self.writer.write(step, {"nonfinite": True, "loss": loss, "grad_norm": grad_norm})
      raise NonFiniteError(msg + ". Set --config.train.nonfinite=skip to skip such updates.")
    self.consecutive_skips += 1
    if t.max_consecutive_skips and self.consecutive_skips > t.max_consecutive_skips:
      self.writer.write(step, {"nonfinite": True, "loss": loss, "grad_norm": grad_norm,
                               "skipped_steps": int(m["skipped_steps"])})
      raise NonFiniteError(f"step {step}: {self.consecutive_skips} steps in a row skipped for NaN/Inf, more than "
                           f"train.max_consecutive_skips={t.max_consecutive_skips}; the run is not learning "
                           "(lower optimizer.learning_rate, check the data, or raise the limit; 0: no limit)")
    self.progress.write(msg + f" (skipped; {int(m['skipped_steps'])} so far)")
