"""Starting a run from another run's parameters (`finetune.init_from`): a workdir, a step directory
or a converted Hugging Face directory.

Parameters only: the run starts at step 0 with a fresh optimizer, and its checkpoints are its own.
The architecture and the tokenizer are the checkpoint's (a model reads text only as it was trained
to); the experiment keeps its runtime choices (remat, scan_layers, attention_impl, dtypes, dropout).
Scanned and per-layer layouts are converted; parameters the checkpoint lacks are initialised only
where `finetune.init_new` allows it; anything else that does not fit is one line naming the keys.
"""
from __future__ import annotations

import jax

from research.checkpoint import CheckpointError
from research.checkpoint.loading import read_config, read_tokenizer, restore_params
from research.config.base import model_defaults
from research.models.layout import to_layout
from research.train.trainable import Partition

# What a run may choose for itself when it starts from a checkpoint: how to compute, not what.
RUNTIME_MODEL_KEYS = ("remat", "scan_layers", "attention_impl", "dtype", "param_dtype", "dropout", "vocab_multiple")


def adopt_checkpoint_model(cfg, log) -> None:
  """cfg.model takes the checkpoint's architecture; each key that changes is logged."""
  saved = read_config(cfg.finetune.init_from).model
  defaults = model_defaults()
  changed = []
  for key in cfg.model:
    if key in RUNTIME_MODEL_KEYS:
      continue
    value = saved[key] if key in saved else defaults[key]
    if isinstance(cfg.model[key], tuple) and isinstance(value, list):
      value = tuple(value)
    if cfg.model[key] != value:
      changed.append(f"{key} {cfg.model[key]!r} -> {value!r}")
      cfg.model[key] = value
  log(f"finetune: the model of {cfg.finetune.init_from} ({saved.get('family', '?')}, {saved.num_layers} layers, "
      f"width {saved.embed_dim}, vocab {saved.vocab_size})" + (f"; from the checkpoint: {', '.join(changed)}"
                                                               if changed else ""))


def checkpoint_tokenizer(cfg, cache_dir: str, log):
  """The tokenizer saved with the checkpoint cfg.finetune.init_from starts from."""
  path = cfg.finetune.init_from
  tokenizer = read_tokenizer(path, cache_dir)
  if tokenizer is None:
    raise CheckpointError(f"finetune.init_from={path}: the checkpoint holds no tokenizer (it was written before "
                          "checkpoints saved theirs); resave it with a current version, or convert it again")
  log(f"finetune: tokenizer of the checkpoint ({tokenizer.fingerprint}, vocab {tokenizer.vocab_size})")
  return tokenizer


def load_initial_params(cfg, program, state, host_params, log):
  """`state` with its parameters replaced by the checkpoint's (new ones, per finetune.init_new, keep
  their fresh initialisation)."""
  path = cfg.finetune.init_from
  new = Partition(cfg.finetune.init_new)
  init_params = new.split(host_params(state.params))[1] if new.patterns else None
  report: dict = {}
  try:
    params = restore_params(path, program.abstract_params, init_params=init_params, report=report,
                            convert=lambda tree: to_layout(tree, cfg.model.scan_layers) if "blocks" in tree else tree)
  except CheckpointError as e:
    raise CheckpointError(f"finetune.init_from={path}: {e}"
                          + ("" if new.patterns else " (finetune.init_new names parameters to initialise fresh)"))
  unused, fresh = report["unused"], report["initialised"]
  log(f"finetune: parameters from {path}"
      + (f"; initialised fresh (finetune.init_new): {_listing(fresh)}" if fresh else "")
      + (f"; in the checkpoint, not in the model: {_listing(unused)}" if unused else ""))
  return state.replace(params=jax.device_put(params, program.shardings.params))


def _listing(paths: list[str], shown: int = 8) -> str:
  return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
