"""An analytic per-device memory estimate for targets we cannot compile for (GPUs), from the config
and the mesh alone: parameters, optimizer state and gradients as the sharding rules place them, the
FSDP-gathered weights of the layers in flight, activations kept for the backward pass under the remat
policy, and the logits. The same report shape as the TPU dry run; tested against XLA's compiled
memory analysis (tests/test_plan.py; error stated in PERFORMANCE.md).

Activation bytes per token per layer (a = bytes of the compute dtype, D width, F MLP width, H/K query/
KV heads of size Dh, L sequence, T the tensor axis; the xla attention keeps its [H, L]
probabilities per token in the compute dtype (attention_xla.py); the extra byte per [H, L] entry in
'none' covers the recomputed layer's transients, calibrated against compiled memory; head and MLP
terms are split over T, width-D terms are not):
  none                   7aD + (a(2(H+2K)Dh + H Dh + F(2, gated 4)) + (a+1) H L) / T
  dots_saveable          3aD + (a((H+2K)Dh + F(1, gated 2)) + 4 H L) / T
  dots_no_batch_saveable 3aD + a((H+2K)Dh + F(1, gated 2)) / T
  attn/mlp_out_saveable  2aD; both: 3aD;   full: aD
plus, for any remat policy, one layer's full set while it is recomputed. Logits: 3 f32 copies of
[tokens, V / T] (train.loss_chunks=N >= 1, the fused head: two f32 copies and the gradient of
[tokens / N, V / T]). Gradients: f32, sharded like the parameters. FSDP: two layers' weights gathered.
Tokens per device = batch / microbatches x seq / (data x fsdp).
With model.attention_impl=cudnn (flash attention) the [H, L] terms become 4H (its f32 log-sum-exp) in
'none' and 0 in dots_saveable: not checked against a compile (none exists for CUDA without a GPU).
"""
from __future__ import annotations

import math
import types

import jax.numpy as jnp

from research.models.counting import GATED
from research.models.layers import DTYPES
from research.sharding.mesh import MESH_AXES, resolve_mesh_shape
from research.sharding.rules import logical_to_spec
from research.models.registry import abstract_model
from research.tasks import model_extensions
from research.sharding.rules import config_rules
from research.train.trainable import run_partition


def _per_token_layer(cfg, policy: str, tensor: int) -> tuple[float, float]:
  """(bytes kept per token per layer under `policy`, bytes of one layer's full set), on one device:
  width-D terms are whole on every device, head and MLP terms are split over the tensor axis."""
  m = cfg.model
  a = jnp.dtype(DTYPES[m.dtype]).itemsize
  d, h = m.embed_dim, m.num_heads
  k, dh = m.num_kv_heads or h, m.head_dim or m.embed_dim // h
  f = m.mlp_dim or 4 * d
  gated = m.mlp_activation in GATED
  length = cfg.train.seq_len
  split = lambda x: x / tensor
  if m.attention_impl == "cudnn":
    # Flash attention keeps no [H, L] probabilities: only its f32 log-sum-exp per head, and under
    # dots_saveable it is recomputed (a custom call, not a dot), so nothing [H, L]-sized is saved.
    probs_none, scores_dots = 4 * h, 0
  else:
    probs_none, scores_dots = (a + 1) * h * length, 4 * h * length
  full = a * 7 * d + split(a * (2 * (h + 2 * k) * dh + h * dh + f * (4 if gated else 2)) + probs_none)
  dots = a * 3 * d + split(a * ((h + 2 * k) * dh + f * (2 if gated else 1)))
  kept = {"none": full, "dots_saveable": dots + split(scores_dots), "dots_no_batch_saveable": dots,
          "attn_out_saveable": 2 * a * d, "mlp_out_saveable": 2 * a * d, "attn_mlp_out_saveable": 3 * a * d,
          "full": a * d}[policy]
  return kept, full


