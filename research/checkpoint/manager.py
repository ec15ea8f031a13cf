"""`Checkpointer`: one Orbax CheckpointManager over DIR/checkpoints with three items per step:

  state  the TrainState pytree (params, optimizer state, step, rng, skipped steps)  StandardSave
  data   the training iterator's state (a small JSON dict)                          JsonSave
  meta   resolved config, mesh, code version, time                                 JsonSave

Saves are asynchronous by default: `save` returns once arrays are copied off the devices, and the
write finishes in the background. Orbax writes each step into a temporary directory and renames it
when complete, so a killed save never looks finished; a step that still fails to read is skipped
(with a log line) in favour of the newest one that reads. Nothing is unpickled: arrays are
tensorstore/OCDBT, the rest JSON.
"""
from __future__ import annotations

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
          "meta": ocp.JsonCheckpointHandler()}


def _as_tree(state):
  """A TrainState (a dataclass pytree) as a plain dict, so checkpoints hold named items."""
  if dataclasses.is_dataclass(state):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return state


def _from_tree(like, tree):
  return type(like)(**tree) if dataclasses.is_dataclass(like) else tree


class Checkpointer:

  def __init__(self, directory: str, ckpt_cfg, log=print):
    self.directory = os.path.abspath(directory)
    self.log = log
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
    meta = dict(meta, step=step, time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                code_version=meta.get("code_version") or code_version())
    args = ocp.args.Composite(state=ocp.args.StandardSave(_as_tree(state)), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    self.last_save_time = time.time()
    return bool(self.manager.save(step, args=args, metrics=metrics, force=True))

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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  # ------------------------------------------------------------------ restoring
  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps(read=True))

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict, int]:
    """(state, data state, meta, step) of `step`, or of the newest readable step when None.

    `abstract_state` holds jax.ShapeDtypeStructs with shardings: arrays are read straight into
    those shards, on whatever mesh the run has now.
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoints in {self.directory}")
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; steps: {steps}")
    candidates = [step] if step is not None else steps[::-1]
    for i, s in enumerate(candidates):
      try:
        return self._restore_step(abstract_state, s) + (s,)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - any read failure means this step is not usable
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if step is not None or i == len(candidates) - 1:
          raise CheckpointError(f"checkpoint step {s} in {self.directory} cannot be read ({reason})") from None
        self.log(f"checkpoint: step {s} cannot be read ({reason}); falling back to step {candidates[i + 1]}")
    raise AssertionError("unreachable")

  def _restore_step(self, abstract_state, step: int) -> tuple[Any, dict, dict]:
    saved = self.manager.item_metadata(step)["state"]
    if saved is None:
      raise OSError("no state metadata")
    target = _as_tree(abstract_state)
    check_compatible(saved.tree if hasattr(saved, "tree") else saved, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return _from_tree(abstract_state, restored["state"]), restored["data"], restored["meta"]
