"""Peak FLOP/s of the devices, and model FLOPs utilisation (MFU).

MFU = (training FLOPs per token from `research.models.flops_per_token`) x tokens/s / peak FLOP/s.
Peak: dense bf16 figures from vendor datasheets for known accelerators; on CPU (and any unknown
device) a matmul in the compute dtype measured on the spot, bf16 with float32 accumulation for
bf16, as our matmuls run it (10-20 s per process on a 2-core CPU); train.peak_flops gives the figure
instead.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 FLOP/s per chip, matched on a substring of `device.device_kind`, most specific first.
PEAK_BF16_FLOPS_PER_CHIP: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),   # v6e (Trillium)
    ("TPU v5 lite", 197e12),   # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),        # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("H200", 989e12),          # SXM, dense (no sparsity)
    ("H100", 989e12),          # SXM; PCIe is 756e12
    ("A100", 312e12),
)


def table_peak(device_kind: str) -> float | None:
  for key, flops in PEAK_BF16_FLOPS_PER_CHIP:
    if key.lower() in device_kind.lower():
      return flops
  return None


def measure_matmul_peak(devices, dtype_name: str, sizes: tuple[int, ...] = (1024, 2048),
                        repeats: int = 10) -> float:
  """Best FLOP/s over `repeats` runs of one n^3 matmul per device for each n in `sizes`, run on all
  `devices` at once (inputs in `dtype_name`, float32 accumulation, as our matmuls run). The best run,
  not the median: a peak is what the hardware can do, and on a shared CPU even the best of 10 varies
  between runs. Several sizes because the fastest one depends on the CPU (PERFORMANCE.md gives both
  boxes' figures). CPU "devices" (also the fake ones of --xla_force_host_platform_device_count) share
  the host's cores, so running them together is what measures the host's real peak."""
  return max(_measure(tuple(devices), dtype_name, n, repeats) for n in sizes)


@functools.lru_cache(maxsize=None)
def _measure(devices, dtype_name, n, repeats) -> float:
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  dtype = jnp.dtype(dtype_name)
  a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (len(devices), n, n), dtype), sharding)
  b = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (len(devices), n, n), dtype), sharding)
  f = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return len(devices) * 2 * n**3 / float(np.min(times))


def peak_flops(devices, compute_dtype: str, given: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s of all `devices` together, where the figure came from). given > 0
  (train.peak_flops): that figure, nothing measured."""
  if given > 0:
    return given, "train.peak_flops"
  kind = devices[0].device_kind
  per_chip = table_peak(kind)
  if per_chip is not None:
    return per_chip * len(devices), f"datasheet bf16 dense, {kind} x{len(devices)}"
  local = [d for d in devices if d.process_index == jax.process_index()]
  measured = measure_matmul_peak(local, compute_dtype) * len(devices) / len(local)
  return measured, f"measured {compute_dtype} matmul on {len(devices)} {kind} device(s)"


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
  return flops_per_token * tokens_per_sec / peak if peak > 0 else 0.0


def compute_summary(flops_per_token: float, tokens: int, num_devices: int, seconds: float,
                    cost_per_device_hour: float = 0.0) -> dict:
  """What the run used: tokens, model FLOPs (flops_per_token x tokens), device-hours (devices x wall
  seconds of the whole run, as billed) and, with a price, its cost."""
  device_hours = num_devices * seconds / 3600
  summary = {"tokens_seen": int(tokens), "total_flops": flops_per_token * tokens,
             "device_hours": device_hours, "cost_per_device_hour": cost_per_device_hour or None,
             "estimated_cost": device_hours * cost_per_device_hour if cost_per_device_hour else None}
  return summary


def format_compute_summary(s: dict) -> str:
  cost = f", estimated cost ${s['estimated_cost']:,.2f} at ${s['cost_per_device_hour']:g}/device-hour" \
      if s["estimated_cost"] is not None else " (set train.cost_per_device_hour for a cost estimate)"
  return (f"compute: {s['tokens_seen']:,} tokens, {s['total_flops']:.3e} model FLOPs, "
          f"{s['device_hours']:.4f} device-hours{cost}")
