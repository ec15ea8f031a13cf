"""`--dry_run --target=TOPOLOGY`: compile exactly the train step training would run (same function,
shardings, remat and scan settings, dtypes, batch) for a TPU topology on this machine and report
memory per chip against HBM, FLOPs, an estimated step time and the collectives.

Step-time estimate (an explained model, not a measurement):
  compute       = model FLOPs per step x remat recompute factor / (chips x peak bf16 FLOP/s)
  communication = collective bytes per chip per step (result sizes; loops x trip count) / ICI bytes/s
  step          = compute + communication (no overlap assumed: an upper bound; XLA overlaps much of
                  FSDP's gathers with compute on TPU, so real steps are usually faster)
The compiler's own estimate (`optimal_seconds`, FLOPs) is printed beside it; XLA counts a loop body
(the scan over layers) once, not once per layer, so for scanned models it reads low.
"""
from __future__ import annotations

import re
import time

import jax

from research.config import ConfigError
from research.models import count_params, flops_per_token
from research.perf.compiled import compiler_flops, format_bytes, memory_report
from research.plan.collectives import collectives_summary
from research.plan.targets import PlanError, parse_target, tpu_devices
from research.sharding.mesh import make_mesh, resolve_mesh_shape
from research.train.program import build_program
from research.train.setup import complete_config

# Per-chip ICI bandwidth (bytes/s, all links), from the Cloud TPU system-architecture pages.
ICI_BYTES_PER_S = {"v4": 300e9, "v5e": 200e9, "v5p": 600e9, "v6e": 448e9}
# Forward passes recomputed in the backward, as a fraction of one forward (training = 3 forwards).
REMAT_RECOMPUTE = {"none": 0.0, "dots_saveable": 0.0, "dots_no_batch_saveable": 0.1, "attn_out_saveable": 0.9,
                   "mlp_out_saveable": 0.9, "attn_mlp_out_saveable": 0.8, "full": 1.0}
_OOM = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def target_mesh(cfg, devices: list, slices: int) -> jax.sharding.Mesh:
  """cfg.mesh.shape inside each slice; with several slices, data parallel across them (the
  data-centre network), like MaxText's dcn/ici split. Sets cfg.mesh.shape to the global shape."""
  per_slice = len(devices) // slices
  try:
    shape = resolve_mesh_shape(cfg.mesh.shape, per_slice)
  except ValueError as e:
    raise PlanError(f"mesh.shape={tuple(cfg.mesh.shape)} does not fit the target's {per_slice} devices per "
                    f"slice: {e}", 4) from None
  cfg.mesh.shape = (shape[0] * slices,) + tuple(shape[1:])
  cfg.mesh.dcn_shape = (slices, 1, 1)
  return make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape)


def plan_for_target(cfg, target: str, slices: int = 1, gpus: int = 8) -> dict:
  """The report for one config on one target (see the module docstring). Raises PlanError for a
  target or mesh that cannot be used; a config that does not fit returns fits=False."""
  family, chip = parse_target(target)
  if family not in ICI_BYTES_PER_S:
    from research.plan.gpu_estimate import plan_for_gpu
    return plan_for_gpu(cfg, family, gpus)
  devices = tpu_devices(target, slices)
  mesh = target_mesh(cfg, devices, slices)
  try:
    task, _ = complete_config(cfg, len(devices), log=lambda *a: None, need_data=False,
                              processes=len({d.process_index for d in devices}), backend="tpu")
  except ConfigError as e:
    raise PlanError(str(e), 4 if "mesh" in str(e) or "divisible" in str(e) else 1) from None
  t = cfg.train
  program = build_program(cfg, mesh, task)
  start = time.time()
  report = {"target": target, "slices": slices, "devices": len(devices), "chip": chip.name,
            "devices_per_chip": chip.devices_per_chip, "mesh": dict(mesh.shape), "remat": cfg.model.remat,
            "scan_layers": cfg.model.scan_layers, "batch_size": t.batch_size, "seq_len": t.seq_len,
            "parameters": count_params(cfg.model), "hbm_bytes_per_device": chip.hbm_bytes,
            "usable_hbm_bytes_per_device": chip.usable_hbm_bytes}
  try:
    compiled = program.compile_train_step()
  except Exception as e:  # noqa: BLE001 - the compiler's out-of-memory is an answer, not a failure
    m = _OOM.search(str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) and m is None:
      raise
    unit = lambda v, u: float(v) * 1024 ** ("KMGT".index(u) + 1)
    report.update(fits=False, compile_seconds=time.time() - start,
                  memory={"total": unit(*m.group(1, 2)) if m else None},
                  reason=str(e).splitlines()[0][:300])
    if m:
      report["usable_hbm_bytes_per_device"] = unit(*m.group(3, 4))
    return report
  report["compile_seconds"] = time.time() - start
  memory = memory_report(compiled, program.abstract_state(), program.abstract_batch(t.batch_size, t.seq_len))
  usable = report["usable_hbm_bytes_per_device"]
  report.update(memory=memory, fits=memory["total"] <= usable, margin_bytes=usable - memory["total"])
  # FLOPs and the step-time estimate
  model_flops = flops_per_token(cfg.model, t.seq_len) * t.batch_size * t.seq_len
  compute_s = model_flops * (3 + REMAT_RECOMPUTE[cfg.model.remat]) / 3 / (len(devices) * chip.peak_flops)
  collectives = collectives_summary(compiled.as_text())
  comm_bytes = sum(c["bytes_per_step"] for c in collectives.values())
  comm_s = comm_bytes / (ICI_BYTES_PER_S[family] / chip.devices_per_chip)
  step_s = compute_s + comm_s
  cost = compiled.cost_analysis() or {}
  report.update(model_flops_per_step=model_flops, compiler_flops_per_device=compiler_flops(compiled),
                compiler_optimal_seconds=cost.get("optimal_seconds"), estimated_compute_seconds=compute_s,
                estimated_communication_seconds=comm_s, estimated_step_seconds=step_s,
                estimated_mfu=model_flops / (step_s * len(devices) * chip.peak_flops),
                collectives=collectives, collective_bytes_per_device=comm_bytes)
  return report


