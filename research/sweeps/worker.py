"""A sweep worker: takes trials from the study and runs them, `parallel` at a time on this machine
(one thread per slot, each driving a child training run), until the study has no trial left to
start and none running that it might have to take over. Every machine of a multi-machine sweep
runs one worker against the same storage; a pod slice's hosts run one gang (gang.py).

Stopping the worker (SIGTERM, SIGINT) stops its running trials at a checkpoint and enqueues them
again: running the same command later continues the study where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading

from research.config import ConfigError
from research.config.cli import load_experiment
from research.sweeps import devices as devices_lib
from research.sweeps.space import Sweep, check_keys, config_flags, trial_overrides
from research.sweeps.storage import open_storage
from research.sweeps.study import WAIT, Coordinator, open_study
from research.sweeps.trial_run import ROOT, TRAIN_SCRIPT, Outcome, TrialRun

WAIT_POLL_S = 2.0


@dataclasses.dataclass
class WorkerOptions:
  storage: str | None = None           # None: DIR/study.journal
  many_machines: bool = False          # --worker: other machines share the study
  parallel: int = 1
  devices_per_trial: int | None = None
  accelerator: str = "auto"
  grace_s: float = 120.0               # a running trial whose heartbeat is still this long is taken over
  heartbeat_s: float = 10.0
  retry_failed: bool = False
  train_flags: tuple = ()              # more scripts/train.py flags for every trial


def resolve_base(sweep: Sweep, sweep_path: str, workdir: str) -> str:
  """The --config of every trial: the sweep's base file (relative to the working directory, else the
  repository), or, when get_sweep() returned a config, DIR/base.py that rebuilds it from the sweep."""
  if not isinstance(sweep.base, str):
    path = os.path.join(workdir, "base.py")
    with open(path, "w") as f:
      f.write("# Written by scripts/sweep.py: the base config of every trial, from the sweep's get_sweep().\n"
              "import sys\n"
              f"sys.path.insert(0, {ROOT!r})\n"
              "from research.sweeps.space import load_sweep\n\n\n"
              f"def get_config():\n  return load_sweep({os.path.abspath(sweep_path)!r}).base\n")
    return path
  file, sep, variant = sweep.base.partition(":")
  for candidate in (file, os.path.join(ROOT, file), os.path.join(os.path.dirname(os.path.abspath(sweep_path)), file)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate) + sep + variant
  raise ConfigError(f"{sweep_path}: base={sweep.base!r}: no such experiment file (looked in the working "
                    f"directory, {ROOT} and the sweep file's directory)")


class Worker:
  def __init__(self, sweep: Sweep, sweep_path: str, workdir: str, options: WorkerOptions, log=print, gang=None):
    self.sweep, self.workdir, self.options, self.log, self.gang = sweep, os.path.abspath(workdir), options, log, gang
    os.makedirs(self.workdir, exist_ok=True)
    self.base_spec = resolve_base(sweep, sweep_path, self.workdir)
    self.base = load_experiment(self.base_spec)
    check_keys(sweep, self.base, sweep_path)
    self.stop_event = threading.Event()
    self.storage_failed = False
    self.counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0}
    self._counts_lock = threading.Lock()

  def write_declaration(self) -> None:
    record = {**self.sweep.as_dict(), "base": self.base_spec, "storage": self.options.storage or "study.journal"}
    tmp = os.path.join(self.workdir, "sweep.json.tmp")
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(self.workdir, "sweep.json"))

  def run(self) -> dict:
    o = self.options
    kind, count = devices_lib.detect(o.accelerator)
    if self.gang is not None and o.parallel != 1:
      raise ConfigError("a multi-host gang runs one trial at a time over the whole slice: --parallel=1")
    slots = devices_lib.slots(kind, count, o.parallel, o.devices_per_trial)
    storage = open_storage(o.storage, self.workdir, o.many_machines)
    study = open_study(self.sweep, storage, worker_salt=(os.getpid() * 7919 + hash(os.uname().nodename)) % 100_000)
    self.write_declaration()
    if self.gang is not None:
      self.gang.attach(study, self.log)
    coord = Coordinator(self.sweep, study, self.log, grace_s=o.grace_s, retry_failed=o.retry_failed)
    coord.start_heartbeat(o.heartbeat_s)
    self.log(f"sweep {self.sweep.name}: {self.sweep.sampler} over {', '.join(self.sweep.space)}; "
             f"{self._size_text()}; {len(slots)} at a time on {kind} ({count} device(s)); workdir {self.workdir}")
    restore = _stop_on_signals(self.stop_event, self.log)
    try:
      threads = [threading.Thread(target=self._slot_loop, args=(coord, slot), name=f"sweep-slot-{slot.index}")
                 for slot in slots]
      for t in threads:
        t.start()
      while any(t.is_alive() for t in threads):
        for t in threads:
          t.join(timeout=0.5)
    finally:
      restore()
      coord.close()
      if self.gang is not None:
        self.gang.finish(stopped=self.stop_event.is_set())
    return dict(self.counts, stopped=self.stop_event.is_set(), storage_failed=self.storage_failed)

  def _size_text(self) -> str:
    if self.sweep.sampler == "tpe":
      return f"{self.sweep.num_trials} trials"
    return f"{len(self.sweep.design())} trials ({len(self.sweep.points())} points x {len(self.sweep.seeds)} seed(s))"

  def _slot_loop(self, coord: Coordinator, slot) -> None:
    while not self.stop_event.is_set():
      try:
        claim = coord.next_claim()
      except Exception as e:  # noqa: BLE001 - the storage went away: say so and stop this slot
        self.log(f"error: sweep: cannot reach the study ({type(e).__name__}: {e}); slot {slot.index} stops")
        self.storage_failed = True
        return
      if claim is None:
        return
      if claim == WAIT:
        self.stop_event.wait(WAIT_POLL_S)
        continue
      if self.stop_event.is_set():   # stopped while the claim was made: back in the queue, nothing started
        coord.finish(claim, "interrupted")
        return
      try:
        outcome = self._run_trial(claim, slot)
      except Exception as e:  # noqa: BLE001 - this worker's fault, not the trial's: recorded, the sweep goes on
        outcome = Outcome("failed", None, f"the sweep worker failed running it: {type(e).__name__}: {e}")
        self.log(f"sweep: trial {claim.trial_id}: {outcome.error}")
      if outcome.state == "revoked":
        coord.release(claim)
        continue
      try:
        coord.finish(claim, outcome.state, outcome.value, outcome.error)
      except (ValueError, RuntimeError) as e:   # declared lost (a long storage outage) and taken over meanwhile
        self.log(f"sweep: trial {claim.trial_id} (#{claim.trial.number}) was taken over by another worker while it "
                 f"ran here ({e}); the other attempt records its result")
        continue
      with self._counts_lock:
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
      where = f"{self.sweep.metric} {outcome.value:.4f}" if outcome.value is not None else (outcome.error or "")
      self.log(f"sweep: trial {claim.trial_id} {_describe(claim.params)} seed {claim.seed}: {outcome.state}"
               + (f" ({where})" if where else ""))

  def _run_trial(self, claim, slot):
    overrides = trial_overrides(self.sweep, claim.params, claim.seed, self.base)
    trial_dir = os.path.join(self.workdir, "trials", claim.trial_id)
    command = [sys.executable, TRAIN_SCRIPT, f"--config={self.base_spec}", f"--workdir={trial_dir}",
               *config_flags(overrides), *self.options.train_flags]
    if claim.takeover:
      command.append("--break_lock")   # the previous attempt's worker was declared dead
    if self.gang is not None:
      command = self.gang.publish(claim.trial_id, command, trial_dir)
    env = devices_lib.child_env(slot, ROOT)
    processes = self.gang.num_processes if self.gang is not None else 1
    record = {"overrides": overrides, "devices": slot.devices * processes if slot.devices else None,
              "cost_per_device_hour": self.base.train.cost_per_device_hour or None, "command": command,
              "sweep": self.sweep.name}
    verb = "resumes" if claim.attempt > 1 else "starts"
    self.log(f"sweep: trial {claim.trial_id} {_describe(claim.params)} seed {claim.seed} {verb}"
             + (f" (attempt {claim.attempt})" if claim.attempt > 1 else "") + f" in {trial_dir}")
    return TrialRun(claim, self.sweep, command, trial_dir, env, self.sweep.pruner is not None, self.stop_event,
                    self.log, cpus=slot.cpus, record=record).run()


def _describe(params: dict) -> str:
  return " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())


def _short(v) -> str:
  return f"{v:.3g}" if isinstance(v, float) else str(v)


def _stop_on_signals(event: threading.Event, log):
  """SIGTERM/SIGINT: stop taking trials and stop the running ones at a checkpoint (a second signal
  still stops them the same way). Returns a function that restores the previous handlers."""
  if threading.current_thread() is not threading.main_thread():
    return lambda: None

  def handler(signum, frame):
    if not event.is_set():
      log(f"sweep: {signal.Signals(signum).name}: stopping the running trials at a checkpoint; rerun the same "
          "command to continue the study")
    event.set()
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

  def restore():
    for s, h in previous.items():
      signal.signal(s, h)
  return restore

