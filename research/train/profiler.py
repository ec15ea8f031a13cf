"""A JAX profiler trace of chosen train steps, written to DIR/profile.

Steps are numbered as in the logs (step N is the N-th update): train.profile_start_step=10,
train.profile_stop_step=13 traces steps 10, 11 and 12. Every process writes its own trace file:
DIR/profile/plugins/profile/<time>/<host>.xplane.pb (TensorBoard with the profile plugin, or XProf)
plus <host>.trace.json.gz and perfetto_trace.json.gz (open in ui.perfetto.dev).
"""
from __future__ import annotations

import os

import jax


class StepProfiler:

  def __init__(self, workdir: str, start: int, stop: int, log=print):
    self.dir = os.path.join(workdir, "profile")
    self.start, self.stop, self.log = start, stop, log
    self.active = False

  @property
  def enabled(self) -> bool:
    return self.stop > self.start >= 1

  def before_step(self, step: int) -> None:
    """Call before dispatching step `step` (1-based)."""
    if self.enabled and step == self.start and not self.active:
      jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
      self.active = True

  def after_step(self, step: int, outputs) -> None:
    """Call after dispatching step `step`; waits for it when the trace ends there."""
    if self.active and step == self.stop - 1:
      self.close(outputs)

  def close(self, outputs=None) -> None:
    if self.active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      self.log(f"profile: steps [{self.start}, {self.stop}) traced to {self.dir} "
               f"(tensorboard --logdir {self.dir}, or perfetto_trace.json.gz in ui.perfetto.dev)")
