"""`Checkpointer`: one Orbax CheckpointManager over DIR/checkpoints with three items per step:

  state  the TrainState pytree (params, optimizer state, step, rng, skipped steps)  StandardSave
  data   the training iterator's state (a small JSON dict)                          JsonSave
  meta   resolved config, mesh, code version, time                                 JsonSave
  tokenizer  the run's tokenizer files (tokenizer_item.py), so finetuning reads text as trained  JsonSave

Saves are asynchronous by default: `save` returns once arrays are copied off the devices, and the
write finishes in the background. Orbax writes each step into a temporary directory and renames it
when complete, so a killed save never looks finished. Every array's checksum goes into `meta` and is
verified on restore (`checkpoint.verify`), so flipped bytes read as an unreadable step, not as
weights. A step that fails to read is skipped (with a log line) in favour of the newest one that
reads, and listed in `unreadable` so the trainer can move it aside (never delete) once the run has
validated: otherwise the next save of that step would find it there and not save. A save that fails
(disk full, permissions) is one CheckpointError line naming the directory and the cause; the
previous checkpoints stay. Nothing is unpickled: arrays are tensorstore/OCDBT, the rest JSON.
The directory may be local or remote (gs://...): Orbax and tensorstore handle both.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import subprocess
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from research.checkpoint import checksums
from research.paths import absolute
from research.treepaths import path_str


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message says which and why."""


