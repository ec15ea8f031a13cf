"""Splitting one machine's accelerators between the trials a worker runs at once (--parallel,
--devices_per_trial), without starting JAX in the worker (which would take the devices itself).

Each slot gets the environment that makes its child process see only its devices:
  gpu: CUDA_VISIBLE_DEVICES
  tpu: TPU_VISIBLE_CHIPS with TPU_CHIPS_PER_HOST_BOUNDS / TPU_HOST_BOUNDS for the sub-slice (the
       variables Ray sets for the same job; 1, 2 or 4 chips per process), its own TPU_PROCESS_PORT
  cpu: the slot's share of the cores (sched_setaffinity) and devices_per_trial host devices
"""
from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess

from research.config import ConfigError

TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}


@dataclasses.dataclass
class Slot:
  index: int
  env: dict                    # variables to set in the child's environment
  cpus: set | None             # cores to pin the child to (cpu), None: all
  devices: int | None          # devices the child sees (None: not set here)


def child_env(slot: Slot, root: str) -> dict:
  """A child run's environment: this process's, the slot's device variables, the repository first on
  PYTHONPATH (the experiment files import `research` and `tests.helpers`)."""
  env = dict(os.environ, **slot.env)
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  return env


def detect(accelerator: str = "auto") -> tuple[str, int]:
  """(kind, local device count): gpu from nvidia-smi, tpu from /dev/accel* or /dev/vfio, else cpu."""
  if accelerator in ("auto", "gpu") and shutil.which("nvidia-smi"):
    try:
      out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
      gpus = [line for line in out.splitlines() if line.startswith("GPU ")]
      if gpus:
        return "gpu", len(gpus)
    except (OSError, subprocess.SubprocessError):
      pass
  if accelerator in ("auto", "tpu"):
    chips = glob.glob("/dev/accel*") or [p for p in glob.glob("/dev/vfio/*") if os.path.basename(p).isdigit()]
    if chips:
      return "tpu", len(chips)
  if accelerator not in ("auto", "cpu"):
    raise ConfigError(f"--accelerator={accelerator}: none found on this machine")
  return "cpu", len(os.sched_getaffinity(0))


def slots(kind: str, count: int, parallel: int, devices_per_trial: int | None) -> list[Slot]:
  """`parallel` slots of `devices_per_trial` devices each (default: the devices split evenly)."""
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel} must be at least 1")
  if kind == "cpu":
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // parallel)
    out = []
    for i in range(parallel):
      env = {}
      if devices_per_trial:
        flags = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = " ".join(f for f in flags.split() if "force_host_platform_device_count" not in f) + \
            f" --xla_force_host_platform_device_count={devices_per_trial}"
      mine = set(cores[i * per:(i + 1) * per]) if parallel > 1 and len(cores) >= parallel else None
      out.append(Slot(i, env, mine, devices_per_trial))   # None: however many the run's config makes
    return out
  per = devices_per_trial or count // parallel
  if per < 1 or per * parallel > count:
    raise ConfigError(f"--parallel={parallel} x --devices_per_trial={per} needs {per * parallel} {kind.upper()}s; "
                     f"this machine has {count}")
  out = []
  for i in range(parallel):
    ids = ",".join(str(d) for d in range(i * per, (i + 1) * per))
    if kind == "gpu":
      env = {"CUDA_VISIBLE_DEVICES": ids}
    else:
      if per != count and per not in TPU_BOUNDS:
        raise ConfigError(f"--devices_per_trial={per}: a TPU host splits into sub-slices of "
                         f"{', '.join(map(str, TPU_BOUNDS))} chips")
      env = {} if per == count else {"TPU_VISIBLE_CHIPS": ids, "TPU_CHIPS_PER_HOST_BOUNDS": TPU_BOUNDS[per],
                                     "TPU_HOST_BOUNDS": "1,1,1", "TPU_PROCESS_PORT": str(8476 + i),
                                     "TPU_MESH_CONTROLLER_PORT": str(8476 + i)}
    out.append(Slot(i, env, None, per))
  return out
