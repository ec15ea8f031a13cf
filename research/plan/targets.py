"""Target hardware: TPU topologies through libtpu (compile-only devices), and datasheet tables.

HBM per chip, datasheet (and what libtpu 0.0.42.1's compiler reports as usable per device, read from
its out-of-memory message on this machine, 2026-11-23):
  v4   32 GiB  https://cloud.google.com/tpu/docs/v4          (2 TensorCores = 2 devices; usable 15.25 GiB each)
  v5e  16 GB   https://cloud.google.com/tpu/docs/v5e         (usable 15.75 GiB)
  v5p  95 GB   https://cloud.google.com/tpu/docs/v5p-training (usable 95.74 GiB)
  v6e  32 GB   https://cloud.google.com/tpu/docs/v6e         (usable 31.25 GiB)
Peak dense bf16 FLOP/s per chip: v4 275e12, v5e 197e12, v5p 459e12, v6e 918e12 (same pages).
GPUs (for the analytic estimate): A100 40/80 GB, H100 80 GB, H200 141 GB, B200 192 GB; bf16 dense
312e12 (A100), 989e12 (H100/H200 SXM), 2250e12 (B200).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

GIB = 1024**3


class PlanError(Exception):
  """A planning failure with the exit code scripts/train.py returns for it."""

  def __init__(self, message: str, code: int):
    super().__init__(message)
    self.code = code


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: float            # per device (a v4 device is one TensorCore: half a chip)
  usable_hbm_bytes: float     # what the compiler lets one program use per device
  peak_flops: float           # dense bf16 per device
  devices_per_chip: int = 1


TPU_CHIPS = {
    "v4": Chip("TPU v4", 16 * GIB, 15.25 * GIB, 275e12 / 2, devices_per_chip=2),
    "v5e": Chip("TPU v5e", 16 * GIB, 15.75 * GIB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 95.74 * GIB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GIB, 31.25 * GIB, 918e12),
}
GPU_CHIPS = {
    "a100-40": Chip("A100 40GB", 40e9, 40e9, 312e12),
    "a100-80": Chip("A100 80GB", 80e9, 80e9, 312e12),
    "h100": Chip("H100 80GB", 80e9, 80e9, 989e12),
    "h200": Chip("H200 141GB", 141e9, 141e9, 989e12),
    "b200": Chip("B200 192GB", 192e9, 192e9, 2250e12),
}
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")


def parse_target(name: str) -> tuple[str, Chip]:
  """'v5p:4x4x4' -> ('v5p', its Chip); a GPU name -> (name, Chip) with no topology."""
  if name.lower() in GPU_CHIPS:
    return name.lower(), GPU_CHIPS[name.lower()]
  m = _NAME.match(name)
  if not m:
    raise PlanError(f"--target={name!r} is not a TPU topology (v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB, "
                    f"e.g. v5p:4x4x4) or a GPU ({', '.join(GPU_CHIPS)})", 6)
  return m.group(1), TPU_CHIPS[m.group(1)]


def quiet_libtpu() -> None:
  """libtpu on a machine without TPUs logs host-bounds errors at backend start; these settings (set
  only when the caller has not) describe a 1-host slice so it stays quiet. They change nothing about
  the topologies we ask for, and training still runs on the CPU."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Compile-only use: do not take libtpu's one-process lock (another planner or test may hold it).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def quiet_libtpu_without_tpu() -> None:
  """For entry points: on a machine with libtpu installed but no TPU chips (no /dev/accel*, no
  /dev/vfio devices), keep libtpu's start-up errors off the console; training falls back to CPU/GPU
  either way. Never touches a real TPU VM."""
  import glob
  if importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  quiet_libtpu()


def tpu_devices(topology: str, slices: int = 1) -> list:
  """The compile-only devices of `slices` copies of a TPU topology (no TPU needed, libtpu is)."""
  if importlib.util.find_spec("libtpu") is None:
    raise PlanError("planning for a TPU needs libtpu (the package TPU VMs use): "
                    "pip install -r requirements-tpu.txt", 5)
  quiet_libtpu()
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=slices).devices)
  except Exception as e:  # noqa: BLE001 - libtpu raises JaxRuntimeError with INVALID_ARGUMENT
    raise PlanError(f"--target={topology}: libtpu rejects it: {str(e).splitlines()[0][:300]}", 6) from None