def code_version() -> str:
  """The git commit of the code (with '+dirty' when modified), or 'unknown' outside git."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return (commit + ("+dirty" if dirty else "")) or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _shape_tree(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def check_compatible(saved_metadata, target) -> None:
  """Raises CheckpointError listing keys missing on either side and shape mismatches."""
  saved, wanted = _shape_tree(saved_metadata), _shape_tree(target)
  problems = [f"{k}: in the model, not in the checkpoint {v}" for k, v in wanted.items() if k not in saved]
  problems += [f"{k}: in the checkpoint {v}, not in the model" for k, v in saved.items() if k not in wanted]
  problems += [f"{k}: checkpoint {saved[k]} vs model {v}" for k, v in wanted.items()
               if k in saved and saved[k] != v]
  if problems:
    problems.sort(key=lambda p: not p.startswith("params/"))  # parameters first: the telling part
    shown = "; ".join(problems[:12]) + (f"; ... {len(problems) - 12} more" if len(problems) > 12 else "")
    raise CheckpointError(f"the checkpoint does not match the model ({len(problems)} difference(s)): {shown}")


def _handlers() -> dict:
  # Registered up front so that a fresh process can read item metadata before restoring.
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler(), "tokenizer": ocp.JsonCheckpointHandler()}


def _as_tree(state):
  """A TrainState (a dataclass pytree) as a plain dict, so checkpoints hold named items."""
  if dataclasses.is_dataclass(state):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return state


def _from_tree(like, tree):
  return type(like)(**tree) if dataclasses.is_dataclass(like) else tree


class Checkpointer:

  def __init__(self, directory: str, ckpt_cfg, log=print, tokenizer: dict | None = None, saved_view=None):
    """tokenizer: the run's `tokenizer_item`, saved with every step (None: not saved).
    saved_view: state -> the part of it a step holds (a LoRA run leaves its base out; restore then
    takes an abstract state of that part); None: all of it."""
    self.directory = absolute(directory)
    self.tokenizer = tokenizer
    self.saved_view = saved_view
    self.log = log
    self.verify = ckpt_cfg.get("verify", True)
    self.unreadable: list[int] = []   # steps restore skipped, newest first
    self._saving: int | None = None   # the step whose async write may still be running
    save_policies = []
    if ckpt_cfg.every_steps:
      save_policies.append(policies.FixedIntervalPolicy(ckpt_cfg.every_steps))
    self.every_seconds = ckpt_cfg.every_minutes * 60
    self.last_save_time = time.time()  # time-based saves count from the start of this run
    keep = [policies.LatestN(n=ckpt_cfg.keep_last)]
    if ckpt_cfg.keep_every_steps:
      keep.append(policies.EveryNSteps(interval_steps=ckpt_cfg.keep_every_steps))
    if ckpt_cfg.keep_best:
      # BestN sorts by the metric and keeps the tail of the list: descending order keeps the minimum.
      keep.append(policies.BestN(get_metric_fn=lambda m: m[ckpt_cfg.best_metric],
                                 reverse=ckpt_cfg.best_mode == "min", n=ckpt_cfg.keep_best,
                                 keep_checkpoints_without_metrics=False))
    best = {}
    if ckpt_cfg.keep_best:  # also makes Orbax write each step's metrics, so BestN survives a restart
      best = dict(best_fn=lambda m: m[ckpt_cfg.best_metric], best_mode=ckpt_cfg.best_mode,
                  keep_checkpoints_without_metrics=True)
    options = ocp.CheckpointManagerOptions(**best,
        save_decision_policy=policies.AnySavePolicy(save_policies) if save_policies else
        policies.SpecificStepsPolicy(steps=()),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=ckpt_cfg.async_save, cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

  # ------------------------------------------------------------------ saving
  def maybe_save(self, step: int, state, data_state, meta: dict, metrics: dict | None = None,
                 force: bool = False) -> bool:
    """Saves when the policies say so (or `force`); returns whether a save started.

    `data_state` may be a callable, called only when saving (gathering it can be a collective).
    """
    if not force and not self.manager.should_save(step) and not self._time_due():
      return False
    if step in self.manager.all_steps():
      return False
    data_state = data_state() if callable(data_state) else data_state
    tree = _as_tree(self.saved_view(state) if self.saved_view else state)
    meta = dict(meta, step=step, time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                code_version=meta.get("code_version") or code_version(),
                checksums=checksums.tree_checksums(tree))
    items = dict(state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave(data_state),
                 meta=ocp.args.JsonSave(meta))
    if self.tokenizer is not None:
      items["tokenizer"] = ocp.args.JsonSave(self.tokenizer)
    args = ocp.args.Composite(**items)
    self.last_save_time = time.time()
    self.wait()  # the previous write's error (if any) is reported as that step's; Orbax would wait anyway
    with self._save_errors(step):
      started = bool(self.manager.save(step, args=args, metrics=metrics, force=True))
    self._saving = step
    return started

  @contextlib.contextmanager
  def _save_errors(self, step: int):
    """Turns a failed write (Orbax raises an async save's error at the next save or wait) into one
    line naming the step, the directory and the cause."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
      failed = self._saving if self._saving is not None else step
      self._saving = None
      kept = [s for s in self.manager.all_steps() if s != failed]
      raise CheckpointError(f"saving checkpoint step {failed} to {self.directory} failed ({_root_cause(e)}); "
                            f"the previous checkpoints are kept (steps {sorted(kept)})") from None

  def _time_due(self) -> bool:
    """checkpoint.every_minutes elapsed since the last save; decided on process 0 for all."""
    if not self.every_seconds:
      return False
    due = time.time() - self.last_save_time >= self.every_seconds
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def wait(self) -> None:
    """Blocks until every started save is durable on disk."""
    with self._save_errors(self._saving or 0):
      self.manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()

  def reload(self) -> None:
    """Re-reads the step directories (after the trainer moved some aside)."""
    self.manager.reload()

  # ------------------------------------------------------------------ restoring
  def steps(self) -> list[int]:
    self.manager.reload()  # what is on disk now, not what this manager saw when it started
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, step: int | None = None, check_meta=None) -> tuple[Any, dict, dict, int]:
    """(state, data state, meta, step) of `step`, or of the newest readable step when None.

    `abstract_state` holds jax.ShapeDtypeStructs with shardings: arrays are read straight into
    those shards, on whatever mesh the run has now. `check_meta(meta)` runs before the arrays are
    read (a resume's checks: a refusal is a CheckpointError, not an unreadable step). With several
    processes every decision is taken together: a step one process cannot read is unreadable for
    all, so no process falls back alone while the others wait for it in a collective.
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoints in {self.directory}")
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; steps: {steps}")
    candidates = [step] if step is not None else steps[::-1]
    self.unreadable = []
    for i, s in enumerate(candidates):
      result, error = None, None
      try:
        result = self._read_step(abstract_state, s, check_meta)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - any read failure means this step is not usable
        error = e
      error = _agree(error)
      if error is None and self.verify and result[2].get("checksums"):
        # a collective over the state: reached by every process, since every read succeeded
        bad = checksums.mismatches(result[2]["checksums"], checksums.tree_checksums(result[0]))
        error = _agree(ChecksumError(f"{len(bad)} array(s) differ from their saved checksums, first {bad[0]}")
                       if bad else None)
      if error is None:
        state, data, meta = result
        return _from_tree(abstract_state, state), data, meta, s
      reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      if step is not None or i == len(candidates) - 1:
        raise CheckpointError(f"checkpoint step {s} in {self.directory} cannot be read ({reason})") from None
      self.log(f"checkpoint: step {s} cannot be read ({reason}); falling back to step {candidates[i + 1]}")
      self.unreadable.append(s)
    raise AssertionError("unreachable")

  def _read_step(self, abstract_state, step: int, check_meta) -> tuple[Any, dict, dict]:
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if check_meta is not None:
      check_meta(meta)
    saved = self.manager.item_metadata(step)["state"]
    if saved is None:
      raise OSError("no state metadata")
    target = _as_tree(abstract_state)
    check_compatible(saved.tree if hasattr(saved, "tree") else saved, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], meta


def _agree(error: BaseException | None) -> BaseException | None:
  """This process's error, or (multi-host) another process's failure as this one's: all see the same."""
  if jax.process_count() == 1:
    return error
  from jax.experimental import multihost_utils
  failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).reshape(-1)
  if error is None and failed.any():
    return OSError(f"process {int(np.flatnonzero(failed)[0])} could not read or verify it")
  return error


class ChecksumError(OSError):
  """Restored bytes differ from what was saved: the step is treated as unreadable."""


def _root_cause(e: BaseException) -> str:
  """The innermost cause's one-line message (Orbax wraps the OSError of a full disk several times).
  Stops at our own exceptions: an error the trainer was already handling is not the save's cause."""
  while True:
    nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if nxt is None or type(nxt).__module__.startswith("research"):
      break
    e = nxt
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__
