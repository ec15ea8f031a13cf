"""Starting a run from another run's parameters (`finetune.init_from`): a workdir, a step directory
or a converted Hugging Face directory.

Parameters only: the run starts at step 0 with a fresh optimizer, and its checkpoints are its own.
The architecture and the tokenizer are the checkpoint's (a model reads text only as it was trained
to); the experiment keeps its runtime choices (remat, scan_layers, attention_impl, dtypes, dropout).
Scanned and per-layer layouts are converted; parameters the checkpoint lacks are initialised only
where `finetune.init_new` allows it; anything else that does not fit is one line naming the keys.
A LoRA run (lora.rank > 0) starts its adapters fresh on the checkpoint's parameters, which stay
frozen; its checkpoints leave them out, so its resume reads them again (`with_lora_base`) from the
path its checkpoint records. A LoRA run's checkpoint as init_from reads as its merged model.
"""
from __future__ import annotations

import jax

from research.checkpoint import CheckpointError
from research.checkpoint.loading import read_config, read_tokenizer, resolve_step_dir, restore_params
from research.models.layout import to_layout
from research.models.lora import ADAPTER_PATTERN, is_adapter
from research.train.trainable import Partition, join, lora_own

# What a run may choose for itself when it starts from a checkpoint: how to compute, not what.
RUNTIME_MODEL_KEYS = ("remat", "scan_layers", "attention_impl", "dtype", "param_dtype", "dropout", "vocab_multiple")


def resolve_init_from(cfg) -> None:
  """finetune.init_from becomes the absolute step directory it names (a workdir's newest step when
  the run starts), so every read (architecture, tokenizer, parameters) and the saved config agree on
  one step even while the source run goes on training."""
  directory, step = resolve_step_dir(cfg.finetune.init_from)
  cfg.finetune.init_from = f"{directory}/{step}"


def adopt_checkpoint_model(cfg, log, source: str | None = None) -> None:
  """cfg.model takes the architecture of `source` (default finetune.init_from, first resolved to its
  step directory; a resumed finetuning run passes its own checkpoint); each key that changes is logged."""
  if source is None:
    resolve_init_from(cfg)
    source = cfg.finetune.init_from
  saved_cfg = read_config(source)  # keys added since it was written hold their defaults
  saved = saved_cfg.model
  changed = []
  for key in cfg.model:
    if key in RUNTIME_MODEL_KEYS:
      continue
    value = saved[key]
    if isinstance(cfg.model[key], tuple) and isinstance(value, list):
      value = tuple(value)
    if cfg.model[key] != value:
      changed.append(f"{key} {cfg.model[key]!r} -> {value!r}")
      cfg.model[key] = value
  log(f"finetune: the model of {source} ({saved.get('family', '?')}, {saved.num_layers} layers, "
      f"width {saved.embed_dim}, vocab {saved.vocab_size})" + (f"; from the checkpoint: {', '.join(changed)}"
                                                               if changed else ""))
  from research.tasks import get_task
  get_task(cfg).adopt_checkpoint(cfg, saved_cfg, log)


def checkpoint_tokenizer(cfg, cache_dir: str, log, source: str | None = None):
  """The tokenizer saved with `source` (default finetune.init_from, the checkpoint the run starts from)."""
  path = source or cfg.finetune.init_from
  tokenizer = read_tokenizer(path, cache_dir)
  if tokenizer is None:
    tokenizer = _rebuilt_tokenizer(path, cache_dir)
  log(f"finetune: tokenizer of the checkpoint ({tokenizer.fingerprint}, vocab {tokenizer.vocab_size})")
  return tokenizer


def _rebuilt_tokenizer(path: str, cache_dir: str):
  """A checkpoint written before checkpoints saved their tokenizer: its own data config's tokenizer,
  accepted only if it has the fingerprint the checkpoint recorded."""
  from research.checkpoint.loading import read_meta
  from research.data.sources import open_sources
  from research.data.tokenizers import make_tokenizer
  meta = read_meta(path)
  saved = read_config(path)
  try:
    tokenizer = make_tokenizer(saved.data, open_sources(saved.data, cache_dir, log=lambda *a: None), cache_dir,
                               log=lambda *a: None)
  except Exception as e:  # noqa: BLE001 - any reason it cannot be rebuilt gets the same one line
    raise CheckpointError(f"{path}: the checkpoint holds no tokenizer (written before checkpoints saved theirs) "
                          f"and its data config's cannot be rebuilt here ({e})") from None
  if tokenizer.fingerprint != meta.get("tokenizer"):
    raise CheckpointError(f"{path}: the checkpoint holds no tokenizer (written before checkpoints saved theirs), "
                          f"and its data config now gives tokenizer {tokenizer.fingerprint}, not the "
                          f"{meta.get('tokenizer')} it was trained with")
  return tokenizer


def load_initial_params(cfg, program, state, host_params, log):
  """`state` with its parameters replaced by the checkpoint's (new ones, per finetune.init_new, and
  LoRA adapters keep their fresh initialisation)."""
  path = cfg.finetune.init_from
  lora = cfg.lora.rank > 0
  new = Partition(tuple(cfg.finetune.init_new) + ((ADAPTER_PATTERN,) if lora else ()))
  init_params = host_params(new.split(state.params)[1]) if new.patterns else None  # only the new leaves
  report: dict = {}
  try:
    params = restore_params(path, program.abstract_params, init_params=init_params, report=report,
                            convert=_to_run_layout(cfg))
  except CheckpointError as e:
    hint = "" if cfg.finetune.init_new else " (finetune.init_new names parameters to initialise fresh)"
    raise CheckpointError(f"finetune.init_from={path}: {e}{hint}")
  unused, fresh = report["unused"], [p for p in report["initialised"] if not is_adapter(p)]
  adapted = (len(report["initialised"]) - len(fresh)) // 2   # a and b per kernel
  log(f"finetune: parameters from {path}"
      + (f"; LoRA adapters (rank {cfg.lora.rank}, fresh) on {adapted} kernel(s), the rest frozen" if lora else "")
      + (f"; initialised fresh (finetune.init_new): {_listing(fresh)}" if fresh else "")
      + (f"; in the checkpoint, not in the model: {_listing(unused)}" if unused else ""))
  return state.replace(params=_place(params, program.shardings.params))


def with_lora_base(cfg, program, state, record: dict):
  """A LoRA run's restored `state` (its params: the run's own, as its checkpoints hold them) joined
  with the frozen base read from record['path'] (checked against its fingerprint by the caller)."""
  own = lora_own(cfg)
  base_abstract = own.split(program.abstract_params)[1]
  try:
    base = restore_params(record["path"], base_abstract, convert=_to_run_layout(cfg))
  except CheckpointError as e:
    raise CheckpointError(f"the LoRA base {record['path']}: {e}") from None
  return state.replace(params=join(state.params, _place(base, own.split(program.shardings.params)[1])))


def _to_run_layout(cfg):
  return lambda tree: to_layout(tree, cfg.model.scan_layers) if "blocks" in tree else tree


def _place(params, shardings):
  # Each device takes its own slice of the host arrays (every process holds the same full values), so
  # nothing is gathered or compared across processes.
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
                      params, shardings)


def _listing(paths: list[str], shown: int = 8) -> str:
  return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
