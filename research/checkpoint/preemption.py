"""Preemption: SIGTERM (what TPU VMs, GCE and SLURM send before taking a machine) asks the trainer to
finish the current step, save, wait until the save is durable, and exit 0.

With several processes, all must save the same step: JAX's preemption sync point (the coordination
service learns of the signal on any host) tells every host at the same step.
"""
from __future__ import annotations

import signal

import jax


class PreemptionWatcher:

  def __init__(self):
    self._flag = False
    self._previous = None
    self.multi = jax.process_count() > 1

  def __enter__(self) -> "PreemptionWatcher":
    if not self.multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    """True once a preemption notice arrived; on multi-host, at the same step on every host."""
    if self.multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag
