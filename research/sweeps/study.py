"""A sweep's study in Optuna's storage: which trials there are, who runs each, and taking over the
trials of workers that died. Optuna does the bookkeeping and the atomic parts (a WAITING trial is
popped by one worker only; a finished trial cannot be finished again); this file adds what Optuna
leaves to its users: trial ids from (parameters, seed), duplicate suggestions, fixed designs that
many workers share, and leases on running trials that every storage supports (Optuna's own
heartbeat works with RDB storage only, not the journal file).

Storage: storage.py; pruners: pruning.py.

Per Optuna trial, user attributes: trial_id, seed, attempt, role (run | duplicate | lost | stray),
error; system attributes: owner ({host, pid, start, worker}) and heartbeat (a counter its owner
bumps every few seconds). A RUNNING trial is stale when its owner is a dead process on this host,
or its heartbeat has not moved for `grace_s` seconds of this worker's clock (no clock comparison
across machines); a stale trial is marked FAIL with role lost and enqueued again with the same
parameters, so the next worker resumes it from its last checkpoint in the same workdir.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import optuna

from research.config import ConfigError
from research.sweeps.pruning import LOST, NOT_A_POINT, make_pruner
from research.sweeps.space import Sweep, trial_id
from research.train.workdir import owner_alive, this_process


def open_study(sweep: Sweep, storage, worker_salt: int = 0):
  """The sweep's study (created by the first worker, loaded by the rest). A study of the same name
  created by a different declaration is refused rather than mixed."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if sweep.sampler == "tpe":   # workers sample differently; constant liar keeps them apart while trials run
    sampler = optuna.samplers.TPESampler(seed=sweep.sampler_seed + worker_salt, constant_liar=True,
                                         multivariate=True, group=any(p.when for p in sweep.space.values()))
  else:                        # fixed designs are enqueued; the sampler never draws
    sampler = optuna.samplers.RandomSampler(seed=sweep.sampler_seed + worker_salt)
  study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=make_pruner(sweep),
                              direction=sweep.direction, load_if_exists=True)
  record = json.loads(json.dumps(sweep.as_dict(), default=str))   # as the storage gives it back (tuples: lists)
  declared = study.user_attrs.get("sweep")
  if declared is None:
    study.set_user_attr("sweep", record)
  else:
    changed = [k for k in ("space", "sampler", "metric", "direction", "seeds", "num_steps", "overrides", "base")
               if declared.get(k) != record.get(k)]
    if changed:
      raise ConfigError(f"study {sweep.name!r} in this storage was created by a different sweep ({', '.join(changed)} "
                        "changed); give the sweep another name or --workdir")
  return study


@dataclasses.dataclass
class Claim:
  """A trial this worker runs: its Optuna trial, parameters, seed, id and attempt."""
  trial: object                 # optuna.trial.Trial
  params: dict
  seed: int
  trial_id: str
  attempt: int
  takeover: bool                # a previous attempt's worker died: its workdir lock may need breaking
  revoked: threading.Event = dataclasses.field(default_factory=threading.Event)   # set: stop the run
  renewed: float = dataclasses.field(default_factory=time.monotonic)              # the lease's last renewal


@dataclasses.dataclass
class Census:
  done: set                     # trial ids finished (complete, pruned, or failed with an error)
  running: set                  # trial ids of RUNNING trials
  waiting: int                  # enqueued trials not yet popped
  known: set                    # every trial id in the study


WAIT = "wait"                   # next_claim: nothing to start now, but trials run that may need taking over


class Coordinator:
  """Hands out trials to this worker's slots (threads) and keeps their leases."""

  def __init__(self, sweep: Sweep, study, log=print, grace_s: float = 120.0, retry_failed: bool = False,
               worker: str = ""):
    self.sweep, self.study, self.log = sweep, study, log
    self.storage = study._storage
    self.grace_s, self.retry_failed = grace_s, retry_failed
    self.owner = {**this_process(), "worker": worker or f"{this_process()['host']}:{os.getpid()}"}
    self._lock = threading.Lock()
    self._seen: dict[int, tuple] = {}            # trial number -> (heartbeat value, local time first seen)
    self._mine: dict[int, Claim] = {}            # trial number -> claim, for the heartbeat
    self._heartbeats = 0
    self._enqueued = False
    self._duplicates = 0
    self._stop = threading.Event()
    self._thread = None

  # ------------------------------------------------------------------ handing out trials
  def next_claim(self):
    """A Claim, WAIT (nothing to start; other trials still run), or None (the study is done)."""
    with self._lock:
      while True:
        trials = self.study.get_trials(deepcopy=False)
        if self._take_over_stale(trials):
          trials = self.study.get_trials(deepcopy=False)
        census = _census(trials)
        fixed = self.sweep.sampler != "tpe"
        if fixed and not self._enqueued:
          self._enqueue_design(census, trials)
          trials = self.study.get_trials(deepcopy=False)
          census = _census(trials)
        if fixed and not census.waiting:
          return WAIT if census.running else None
        if not fixed and not census.waiting and len(census.done | census.running) >= self.sweep.num_trials:
          return WAIT if census.running else None
        trial = self.study.ask()
        attrs = trial.user_attrs
        if fixed and "trial_id" not in attrs:   # not an enqueued trial: another worker popped the last one first
          trial.set_user_attr("role", "stray")
          self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
          continue
        params = self.sweep.suggest(trial)
        seed = int(attrs.get("seed", self.sweep.seeds[0]))
        tid = trial_id(params, seed)
        completed = _completed_ids(trials)
        taken = tid in census.running or tid in completed or (tid in census.done and not attrs.get("retry"))
        if not taken:
          attempt = int(attrs.get("attempt", 1))
          for key, value in (("trial_id", tid), ("seed", seed), ("attempt", attempt), ("role", "run")):
            trial.set_user_attr(key, value)
          self.storage.set_trial_system_attr(trial._trial_id, "owner", self.owner)
          self.storage.set_trial_system_attr(trial._trial_id, "heartbeat", self._heartbeats)
          # Another worker may have popped a copy of the same point meanwhile: the lower number runs it.
          taken = _runs_elsewhere(self.study.get_trials(deepcopy=False), tid, trial.number, self.sweep)
        if taken:
          trial.set_user_attr("role", "duplicate")
          trial.set_user_attr("trial_id", tid)
          self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
          self._duplicates += 1
          if not fixed and self._duplicates > 50:
            self.log(f"sweep: the sampler suggested only points already run, 50 times in a row; the space of "
                     f"{len(census.known)} distinct trials looks exhausted")
            return WAIT if census.running else None
          continue
        self._duplicates = 0
        claim = Claim(trial, params, seed, tid, attempt, takeover="takeover_of" in attrs)
        self._mine[trial.number] = claim
        return claim

  def _enqueue_design(self, census: Census, trials) -> None:
    """The fixed design's trials that the study does not hold yet (a failed one again with
    retry_failed). Two workers starting at once may both enqueue a point: the second copy is
    popped as a duplicate and skipped."""
    failed = {t.user_attrs.get("trial_id") for t in trials
              if t.state.name == "FAIL" and t.user_attrs.get("role") == "run"} if self.retry_failed else set()
    retried = 0
    for params, seed in self.sweep.design():
      tid = trial_id(params, seed)
      again = tid in failed and tid not in _completed_ids(trials)
      if tid in census.known and not again:
        continue
      if again:
        retried += 1
      self.study.enqueue_trial(params, user_attrs={"trial_id": tid, "seed": seed, "attempt": 1, "retry": again})
    if retried:
      self.log(f"sweep: {retried} failed trial(s) enqueued again (--retry_failed)")
    self._enqueued = True

  def _take_over_stale(self, trials) -> bool:
    took = False
    now = time.monotonic()
    for t in trials:
      if t.state.name != "RUNNING" or t.number in self._mine:
        continue
      owner = t.system_attrs.get("owner") or {}
      beat = t.system_attrs.get("heartbeat")
      seen = self._seen.get(t.number)
      if seen is None or seen[0] != beat:
        self._seen[t.number] = seen = (beat, now)
      alive = owner_alive(owner) if owner else None
      silent = now - seen[1]
      if alive is True or (alive is None and silent < self.grace_s):
        continue
      why = (f"its worker (pid {owner.get('pid')}) is gone" if alive is False
             else f"no heartbeat from {owner.get('worker', 'its worker')} for {silent:.0f}s")
      try:
        self.storage.set_trial_user_attr(t._trial_id, "role", LOST)
        self.storage.set_trial_user_attr(t._trial_id, "error", f"worker lost: {why}")
        self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
      except (ValueError, RuntimeError):   # another worker took it over first
        continue
      if not t.user_attrs.get("trial_id"):   # a sampled trial that died before it began: nothing to resume
        continue
      params = t.system_attrs.get("fixed_params") or t.params
      self.study.enqueue_trial(params, user_attrs={"trial_id": t.user_attrs["trial_id"],
                                                     "seed": t.user_attrs.get("seed", self.sweep.seeds[0]),
                                                     "attempt": int(t.user_attrs.get("attempt", 1)) + 1,
                                                     "takeover_of": t.number, "retry": True})
      self.log(f"sweep: trial {t.user_attrs['trial_id']} (#{t.number}) taken over: {why}; it resumes from its "
               "last checkpoint")
      took = True
    return took

  # ------------------------------------------------------------------ finishing
  def finish(self, claim: Claim, state: str, value: float | None = None, error: str | None = None) -> None:
    """state: complete | pruned | failed | interrupted (this worker stops: enqueued again to resume)."""
    states = optuna.trial.TrialState
    with self._lock:
      self._mine.pop(claim.trial.number, None)
      if error:
        claim.trial.set_user_attr("error", error)
      if state == "complete":
        self.study.tell(claim.trial, value)
      elif state == "pruned":
        self.study.tell(claim.trial, state=states.PRUNED)
      elif state == "failed":
        self.study.tell(claim.trial, state=states.FAIL)
      else:
        claim.trial.set_user_attr("role", LOST)
        self.study.tell(claim.trial, state=states.FAIL)
        self.study.enqueue_trial(claim.params, user_attrs={"trial_id": claim.trial_id, "seed": claim.seed,
                                                           "attempt": claim.attempt + 1,
                                                           "takeover_of": claim.trial.number, "retry": True})

  # ------------------------------------------------------------------ leases
  def start_heartbeat(self, every_s: float = 10.0) -> None:
    """Renews the lease of every running claim; revokes a claim (its run is stopped) whose trial
    another worker has taken over, or whose lease could not be renewed for half the grace time
    (the others may be taking it over now)."""
    def beat():
      while not self._stop.wait(every_s):
        self.renew()
    self._thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    self._thread.start()

  def renew(self) -> None:
    """One heartbeat for every running claim."""
    with self._lock:
      self._heartbeats += 1
      for claim in list(self._mine.values()):
        try:
          if self.storage.get_trial(claim.trial._trial_id).state.is_finished():
            self._revoke(claim, "another worker took it over")
            continue
          self.storage.set_trial_system_attr(claim.trial._trial_id, "heartbeat", self._heartbeats)
          claim.renewed = time.monotonic()
        except Exception as e:  # noqa: BLE001 - a storage hiccup: the next beat tries again
          self.log(f"sweep: heartbeat of trial {claim.trial_id} failed ({type(e).__name__}: {e})")
          if time.monotonic() - claim.renewed > self.grace_s / 2:
            self._revoke(claim, f"its lease was not renewed for {self.grace_s / 2:.0f}s")

  def _revoke(self, claim: Claim, why: str) -> None:
    if not claim.revoked.is_set():
      self.log(f"sweep: trial {claim.trial_id} (#{claim.trial.number}) stops here: {why}")
      claim.revoked.set()
    self._mine.pop(claim.trial.number, None)

  def release(self, claim: Claim) -> None:
    """A revoked claim's run has stopped: nothing to tell (the trial is another worker's now)."""
    with self._lock:
      self._mine.pop(claim.trial.number, None)

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)


def _census(trials) -> Census:
  """A RUNNING trial that carries a trial id counts as running whether or not its worker has tagged
  it yet; a COMPLETE or PRUNED one as done even if a takeover raced its finish (role lost)."""
  done, running, known, waiting = set(), set(), set(), 0
  for t in trials:
    tid, role = t.user_attrs.get("trial_id"), t.user_attrs.get("role")
    if tid:
      known.add(tid)
    if t.state.name == "WAITING":
      waiting += 1
    elif not tid or role in NOT_A_POINT:
      continue
    elif t.state.name == "RUNNING" and role in (None, "run"):
      running.add(tid)
    elif t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and role == "run"):
      done.add(tid)
  return Census(done, running, waiting, known)


def _completed_ids(trials) -> set:
  return {t.user_attrs.get("trial_id") for t in trials
          if t.state.name in ("COMPLETE", "PRUNED") and t.user_attrs.get("role") not in NOT_A_POINT}


def _runs_elsewhere(trials, tid: str, number: int, sweep: Sweep) -> bool:
  """Whether a lower-numbered RUNNING trial holds the same point (tagged, enqueued with its id, or a
  sampled one whose parameters give the id), or it already finished. Copies of a point are popped
  in number order, so the lowest running copy is the one every worker agrees on."""
  for t in trials:
    if t.number == number or t.user_attrs.get("role") in NOT_A_POINT + (LOST,):
      continue
    other = t.user_attrs.get("trial_id") or (trial_id(t.params, sweep.seeds[0]) if t.params else None)
    if other != tid:
      continue
    if t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "RUNNING" and t.number < number):
      return True
  return False


def trial_records(study) -> dict:
  """trial id -> the latest Optuna trial that ran it (for tables: state, value, error, attempts)."""
  out = {}
  for t in study.get_trials(deepcopy=False):
    tid = t.user_attrs.get("trial_id")
    if tid and t.user_attrs.get("role") in ("run", LOST) and (tid not in out or t.number > out[tid].number):
      out[tid] = t
  return out