def estimate_memory(cfg, mesh_shape, num_devices: int) -> dict:
  """Per-device bytes: params, optimizer_state, gradients, gathered_weights, activations, logits, total."""
  shape = dict(zip(MESH_AXES, resolve_mesh_shape(mesh_shape, num_devices)))
  mesh = types.SimpleNamespace(shape=shape)
  rules = config_rules(cfg)
  _, abstract, names = abstract_model(cfg.model, model_extensions(cfg))
  p_bytes = jnp.dtype(DTYPES[cfg.model.param_dtype]).itemsize
  a_bytes = jnp.dtype(DTYPES[cfg.model.dtype]).itemsize
  frozen = run_partition(cfg)  # frozen (finetune.freeze, a LoRA base): no gradient, no optimizer state
  sharded = trainable = blocks_tensor_split = 0.0
  flat_names = dict(_flatten(names))
  for path, leaf in _flatten(abstract):
    spec = logical_to_spec(flat_names[path], rules, mesh, leaf.shape)
    axes = [a for ax in spec if ax for a in ((ax,) if isinstance(ax, str) else ax)]
    n = math.prod(leaf.shape)
    sharded += n / math.prod(shape[a] for a in axes)
    if not frozen.is_frozen("/".join(str(k) for k in path)):
      trainable += n / math.prod(shape[a] for a in axes)
    if path[0] == "blocks":  # what an FSDP gather rebuilds: the block weights split only over tensor
      blocks_tensor_split += n / math.prod(shape[a] for a in axes if a == "tensor")
  layers = cfg.model.num_layers
  t = cfg.train
  tokens = t.batch_size // t.microbatches * t.seq_len / (shape["data"] * shape["fsdp"])
  kept, layer_set = _per_token_layer(cfg, cfg.model.remat, shape["tensor"])
  activations = tokens * (layers * kept + (layer_set if cfg.model.remat != "none" else 0))
  vocab = cfg.model.vocab_size
  # The plain path (train.loss_chunks=0) keeps f32 logits, their softmax and gradient; the fused head
  # (tasks/head_loss.py) holds one chunk's f32 logits and exponentials and its gradient at a time.
  chunks = t.loss_chunks
  logits = tokens * vocab / shape["tensor"] * (4 * 3 if chunks == 0 else (4 + 4 + a_bytes) / chunks)
  report = {"params": sharded * p_bytes, "optimizer_state": 2 * trainable * p_bytes, "gradients": trainable * 4,
            # two layers' gathered weights in flight (the one computing, the next being fetched)
            "gathered_weights": 2 * blocks_tensor_split / layers * a_bytes if shape["fsdp"] > 1 else 0.0,
            "activations": activations, "logits": logits,
            "batch": _batch_bytes(cfg) / (shape["data"] * shape["fsdp"])}
  report["total"] = sum(report.values())
  return report


def _batch_bytes(cfg) -> int:
  """The global batch's bytes, from the task's batch spec (the arrays the step is given)."""
  from research.tasks import get_task
  t = cfg.train
  return sum(math.prod(f.shape(t.batch_size, t.seq_len)) * f.dtype.itemsize for f in get_task(cfg).batch_spec().values())


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def plan_for_gpu(cfg, target: str, num_devices: int) -> dict:
  """The dry-run report for a GPU target, from `estimate_memory` (no compile is possible without the
  device). Fits if the estimate is within 90% of HBM (CUDA context, cuDNN/NCCL workspaces and
  fragmentation take the rest)."""
  from research.config import ConfigError
  from research.models import count_params, flops_per_token
  from research.plan.targets import GPU_CHIPS, PlanError
  from research.train.setup import complete_config
  chip = GPU_CHIPS[target]
  try:
    complete_config(cfg, num_devices, log=lambda *a: None, need_data=False, processes=1, backend="gpu")
  except ConfigError as e:
    raise PlanError(str(e), 4 if "mesh" in str(e) else 1) from None
  memory = estimate_memory(cfg, cfg.mesh.shape, num_devices)
  usable = 0.9 * chip.hbm_bytes
  t = cfg.train
  model_flops = flops_per_token(cfg.model, t.seq_len) * t.batch_size * t.seq_len
  return {"target": target, "chip": chip.name, "devices": num_devices, "analytic": True,
          "mesh": dict(zip(MESH_AXES, resolve_mesh_shape(cfg.mesh.shape, num_devices))), "remat": cfg.model.remat,
          "scan_layers": cfg.model.scan_layers, "batch_size": t.batch_size, "seq_len": t.seq_len,
          "parameters": count_params(cfg.model), "memory": memory, "hbm_bytes_per_device": chip.hbm_bytes,
          "usable_hbm_bytes_per_device": usable, "fits": memory["total"] <= usable,
          "margin_bytes": usable - memory["total"], "model_flops_per_step": model_flops,
          "step_seconds_at_peak": model_flops / (num_devices * chip.peak_flops)}


def format_gpu_report(r: dict) -> str:
  from research.perf.compiled import format_bytes as f
  m = r["memory"]
  parts = ", ".join(f"{k.replace('_', ' ')} {f(int(v))}" for k, v in m.items() if k != "total")
  return "\n".join([
      f"target {r['devices']} x {r['chip']} (analytic estimate: no ahead-of-time compile without the GPU), mesh "
      f"{r['mesh']}, remat {r['remat']}, batch {r['batch_size']} x {r['seq_len']}, {r['parameters']:,} parameters",
      f"per device (estimated): {parts}; total {f(int(m['total']))} of {f(int(r['hbm_bytes_per_device']))} HBM "
      f"(90% usable: {f(int(r['usable_hbm_bytes_per_device']))})",
      ("FITS with " + f(int(r["margin_bytes"])) + " to spare") if r["fits"] else
      f"DOES NOT FIT: {f(int(-r['margin_bytes']))} over",
      f"model FLOPs per step {r['model_flops_per_step']:.3e}: {r['step_seconds_at_peak']:.3f}s per step at 100% MFU "
      "(an estimate: -30% to +19% against XLA's compiled TPU figures for the pod presets; see PERFORMANCE.md)"])
