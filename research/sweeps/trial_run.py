"""One trial = one ordinary training run (scripts/train.py) in its own workdir, DIR/trials/<id>,
run as a child process; the worker watches its metrics.jsonl, reports each evaluation of the
sweep's metric to Optuna's pruner and stops the run (SIGTERM: it saves a checkpoint and exits 0)
when the pruner says so. The trainer knows nothing about sweeps.

Outcomes: complete (summary.json written, all steps run), pruned, failed (non-zero exit: the error
is the run's last `error:` line), interrupted (the sweep itself was stopped: the trial is enqueued
again and resumes from its checkpoint). DIR/trials/<id>/trial.json holds the trial's record
(parameters, status, metric values, steps, tokens, time, device-hours, cost) and train.log the run's
output.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import time

from research.sweeps.runs import MetricsTail, curves, final_metric, read_json, read_metrics, read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(ROOT, "scripts", "train.py")
POLL_S = 1.0


@dataclasses.dataclass
class Outcome:
  state: str                            # complete | pruned | failed | interrupted
  value: float | None = None            # the metric's final value (complete), or its last report
  error: str | None = None


def die_with_parent():
  """Child setup: the run gets SIGTERM (saves a checkpoint) if the worker thread that started it dies,
  even by SIGKILL, so a taken-over trial never has two writers."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class TrialRun:
  """Runs one claimed trial to an Outcome."""

  def __init__(self, claim, sweep, command: list[str], trial_dir: str, env: dict, report_to_pruner: bool,
               stop_event, log=print, cpus=None, record: dict | None = None):
    self.claim, self.sweep, self.command, self.dir = claim, sweep, command, trial_dir
    self.env, self.pruning, self.stop_event, self.log, self.cpus = env, report_to_pruner, stop_event, log, cpus
    self.record = record or {}
    self.reported: dict[int, float] = {}

  def run(self) -> Outcome:
    os.makedirs(self.dir, exist_ok=True)
    if self.claim.takeover:
      self._wait_for_previous_run()
    self._write_record("running", None, None)
    started = time.time()
    with open(os.path.join(self.dir, "train.log"), "a") as out:
      out.write(f"\n# attempt {self.claim.attempt}: {' '.join(self.command)}\n")
      out.flush()
      cpus = self.cpus

      def setup():
        die_with_parent()
        if cpus:
          os.sched_setaffinity(0, cpus)
      # Its own session: a Ctrl-C at the terminal reaches the worker, which stops the run with SIGTERM
      # (the trainer's checkpoint-and-exit), not the run directly.
      proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env, preexec_fn=setup,
                              cwd=ROOT, start_new_session=True)
      try:
        ending = self._watch(proc)
      finally:
        if proc.poll() is None:   # the worker failed while the run went on: stop it at a checkpoint
          proc.send_signal(signal.SIGTERM)
          proc.wait()
    wall = time.time() - started
    outcome = self._outcome(proc.returncode, ending)
    self._write_record(outcome.state, outcome.error, wall, outcome.state != "revoked")
    return outcome

  def _wait_for_previous_run(self, timeout_s: float = 300.0) -> None:
    """A taken-over trial's previous run (on this host) may still be saving its checkpoint after its
    worker died: wait until its workdir lock's process is gone."""
    from research.train.workdir import LOCK_NAME, owner_alive
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      owner = read_json(os.path.join(self.dir, LOCK_NAME))
      if not owner or owner_alive(owner) is not True:
        return
      time.sleep(POLL_S)
    self.log(f"sweep: trial {self.claim.trial_id}: its previous run (pid {owner.get('pid')}) still holds the workdir "
             f"after {timeout_s:.0f}s")

  def _watch(self, proc) -> str | None:
    """Reports evaluations to the pruner while the run goes. Returns why the worker stopped it:
    "pruned", "stopped" (the sweep is stopping), "revoked" (the trial is another worker's now) or None."""
    from optuna.exceptions import UpdateFinishedTrialError
    tail = MetricsTail(os.path.join(self.dir, "metrics.jsonl"))
    ending = None
    while True:
      done = proc.poll() is not None
      for record in tail.read():
        value = record.get(self.sweep.metric)
        if self.pruning and isinstance(value, (int, float)) and math.isfinite(value) and ending is None:
          step = int(record["step"])
          if step not in self.reported:
            self.reported[step] = float(value)
            try:
              self.claim.trial.report(float(value), step)
              prune = self.claim.trial.should_prune()
            except UpdateFinishedTrialError:   # taken over elsewhere
              self.claim.revoked.set()
              break
            if prune:
              self.log(f"sweep: trial {self.claim.trial_id} pruned at step {step} ({self.sweep.metric} {value:.4f})")
              ending = "pruned"
              proc.send_signal(signal.SIGTERM)
      if done:
        return ending
      if ending is None and (self.stop_event.is_set() or self.claim.revoked.is_set()):
        ending = "revoked" if self.claim.revoked.is_set() else "stopped"
        proc.send_signal(signal.SIGTERM)   # the run saves a checkpoint (to resume from) and exits
      time.sleep(POLL_S)

  def _outcome(self, returncode: int, ending: str | None) -> Outcome:
    last = self.reported[max(self.reported)] if self.reported else None
    if ending == "pruned":
      return Outcome("pruned", last)
    if ending == "revoked":
      return Outcome("revoked", last, "taken over by another worker")
    if ending == "stopped" and returncode != 0:   # stopped before the trainer's handler was in place
      return Outcome("interrupted", last)
    if returncode != 0:
      return Outcome("failed", None, self._error_line(returncode))
    summary = read_summary(self.dir)
    if summary is None or summary.get("preempted"):
      return Outcome("interrupted", last)
    value = final_metric(summary, self.sweep.metric)
    if value is None or not math.isfinite(value):
      return Outcome("failed", None, f"the run finished but logged no finite {self.sweep.metric!r} (summary.json "
                     f"keys: {', '.join(sorted(summary))}; eval keys: {', '.join(sorted(summary.get('final_eval') or {}))})")
    return Outcome("complete", float(value))

  def _error_line(self, returncode: int) -> str:
    try:
      with open(os.path.join(self.dir, "train.log")) as f:
        lines = [line.strip() for line in f.read().splitlines()[-200:] if line.strip()]
    except OSError:
      lines = []
    errors = [line for line in lines if line.startswith("error:")]
    text = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit {returncode}: {text}"

  def _write_record(self, status: str, error: str | None, wall: float | None, write: bool = True) -> None:
    """trial.json after an attempt (or at its start: wall None). A revoked attempt writes nothing:
    the trial and its record are another worker's now."""
    if not write:
      return
    path = os.path.join(self.dir, "trial.json")
    previous = read_json(path) or {}
    wall_total = float(previous.get("wall_seconds", 0.0)) + (wall or 0.0)
    summary = read_summary(self.dir) if status != "running" else None
    records = read_metrics(self.dir)   # read once: the metric's curve, steps and tokens
    steps, points = curves(records).get(self.sweep.metric, ((), ()))
    values = {int(t): float(v) for t, v in zip(steps, points) if math.isfinite(v)}
    pick = min if self.sweep.direction == "minimize" else max
    best_step = pick(values, key=values.get) if values else None
    final = final_metric(summary, self.sweep.metric) if summary else None
    steps_tokens = (max((int(r.get("step", 0)) for r in records), default=0),
                    max((int(r.get("tokens_seen", 0) or 0) for r in records), default=0))
    devices = int(_devices_of(summary) or self.record.get("devices") or previous.get("devices") or 1)
    cost_rate = (summary or {}).get("compute", {}).get("cost_per_device_hour") or self.record.get("cost_per_device_hour")
    # Device-hours: each attempt's compute summary (devices x that invocation's wall time, as the
    # trainer bills it) when it completed, else devices x the attempt's wall time seen from here.
    attempt_hours = 0.0
    if wall is not None:
      from_summary = (summary or {}).get("compute", {}).get("device_hours") if status == "complete" else None
      attempt_hours = from_summary if from_summary is not None else devices * wall / 3600
    device_hours = float(previous.get("device_hours") or 0.0) + attempt_hours
    record = {"trial_id": self.claim.trial_id, "number": self.claim.trial.number,
              "params": self.claim.params, "seed": self.claim.seed, "status": status, "error": error,
              "metric": self.sweep.metric, "direction": self.sweep.direction,
              "final": final if final is not None else (values[max(values)] if values and status != "running" else None),
              "best": values[best_step] if best_step is not None else final, "best_step": best_step,
              "steps": (summary or {}).get("steps", steps_tokens[0]),
              "tokens": (summary or {}).get("tokens_seen", steps_tokens[1]),
              "wall_seconds": wall_total, "attempts": self.claim.attempt, "devices": devices,
              "device_hours": device_hours, "cost": device_hours * cost_rate if cost_rate else None,
              "parameters": (summary or {}).get("parameters", previous.get("parameters"))}
    for key, value in self.record.items():   # the worker's: overrides, command, cost rate, sweep name
      record.setdefault(key, value)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, path)


def _devices_of(summary: dict | None) -> int | None:
  """The run's device count, from its compute summary (device-hours over its wall time)."""
  if not summary or not summary.get("total_seconds"):
    return None
  hours = (summary.get("compute") or {}).get("device_hours")
  return max(1, round(hours * 3600 / summary["total_seconds"])) if hours else None
