"""Models out of checkpoints: `load_model` (notebooks, eval, generation), parameters-only restore
for finetuning (with renamed and new keys; a LoRA run's checkpoint on its base), and export to
safetensors."""
from __future__ import annotations

import json
import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from research.checkpoint.manager import CheckpointError, _handlers
from research.models import abstract_model
from research.tasks import model_extensions
from research.paths import absolute, is_remote
from research.treepaths import path_str


def checkpoint_steps(ckpt_dir) -> list[int]:
  """The step directories (digits) of a checkpoints dir, local or remote; [] when there is none."""
  d = epath.Path(ckpt_dir)
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def resolve_step_dir(path: str) -> tuple[str, int]:
  """A workdir (newest step of DIR/checkpoints), a checkpoints dir, or a step dir -> (checkpoints dir, step)."""
  p = epath.Path(absolute(path))
  if p.name.isdigit() and (p / "state").is_dir():
    return str(p.parent), int(p.name)
  directory = p / "checkpoints" if (p / "checkpoints").is_dir() else p
  steps = checkpoint_steps(directory)
  directory = str(directory)
  if not steps:
    raise CheckpointError(f"{path}: no checkpoints here (give a workdir, its checkpoints/ or a step directory)")
  return directory, steps[-1]


class _NoReadOnlyNotice(logging.Filter):
  """Orbax warns 'Given directory is read only' for every read-only manager: reading is all we do."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


def _manager(directory: str) -> ocp.CheckpointManager:
  # The state is read with the PyTree handler (the format StandardSave writes), which can restore a
  # subtree: loading a model reads the parameters, not the optimizer state (2x their size with Adam).
  handlers = {**_handlers(), "state": ocp.PyTreeCheckpointHandler()}
  # save_interval_steps and create as read_only needs them, or Orbax warns that it changed them.
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  absl_logger, notice = logging.getLogger("absl"), _NoReadOnlyNotice()
  absl_logger.addFilter(notice)
  try:
    return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)
  finally:
    absl_logger.removeFilter(notice)


def read_meta(path: str) -> dict:
  """The `meta` item (config, fingerprints, checksums, ...) of a workdir's newest step or a step dir."""
  directory, step = resolve_step_dir(path)
  return _manager(directory).restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_config(path: str) -> ml_collections.ConfigDict:
  return with_defaults(read_meta(path)["config"])


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config with the keys added since it was written set to their defaults (an older
  checkpoint has no model.arch, task or finetune: it was a decoder trained for next-token prediction)."""
  from research.config import base_config

  def fill(into: dict, defaults: dict) -> dict:
    for k, v in defaults.items():
      if k not in into:
        into[k] = v
      elif isinstance(v, dict) and isinstance(into[k], dict):
        fill(into[k], v)
    return into

  return ml_collections.ConfigDict(fill(dict(saved), base_config().to_dict()))


def read_tokenizer(path: str, cache_dir: str):
  """The tokenizer saved with a checkpoint (workdir, checkpoints dir or step dir), or None for a
  checkpoint written before tokenizers were saved."""
  directory, step = resolve_step_dir(path)
  if not (epath.Path(directory) / str(step) / "tokenizer").exists():
    return None
  item = _manager(directory).restore(step, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore()))["tokenizer"]
  from research.checkpoint.tokenizer_item import tokenizer_from_item
  return tokenizer_from_item(item, cache_dir)


def read_saved_params(path: str) -> tuple[dict, dict]:
  """(the saved parameters as host arrays, exactly as stored, verified against their checksums; the
  step's meta) of a workdir (its newest step) or a step directory."""
  directory, step = resolve_step_dir(path)
  manager = _manager(directory)
  saved = manager.item_metadata(step)["state"]
  saved = saved.tree if hasattr(saved, "tree") else saved
  if "params" not in saved:
    raise CheckpointError(f"{directory}/{step}: no 'params' in the saved state (items: {sorted(saved)})")
  # Only the parameters, into host memory (numpy) whatever mesh wrote them: no device holds a second,
  # unsharded copy of the model beside the run's own sharded state.
  target = {"params": jax.tree.map(lambda m: np.zeros((), m.dtype), saved["params"])}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
      meta=ocp.args.JsonRestore()))
  saved_sums = restored["meta"].get("checksums") or {}
  if saved_sums:  # the same check a resume makes: flipped bytes are an error, never weights
    from research.checkpoint import checksums
    bad = checksums.mismatches(saved_sums, checksums.tree_checksums(
        {"params": jax.tree.map(np.asarray, restored["state"]["params"])}))
    if bad:
      raise CheckpointError(f"{directory}/{step}: {len(bad)} array(s) differ from their saved checksums "
                            f"(first {bad[0]}); the step is damaged, load an earlier one")
  return restored["state"]["params"], restored["meta"]


