"""Preemption: SIGTERM (what TPU VMs, GCE and SLURM send before taking a machine) or SIGINT (Ctrl-C)
asks the trainer to finish the current step, save it, wait until the save is durable, and exit 0.

The watcher is installed for the whole run, from the first thing `train()` does to the end of the last
save, so a signal during corpus building, tokenizer training, compilation or restoring is noticed
(the run stops cleanly before its first step, having written nothing half-way), and a signal while
the final save is being written does not kill it. A second signal while saving is reported and
ignored: the save finishing is what keeps the run.

With several processes, all must save the same step: JAX's preemption sync point (the coordination
service learns of a SIGTERM on any host) tells every host at the same step. JAX's runtime owns
SIGTERM there; SIGINT is turned into a SIGTERM to this process so that it goes the same way.
"""
from __future__ import annotations

import os
import signal

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:

  def __init__(self, log=print):
    self._flag = False
    self._previous: dict = {}
    self.multi = jax.process_count() > 1
    self.log = log
    self.signal_name = ""

  def __enter__(self) -> "PreemptionWatcher":
    for sig in SIGNALS:
      if self.multi and sig == signal.SIGTERM:
        continue  # JAX's preemption notifier handles it and tells the other hosts
      self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.multi:  # SIGINT: hand it to JAX's notifier as a SIGTERM, so every host stops at one step
      self._flag = True
      os.kill(os.getpid(), signal.SIGTERM)
      return
    if self._flag:
      self.log(f"preemption: {name} again; already stopping, the checkpoint is being written")
      return
    self._flag = True
    self.signal_name = name

  @property
  def requested(self) -> bool:
    """A signal arrived on this process (checked before the loop). On multi-host a SIGTERM goes to
    JAX's notifier instead and is seen at the first step's sync point, which then saves that step."""
    return self._flag

  def reached(self, step: int) -> bool:
    """True once a preemption notice arrived; on multi-host, at the same step on every host."""
    if self.multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag
