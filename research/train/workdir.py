"""The workdir between runs: never lose work when starting over or resuming from an older step, and
never let two runs write into one workdir.

Paths go through `etils.epath`, never `os.path`, so a workdir may be local or remote (`gs://bucket/run`:
Orbax and tensorstore read and write it natively; epath does the rest). Only process 0 writes here.
Order of a start (the trainer's): lock -> (--fresh: move the previous run aside) -> restore and check
the checkpoint -> only then move newer steps aside, trim metrics and write config.json, so a resume
that is refused leaves the old run exactly as it was.
"""
from __future__ import annotations

import json
import os
import socket
import time

from etils import epath

from research.checkpoint import CheckpointError
from research.checkpoint.loading import checkpoint_steps
from research.paths import is_remote

# What a run leaves in its workdir; --fresh moves each aside to NAME.before-<time> (never deletes).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "summary.json", "profile", "config.json", "eval")
LOCK_NAME = "run.lock"


def _stamp() -> str:
  return time.strftime("%Y%m%d-%H%M%S")


def check_resume(workdir: str, resume) -> None:
  """Every process runs this before anything is moved, so a bad --restore_step stops all of them
  with the same error instead of leaving the others at a barrier."""
  if isinstance(resume, int):
    ckpt_dir = str(epath.Path(workdir) / "checkpoints")
    steps = checkpoint_steps(ckpt_dir)
    if resume not in steps:
      raise CheckpointError(f"no checkpoint for step {resume} in {ckpt_dir}; steps: {steps}")


def _non_empty(p: epath.Path) -> bool:
  return p.exists() and (not p.is_dir() or any(True for _ in p.iterdir()))


def move_previous_run_aside(workdir: str, log) -> None:
  """--fresh: the previous run's outputs (checkpoints, metrics, TensorBoard, summary, profile, config,
  evaluation reports)
  each renamed to NAME.before-<time>, so nothing of it is lost or mixed into the new run."""
  stamp = _stamp()
  for name in RUN_OUTPUTS:
    path = epath.Path(workdir) / name
    if _non_empty(path):
      aside = path.parent / f"{name}.before-{stamp}"
      path.rename(aside)
      log(f"workdir: moved the previous run's {name} to {aside}")


def move_steps_aside(workdir: str, steps: list[int], why: str, log) -> str | None:
  """Moves checkpoint steps out of DIR/checkpoints into DIR/checkpoints.<why>-<time>/ (kept whole)."""
  if not steps:
    return None
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  aside = epath.Path(workdir) / f"checkpoints.{why}-{_stamp()}"
  aside.mkdir(parents=True, exist_ok=True)
  if is_remote(workdir):  # object stores have no empty directories; epath renames only into one that exists
    (aside / "MOVED_ASIDE").write_text(f"{why}: steps {steps}\n")
  for s in steps:
    (ckpt_dir / str(s)).rename(aside / str(s))
  log(f"checkpoint: moved step(s) {steps} to {aside}")
  return str(aside)


def truncate_metrics(path: str, step: int) -> None:
  """On resume from `step`, drop records of later steps (they will be produced again) and a line
  torn by a kill mid-write. A local file is replaced by a complete temporary copy, never half-written."""
  p = epath.Path(path)
  if not p.is_file():
    return
  kept = []
  for line in p.read_text().splitlines():
    try:
      if json.loads(line).get("step", 0) <= step:
        kept.append(line + "\n")
    except json.JSONDecodeError:
      continue
  if is_remote(path):  # an object is replaced whole by one write
    p.write_text("".join(kept))
    return
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text("".join(kept))
  os.replace(str(tmp), str(p))


def truncate_reports(workdir: str, step: int) -> None:
  """On resume from `step`, drop the evaluation reports (eval/<n>.json, eval/*_<n>.png) of later
  steps, as truncate_metrics drops their metrics: the resumed run writes them again."""
  directory = epath.Path(workdir) / "eval"
  if not directory.is_dir():
    return
  for p in directory.iterdir():
    number = p.stem.rsplit("_", 1)[-1]
    if number.isdigit() and int(number) > step:
      p.unlink()


def write_config(workdir: str, text: str) -> None:
  p = epath.Path(workdir)
  p.mkdir(parents=True, exist_ok=True)
  (p / "config.json").write_text(text)


# ------------------------------------------------------------------ the lock
def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), which tells a live process from a reused pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def this_process() -> dict:
  """{host, pid, start}: who a lock (or a sweep's running trial) belongs to."""
  return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def owner_alive(owner: dict) -> bool | None:
  """Whether the process `owner` ({host, pid, start}) still runs: True/False on this host, None
  (unknown) on another."""
  if owner.get("host") != socket.gethostname():
    return None
  pid = int(owner.get("pid", -1))
  if os.path.isdir("/proc"):
    start = _process_start(pid)
    return start is not None and start == owner.get("start")
  try:  # no /proc: the pid alone (a reused pid reads as alive; --break_lock then)
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


class WorkdirLock:
  """DIR/run.lock: {host, pid, start, since} of the run that writes DIR. A second run on the same
  workdir stops with one line naming the owner. A lock whose process is gone (killed, crashed) is
  stale: reported and taken over. Another host's lock cannot be checked: --break_lock takes it."""

  def __init__(self, workdir: str, break_lock: bool = False, log=print):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.break_lock, self.log = break_lock, log
    self.held = False

  def acquire(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    me = {**this_process(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
      if self._create(json.dumps(me)):
        self.held = True
        return self
      try:
        owner = json.loads(self.path.read_text())
      except (OSError, json.JSONDecodeError, FileNotFoundError):
        owner = {}
      if not owner and self._young():  # another run is writing it right now
        owner, alive = {"pid": "?", "host": "?", "since": "just now"}, True
      else:
        alive = owner_alive(owner) if owner else False
      who = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}" if owner else "an unreadable lock"
      if alive and not self.break_lock:
        raise CheckpointError(f"workdir {self.path.parent} is in use by the run of {who} ({self.path}); "
                              "stop that run or use another --workdir")
      if alive is None and not self.break_lock:
        raise CheckpointError(f"workdir {self.path.parent} is locked by {who} ({self.path}), which cannot be "
                              "checked from this host; if that run is gone, rerun with --break_lock")
      self.log(f"workdir: {'breaking the lock' if alive or alive is None else 'stale lock'} of {who} "
               f"({'--break_lock' if alive or alive is None else 'that process is gone'}); taking it over")
      self.path.unlink(missing_ok=True)
    raise CheckpointError(f"workdir {self.path.parent}: could not take {self.path} (another run took it first)")

  def _create(self, text: str) -> bool:
    if is_remote(str(self.path)):  # object stores: no O_EXCL; check-then-write, good enough for humans
      if self.path.exists():
        return False
      self.path.write_text(text)
      return True
    try:
      fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True

  def _young(self, seconds: float = 10.0) -> bool:
    try:
      return time.time() - self.path.stat().mtime < seconds
    except (OSError, FileNotFoundError, AttributeError):
      return False

  def release(self) -> None:
    """Removes the lock if it is still this process's (a run that took it over keeps its own)."""
    if not self.held:
      return
    self.held = False
    try:
      owner = json.loads(self.path.read_text())
    except (OSError, json.JSONDecodeError, FileNotFoundError):
      return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
      self.path.unlink(missing_ok=True)