def _sec(s: float) -> str:
  return f"{s:.3f}s" if s >= 0.1 else f"{s * 1e3:.3f}ms" if s >= 1e-4 else f"{s * 1e6:.1f}us"


def format_report(r: dict) -> str:
  if r.get("analytic"):
    from research.plan.gpu_estimate import format_gpu_report
    return format_gpu_report(r)
  f = format_bytes
  lines = [f"target {r['target']}" + (f" x {r['slices']} slices" if r["slices"] > 1 else "")
           + f": {r['devices']} x {r['chip']} device(s)" + (" (one per TensorCore)" if r["devices_per_chip"] > 1 else "")
           + f", mesh {r['mesh']}, remat {r['remat']}, scan_layers {r['scan_layers']}, batch {r['batch_size']} x "
           f"{r['seq_len']}, {r['parameters']:,} parameters; compiled in {r['compile_seconds']:.1f}s"]
  usable = r["usable_hbm_bytes_per_device"]
  if not r["fits"]:
    need = r["memory"].get("total")
    lines.append(f"DOES NOT FIT: needs {f(int(need)) if need else '?'} per device, {f(int(usable))} usable "
                 f"(the compiler: {r.get('reason', '')})")
    return "\n".join(lines)
  m = r["memory"]
  lines.append(f"per device: parameters {f(m['params'])}, optimizer state {f(m['optimizer_state'])}, batch "
               f"{f(m['batch'])}, temporaries {f(m['temporaries'])}, generated code {f(m['generated_code'])}; "
               f"total {f(m['total'])} of {f(int(usable))} usable HBM "
               f"({f(int(r['hbm_bytes_per_device']))} datasheet)")
  lines.append(f"FITS with {f(int(r['margin_bytes']))} to spare ({100 * m['total'] / usable:.0f}% used)")
  optimal = r["compiler_optimal_seconds"]
  lines.append(f"FLOPs per step: model {r['model_flops_per_step']:.3e}; compiler {r['compiler_flops_per_device'] or 0:.3e} "
               f"per device" + (" (the scan body counted once)" if r["scan_layers"] else "")
               + (f", compiler optimal_seconds {_sec(optimal)}" if optimal and optimal > 0 else ""))
  lines.append(f"estimated step {_sec(r['estimated_step_seconds'])} = compute {_sec(r['estimated_compute_seconds'])} "
               f"+ communication {_sec(r['estimated_communication_seconds'])} (no overlap assumed) -> MFU "
               f"{100 * r['estimated_mfu']:.0f}% at the chip's peak (an estimate, not a measurement)")
  for kind, c in r["collectives"].items():
    lines.append(f"  {kind}: {c['instructions']} instruction(s), {c['per_step']} per step, "
                 f"{f(int(c['bytes_per_step']))} per device per step")
  if not r["collectives"]:
    lines.append("  no collectives")
  return "\n".join(lines)


def exit_code(report: dict) -> int:
  return 0 if report["fits"] else 3
