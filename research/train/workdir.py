"""The workdir between runs: never lose work when starting over or resuming from an older step."""
from __future__ import annotations

import json
import os
import time

from research.checkpoint import CheckpointError


def checkpoint_steps(ckpt_dir: str) -> list[int]:
  return sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(ckpt_dir) else []


def check_resume(workdir: str, resume) -> None:
  """Every process runs this before process 0 moves anything, so a bad --restore_step stops all of
  them with the same error instead of leaving the others at a barrier."""
  if isinstance(resume, int):
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = checkpoint_steps(ckpt_dir)
    if resume not in steps:
      raise CheckpointError(f"no checkpoint for step {resume} in {ckpt_dir}; steps: {steps}")


def prepare_workdir(workdir: str, resume, log) -> None:
  """--fresh moves the previous run's checkpoints, metrics and TensorBoard logs aside; resuming from
  an older step moves the newer steps aside, so 'latest' cannot later pick them up. Process 0 only."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  stamp = time.strftime("%Y%m%d-%H%M%S")
  steps = checkpoint_steps(ckpt_dir)
  if resume == "fresh" or not steps:
    names = ["checkpoints", "metrics.jsonl", "tensorboard"] if resume == "fresh" else ["metrics.jsonl", "tensorboard"]
    for name in names:
      path = os.path.join(workdir, name)
      if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        os.rename(path, f"{path}.before-{stamp}")
        log(f"workdir: moved the previous run's {name} to {path}.before-{stamp}")
  elif isinstance(resume, int):
    check_resume(workdir, resume)
    newer = [s for s in steps if s > resume]
    if newer:
      aside = f"{ckpt_dir}.after-{resume}-{stamp}"
      os.makedirs(aside)
      for s in newer:
        os.rename(os.path.join(ckpt_dir, str(s)), os.path.join(aside, str(s)))
      log(f"checkpoint: --restore_step={resume}: moved the newer steps {newer} to {aside}")


def truncate_metrics(path: str, step: int) -> None:
  """On resume from `step`, drop records of later steps (they will be produced again) and a line
  torn by a kill mid-write."""
  if not os.path.isfile(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except json.JSONDecodeError:
        continue
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
