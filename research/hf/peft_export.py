"""A LoRA run's adapters alone, as PEFT writes them: adapter_config.json + adapter_model.safetensors,
which `peft.PeftModel.from_pretrained(base, DIR)` loads onto the transformers export of the base.

Names and shapes follow peft 0.21 (tuners/lora/layer.py, utils/save_and_load.py): per adapted
module 'base_model.model.<module>.lora_A.weight' [r, in] and '.lora_B.weight' [out, r], with
y = W x + (lora_alpha / r) B A x. The module and the [in, out] orientation of each kernel come from
the family's tensor map (export_hf's own), so an adapter lands where its kernel does. GPT-2 keeps q,
k and v in one Conv1D (c_attn = q | k | v along the output): our three rank-r updates become one of
rank 3r there, A the three A's stacked and B block-diagonal, which is the same function; its r and
alpha go into rank_pattern / alpha_pattern (alpha times 3, so alpha / r is the scale of the rest).
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from research.checkpoint.loading import read_config, read_meta, read_saved_params, resolve_step_dir
from research.checkpoint.lora_params import BASE_KEY
from research.hf.errors import HFConvertError
from research.hf.families import export_family
from research.hf.safetensors_io import write_file
from research.models import layout
from research.models.layers import DTYPES
from research.models.lora import is_adapter

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _get(tree: dict, path: tuple):
  for key in path:
    if not isinstance(tree, dict):
      return None
    tree = tree.get(key, tree.get(str(key)))
    if tree is None:
      return None
  return tree


def peft_tensors(model_cfg, adapters: dict, dtype) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """({PEFT tensor name: array}, {HF module: rank}) from our adapters (per-layer layout)."""
  family, _ = export_family(model_cfg)
  tensors, ranks, used = {}, {}, set()
  for spec in family.tensor_map(model_cfg):
    loras = [_get(adapters, path[:-1] + ("lora",)) if path[-1] == "kernel" else None for path in spec.ours]
    if not any(loras):
      continue
    if not spec.hf.endswith(".weight") or len(spec.hf_shape) != 2 or (len(spec.ours) > 1 and spec.axis != 1):
      raise HFConvertError(f"{spec.hf}: no PEFT layout for adapters on this tensor")
    in_features = spec.hf_shape[1] if spec.transpose else spec.hf_shape[0]     # the [in, out] layout's in
    outs = [math.prod(s) // in_features for s in spec.our_shapes]
    rank = sum(lora["a"].shape[-1] for lora in loras if lora)
    a_RxI = np.zeros((rank, in_features), np.float32)
    b_OxR = np.zeros((sum(outs), rank), np.float32)
    row = col = 0
    for path, lora, out in zip(spec.ours, loras, outs):
      if lora:
        r = lora["a"].shape[-1]
        a_RxI[col:col + r] = np.asarray(lora["a"], np.float32).reshape(in_features, r).T
        b_OxR[row:row + out, col:col + r] = np.asarray(lora["b"], np.float32).reshape(r, out).T
        col += r
        used.add("/".join(map(str, path[:-1])))
      row += out
    module = spec.hf[:-len(".weight")]
    tensors[f"{_PREFIX}{module}.lora_A.weight"] = a_RxI.astype(dtype)
    tensors[f"{_PREFIX}{module}.lora_B.weight"] = b_OxR.astype(dtype)
    ranks[module] = rank
  flat = leaf_paths(adapters)
  left = sorted({p.rsplit("/lora/", 1)[0] for p in flat if is_adapter(p)} - used)
  if left:
    raise HFConvertError(f"{left[0]}: an adapter on a kernel {family.architecture} has no module for")
  return tensors, ranks


def leaf_paths(tree, prefix: str = "") -> list[str]:
  """The leaf paths of a nested dict ('blocks/0/attn/q/lora/a')."""
  if not isinstance(tree, dict):
    return [prefix]
  return [p for k, v in tree.items() for p in leaf_paths(v, f"{prefix}/{k}" if prefix else str(k))]


def _layerless(module: str) -> str | None:
  """'transformer.h.3.attn.c_attn' -> 'attn.c_attn' (None for a module outside the layers)."""
  match = re.match(r"^.*\.\d+\.(.+)$", module)
  return match.group(1) if match else None


def _by_layer(modules: list[str]) -> list[str] | None:
  """The modules without their layer, when every layer has the same ones (the short form PEFT
  configs use: a suffix matches that module of every layer), else None (the full names)."""
  suffixes = {_layerless(m) for m in modules}
  layers = {m[:-len(_layerless(m))] for m in modules if _layerless(m)}
  if None in suffixes or len(modules) != len(suffixes) * len(layers):
    return None
  return sorted(suffixes)


def adapter_config(model_cfg, lora_cfg, ranks: dict[str, int], base: str | None) -> dict:
  """adapter_config.json for adapters of rank lora.rank, and of `ranks` where fused (a multiple)."""
  family, _ = export_family(model_cfg)
  r, alpha = lora_cfg.rank, lora_cfg.alpha
  short = _by_layer(sorted(ranks))
  fused = {m: k for m, k in ranks.items() if k != r}
  if short:  # one entry per kind of module when the layers agree
    kinds: dict = {}
    for m, k in fused.items():
      kinds.setdefault(_layerless(m), set()).add(k)
    if all(len(v) == 1 for v in kinds.values()):
      fused = {kind: ks.pop() for kind, ks in kinds.items()}
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
          "r": r, "lora_alpha": alpha, "lora_dropout": lora_cfg.dropout, "target_modules": short or sorted(ranks),
          "rank_pattern": fused, "alpha_pattern": {m: alpha * k / r for m, k in fused.items()},
          "fan_in_fan_out": family.name == "gpt2",   # GPT-2's Conv1D weights are [in, out]
          "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
          "modules_to_save": None, "inference_mode": True}


def _base_name(checkpoint: str) -> str | None:
  """The base's Hugging Face directory when it was imported from one (its meta's source), else None."""
  record = read_meta(checkpoint).get(BASE_KEY) or {}
  source = read_meta(record["path"]).get("source", "") if record.get("path") else ""
  return source[len("hf:"):] if source.startswith("hf:") else None


def export_peft(checkpoint: str, out_dir: str, dtype: str | None = None,
                base_model_name_or_path: str | None = None) -> list[str]:
  """Writes a LoRA run's adapters as a PEFT directory; returns the names of the files written.
  base_model_name_or_path: adapter_config's (default: the HF directory the base was imported from)."""
  cfg = read_config(checkpoint)
  if cfg.lora.rank == 0:
    raise HFConvertError(f"--adapter_only: {checkpoint} is not a LoRA run (lora.rank=0); export the whole "
                         "model without --adapter_only")
  if any(os.path.isfile(os.path.join(out_dir, n)) for n in (CONFIG, WEIGHTS)):
    raise HFConvertError(f"{out_dir}: already holds an adapter; give a new directory (nothing is overwritten)")
  dtype = dtype or cfg.model.param_dtype
  if dtype not in DTYPES:
    raise HFConvertError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
  own, _ = read_saved_params(checkpoint)        # what the run trained: the adapters (and heads)
  trained = [p for p in leaf_paths(own) if not is_adapter(p)]
  if trained:
    raise HFConvertError(f"--adapter_only: {checkpoint} also trained {trained[0]} (finetune.init_new), which "
                         "PEFT's adapter would leave out; export the merged model without --adapter_only")
  adapters = layout.to_layout(own, scan_layers=False) if "blocks" in own else own
  tensors, ranks = peft_tensors(cfg.model, adapters, np.dtype(DTYPES[dtype]))
  config = adapter_config(cfg.model, cfg.lora, ranks, base_model_name_or_path or _base_name(checkpoint))
  directory, step = resolve_step_dir(checkpoint)
  os.makedirs(out_dir, exist_ok=True)
  write_file(os.path.join(out_dir, WEIGHTS), tensors, {"format": "pt", "source": f"{directory}/{step}"})
  with open(os.path.join(out_dir, CONFIG), "w") as f:
    json.dump(config, f, indent=2)
  return [CONFIG, WEIGHTS]
