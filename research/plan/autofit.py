"""`--autofit`: search layouts for a TPU target by compiling them, and rank those that fit.

Candidates: every factorisation of the target's devices over (data, fsdp, tensor) (tensor limited to
divisors of the KV heads, at most 8, and to one slice), each remat policy in `policies`, and the
global batch either fixed (the config's) or grown by doubling from it while it still fits ('max').
Every candidate is compiled for the target exactly as training would compile it; a layout is only
ever proposed if it compiled and fits.

Ranking: by estimated tokens/s = global batch x seq_len / estimated step time (research/plan/
dry_run.py: compute at the chip's peak, with the remat recompute, plus collective bytes over ICI,
without overlap). The estimate orders layouts by what they cost in FLOPs and communication; it is not
a measured speed. Ties go to the layout with more HBM to spare.
"""
from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import time

import ml_collections

from research.perf.compiled import format_bytes
from research.plan.dry_run import _sec, plan_for_target
from research.plan.targets import PlanError, tpu_devices

DEFAULT_POLICIES = ("none", "dots_saveable", "full")


def layouts(devices: int, slices: int, kv_heads: int, batch: int, max_tensor: int = 8) -> list[tuple]:
  """(data, fsdp, tensor) per slice, each a factorisation of the per-slice devices that the batch divides."""
  per_slice = devices // slices
  out = []
  for tensor in (t for t in (1, 2, 4, 8) if t <= max_tensor and per_slice % t == 0 and kv_heads % t == 0):
    rest = per_slice // tensor
    for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
      data = rest // fsdp
      if batch % (data * slices * fsdp) == 0:
        out.append((data, fsdp, tensor))
  return out


def _plan_one(cfg_dict: dict, target: str, slices: int) -> dict:
  """Worker: one compile (runs in a fresh process when compiling in parallel; `tpu_devices` keeps
  libtpu quiet there before anything starts a backend)."""
  cfg = ml_collections.ConfigDict(cfg_dict)
  mesh_per_slice = tuple(cfg.mesh.shape)
  try:
    report = plan_for_target(cfg, target, slices)
  except PlanError as e:
    report = {"fits": False, "reason": str(e), "compiled": False}
  except Exception as e:  # noqa: BLE001 - a candidate the compiler rejects is a row, not a crash
    report = {"fits": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", "compiled": False}
  report.setdefault("compiled", "compile_seconds" in report)
  report["layout"] = mesh_per_slice
  report["remat_policy"] = cfg.model.remat
  report["global_batch"] = cfg.train.batch_size
  if report["fits"]:
    report["estimated_tokens_per_sec"] = cfg.train.batch_size * cfg.train.seq_len / report["estimated_step_seconds"]
  return report


def _candidate(cfg, layout, policy, batch) -> dict:
  c = copy.deepcopy(cfg)
  c.mesh.shape = tuple(layout)
  c.model.remat = policy      # scan_layers stays the config's (it changes the parameter layout and init)
  c.train.batch_size = batch
  return c.to_dict()


def autofit(cfg, target: str, slices: int = 1, batch_mode: str = "fixed", policies=DEFAULT_POLICIES,
            budget_seconds: float = 600.0, workers: int = 1, log=print) -> list[dict]:
  """All candidate reports, best first (fitting ones ranked, then the rest). See the module docstring."""
  devices = tpu_devices(target, slices)
  kv = cfg.model.num_kv_heads or cfg.model.num_heads
  start, rows = time.time(), []
  batch = cfg.train.batch_size
  todo = [(layout, policy, batch) for layout in layouts(len(devices), slices, kv, batch) for policy in policies]
  if not todo:
    raise PlanError(f"no (data, fsdp, tensor) layout of {len(devices)} devices divides train.batch_size={batch}", 4)
  log(f"autofit: {len(todo)} candidate(s) on {target}" + (f" x {slices}" if slices > 1 else "")
      + f", batch {batch_mode}, budget {budget_seconds:.0f}s, {workers} worker(s)")
  ctx = multiprocessing.get_context("spawn")
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) if workers > 1 else None
  try:
    while todo:
      if time.time() - start > budget_seconds:
        log(f"autofit: time budget spent; {len(todo)} candidate(s) not compiled")
        break
      wave, todo = todo[:max(1, workers)], todo[max(1, workers):]
      args = [(_candidate(cfg, *c), target, slices) for c in wave]
      results = list(pool.map(_plan_one, *zip(*args))) if pool else [_plan_one(*a) for a in args]
      for (layout, policy, b), r in zip(wave, results):
        rows.append(r)
        log(f"  {layout} remat={policy} batch={b}: " + (f"fits, est. {r['estimated_tokens_per_sec']:,.0f} tokens/s"
                                                        if r["fits"] else f"no ({r.get('reason', 'does not fit')[:80]})"))
        if batch_mode == "max" and r["fits"] and b * 2 <= 1 << 20:
          todo.append((layout, policy, b * 2))  # grow the batch while it fits
  finally:
    if pool:
      pool.shutdown()
  fitting = sorted((r for r in rows if r["fits"]),
                   key=lambda r: (-r["estimated_tokens_per_sec"], -r["margin_bytes"]))
  return fitting + [r for r in rows if not r["fits"]]


def format_table(rows: list[dict]) -> str:
  head = (f"{'rank':>4}  {'mesh (data,fsdp,tensor)':<24} {'remat':<14} {'batch':>6} {'mem/device':>11} {'HBM':>5} "
          f"{'est. step':>10} {'est. tok/s':>12} {'est. MFU':>8}  fits")
  lines = [head]
  for i, r in enumerate(rows, 1):
    if r["fits"]:
      lines.append(f"{i:>4}  {str(r['layout']):<24} {r['remat_policy']:<14} {r['global_batch']:>6} "
                   f"{format_bytes(int(r['memory']['total'])):>11} "
                   f"{100 * r['memory']['total'] / r['usable_hbm_bytes_per_device']:>4.0f}% "
                   f"{_sec(r['estimated_step_seconds']):>10} {r['estimated_tokens_per_sec']:>12,.0f} "
                   f"{100 * r['estimated_mfu']:>7.0f}%  yes")
    else:
      lines.append(f"{'-':>4}  {str(r['layout']):<24} {r['remat_policy']:<14} {r['global_batch']:>6} "
                   f"{'':>11} {'':>5} {'':>10} {'':>12} {'':>8}  no: {r.get('reason', '')[:70]}")
  return "\n".join(lines)


def overrides_for(best: dict, slices: int) -> list[str]:
  """The best row as flags scripts/train.py takes (also from a --flagfile)."""
  d, f, t = best["layout"]
  return [f"--config.mesh.shape=({d},{f},{t})", f"--config.model.remat={best['remat_policy']}",
          f"--config.train.batch_size={best['global_batch']}"]
