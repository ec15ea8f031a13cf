"""A checkpoint of parameters alone (no optimizer state, no data iterator): what an imported model
is. OUT/checkpoints/0/ holds the Orbax items
  state      {"params": params}                                   StandardSave (as a training run's)
  meta       {"config", "checksums", "source", "step", "time", "code_version"}     JsonSave
  tokenizer  the model's tokenizer (tokenizer_item.py), when there is one          JsonSave
so `research.load_model(OUT)`, `restore_params(OUT, ...)` and finetune.init_from=OUT read it like
any training checkpoint.
"""
from __future__ import annotations

import datetime
import os

import orbax.checkpoint as ocp

from research.checkpoint import checksums
from research.checkpoint.manager import CheckpointError, _handlers, code_version
from research.checkpoint.tokenizer_item import tokenizer_item


def save_params_checkpoint(out_dir: str, params, cfg, tokenizer=None, source: str = "",
                           lora_base: dict | None = None) -> str:
  """Writes `params` (a pure dict of host or device arrays) and `cfg` (the full config) as step 0 of
  OUT/checkpoints, with `tokenizer` (a research.data tokenizer; None: none saved) as a training run
  saves its own. Refuses an OUT that already has checkpoints. Returns the step directory.
  lora_base: for a LoRA run's parameters (adapters, heads): the base they go on
  (lora_params.base_record), as a training run's checkpoints record it."""
  ckpt_dir = os.path.join(os.path.abspath(out_dir), "checkpoints")
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise CheckpointError(f"{ckpt_dir}: already holds checkpoints; give a new output directory")
  tree = {"params": params}
  meta = {"config": cfg.to_dict(), "checksums": checksums.tree_checksums(tree), "source": source, "step": 0,
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat(), "code_version": code_version()}
  if lora_base is not None:
    from research.checkpoint.lora_params import BASE_KEY
    meta[BASE_KEY] = lora_base
  items = dict(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
  if tokenizer is not None:
    items["tokenizer"] = ocp.args.JsonSave(tokenizer_item(tokenizer))
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
  with ocp.CheckpointManager(ckpt_dir, options=options, item_handlers=_handlers()) as manager:
    manager.save(0, args=ocp.args.Composite(**items))
    manager.wait_until_finished()
  return os.path.join(ckpt_dir, "0")