def restore_params(path: str, abstract_params, rename: Callable[[str], str | None] | None = None,
                   init_params=None, convert: Callable | None = None, report: dict | None = None,
                   merge_lora: bool = True):
  """Parameters only, as a pytree shaped like `abstract_params` (host arrays).

  A LoRA run's checkpoint (adapters and heads, lora_params.py) reads as its base joined with what it
  trained: merged into the kernels (`merge_lora`, the model without adapters), or with the adapters
  beside them (a model built with lora.rank > 0).
  convert: applied to the whole restored tree first (e.g. `layout.to_layout` between scanned and
  per-layer blocks).
  rename: maps a checkpoint path ('blocks/0/attn/q/kernel') to the model's path, or None to drop it.
  init_params: values for model parameters the checkpoint lacks (e.g. a new classification head);
  without it a missing parameter is an error. Shapes must match exactly.
  report: if a dict, receives 'unused' (checkpoint paths the model did not take) and 'initialised'
  (model paths taken from init_params).
  """
  from research.checkpoint.lora_params import full_params
  directory, step = resolve_step_dir(path)
  tree = full_params(path, merge=merge_lora)
  flat, _ = jax.tree_util.tree_flatten_with_path(convert(tree) if convert else tree)
  by_path = {}
  for p, value in flat:
    name = path_str(p)
    name = rename(name) if rename else name
    if name is not None:
      by_path[name] = value
  init = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(init_params)[0]} if init_params else {}
  missing, wrong, initialised = [], [], []

  def pick(p, want):
    name = path_str(p)
    if name in by_path:
      value = by_path[name]
    elif name in init:
      value = init[name]
      initialised.append(name)
    else:
      missing.append(name)
      return None
    if tuple(value.shape) != tuple(want.shape):
      wrong.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(want.shape)}")
    return np.asarray(value).astype(want.dtype)

  params = jax.tree_util.tree_map_with_path(pick, abstract_params)
  if report is not None:
    wanted = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    report.update(unused=sorted(set(by_path) - wanted), initialised=initialised)
  if missing or wrong:
    raise CheckpointError(f"{directory}/{step} does not fit the model: "
                          + "; ".join([f"{m}: not in the checkpoint (pass init_params)" for m in missing] + wrong))
  return params


def load_model(path: str, merge: bool = False):
  """(model, config) from a workdir or a checkpoint step directory; `model(tokens_BxL)` -> logits_BxLxV.
  A LoRA run's checkpoint loads onto its base (refused when the base changed since); `merge` folds
  the adapters into the kernels (the model and config then have none: lora.rank=0)."""
  from research.checkpoint.lora_params import merged_config
  cfg = read_config(path)
  lora = cfg.lora.rank > 0
  if lora and merge:
    cfg = merged_config(cfg)
  graphdef, abstract_params, _ = abstract_model(cfg.model, model_extensions(cfg))
  params = restore_params(path, abstract_params, merge_lora=not lora or merge)
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params)), cfg


def export_paths(out: str) -> tuple[str, str]:
  """(tensors path, config path) for an export to `out`: 'model' and 'model.safetensors' give
  model.safetensors + model.json. Any other suffix is a ValueError: the config, written to the same
  name with .json, would overwrite the tensors of 'model.json' (or sit oddly beside 'model.bin')."""
  if is_remote(out):
    raise ValueError(f"{out}: export writes a local file; give a local --out and copy it up "
                     "(gsutil cp / gcloud storage cp)")
  stem, suffix = os.path.splitext(out)
  if suffix not in ("", ".safetensors") or not os.path.basename(stem):
    example = stem if os.path.basename(stem) else os.path.join(stem, "model")
    raise ValueError(f"{out}: the export must be a .safetensors file, e.g. {example}.safetensors "
                     "(the config is written beside it as .json)")
  return stem + ".safetensors", stem + ".json"


def export_safetensors(path: str, out: str, dtype: str = "float32") -> tuple[str, str]:
  """Writes the parameters as safetensors ('blocks.0.attn.q.kernel', ...) to `out` (.safetensors added
  when it has no suffix) and the config as JSON beside it (same name, .json). Returns both paths."""
  from safetensors.flax import save_file
  out, config_path = export_paths(out)
  from research.checkpoint.lora_params import merged_config
  cfg = merged_config(read_config(path))   # a LoRA run's adapters are merged into the kernels
  _, abstract_params, _ = abstract_model(cfg.model, model_extensions(cfg))
  params = restore_params(path, abstract_params)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  tensors = {path_str(p).replace("/", "."): jnp.asarray(v, dtype=jnp.dtype(dtype)) for p, v in flat}
  directory, step = resolve_step_dir(path)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_file(tensors, out, metadata={"format": "research", "step": str(step), "dtype": dtype})
  with open(config_path, "w") as f:
    json.dump(cfg.to_dict(), f, indent=1)
  return out, config_path
