"""--dry_run for a sweep: every distinct trial *shape* (the config values that change what compiles
and how much memory it takes: model, mesh, batch, sequence length, LoRA) planned once with
scripts/train.py --dry_run [--target=...], before any trial starts. A space with a shape that does
not fit is refused, naming the shape.

grid / random: the shapes of the design's trials. tpe: every value of each shape parameter (a
continuous or wide integer one: its ends and middle), with the other parameters at one value.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

from research.sweeps.space import Sweep, config_flags, is_config_key, trial_overrides
from research.sweeps.trial_run import ROOT, TRAIN_SCRIPT

SHAPE_KEYS = ("model.", "mesh.", "lora.", "train.batch_size", "train.seq_len", "train.microbatches",
              "train.loss_chunks", "data.vocab_size")
_TOTAL = re.compile(r"total ([\d.]+ \w?i?B) of ([\d.]+ \w?i?B)")   # the plan's memory line
WIDE = 16          # an integer range with more values than this is planned at its ends and middle


@dataclasses.dataclass
class ShapePlan:
  shape: dict
  code: int                          # train.py's exit code: 0 fits, 3 does not fit, other: could not plan
  report: str                        # the tail of its output


def is_shape_key(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SHAPE_KEYS)


def _values(p) -> tuple:
  if p.kind == "choice":
    return tuple(p.values)
  if p.values is not None:
    return tuple(p.values)
  if p.kind == "int":
    count = (int(p.high) - int(p.low)) // p.step + 1
    if count <= WIDE:
      return tuple(range(int(p.low), int(p.high) + 1, p.step))
    middle = int(math.sqrt(p.low * p.high)) if p.log else (int(p.low) + int(p.high)) // 2
    return tuple(sorted({int(p.low), middle, int(p.high)}))
  return (p.low, p.high)


def _candidate_points(sweep: Sweep, base) -> list[dict]:
  if sweep.sampler != "tpe":
    return sweep.points()
  shaping_keys = {k for k in sweep.space if is_shape_key(k) or not is_config_key(base, k)}   # a free name may derive one
  # a key a shape parameter is conditional on: every value, or the shapes under the others are missed
  shaping_keys |= {k for key in list(shaping_keys) for k in (sweep.space[key].when or {})}
  points = [{}]
  for key, p in sweep.space.items():
    grown = []
    for point in points:
      if not p.applies(point):
        grown.append(point)
        continue
      values = _values(p) if key in shaping_keys else _values(p)[:1]
      grown.extend({**point, key: v} for v in values)
    points = grown
  return points


def trial_shapes(sweep: Sweep, base) -> list[dict]:
  """The distinct shape-relevant overrides of the sweep's trials (each a dict key -> value)."""
  seen, out = set(), []
  for point in _candidate_points(sweep, base):
    values = trial_overrides(sweep, point, sweep.seeds[0], base)
    shape = {k: v for k, v in values.items() if is_shape_key(k)}
    key = json.dumps(shape, sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      out.append(shape)
  return out


def plan_shapes(base_spec: str, shapes: list[dict], target: str | None, slices: int = 1, gpus: int = 8,
                extra_flags=(), log=print) -> list[ShapePlan]:
  out = []
  for i, shape in enumerate(shapes):
    command = [sys.executable, TRAIN_SCRIPT, f"--config={base_spec}", "--dry_run", *config_flags(shape), *extra_flags]
    if target:
      command += [f"--target={target}", f"--target_slices={slices}", f"--target_devices={gpus}"]
    log(f"sweep dry run: shape {i + 1}/{len(shapes)}: {_describe(shape) or '(the base config)'}")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    text = (done.stdout + done.stderr).strip()
    out.append(ShapePlan(shape, done.returncode, "\n".join(text.splitlines()[-30:])))
  return out


def format_plans(plans: list[ShapePlan]) -> str:
  lines = []
  for p in plans:
    verdict = {0: "fits", 3: "DOES NOT FIT"}.get(p.code, f"could not plan (exit {p.code})")
    detail = ""
    if p.code not in (0,):
      errors = [line for line in p.report.splitlines() if line.startswith("error:")]
      detail = f": {errors[-1]}" if errors else ""
    memory = _TOTAL.findall(p.report)
    lines.append(f"  {verdict:<14} {_describe(p.shape) or '(the base config)'}"
                 + (f"  [{memory[-1][0]} of {memory[-1][1]}]" if memory and not detail else "") + detail)
  return "\n".join(lines)


def _describe(shape: dict) -> str:
  return " ".join(f"{k}={v}" for k, v in shape.items())
