"""One of our checkpoints -> a Hugging Face model directory that `transformers` loads without remote
code: config.json, model.safetensors (or shards past max_shard_size, with
model.safetensors.index.json) and the tokenizer files.

The architecture: the model's family when it can express the config, else the first that can
(families.export_family); a config none can express is refused with one line naming the model.* key.
Stacked (model.scan_layers) checkpoints are unstacked first.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from research.checkpoint.loading import read_config, read_tokenizer, restore_params
from research.hf.families import export_family
from research.hf.import_hf import SOURCE_CONFIG, abstract_params
from research.hf.errors import HFConvertError
from research.hf.safetensors_io import model_files, write_model
from research.hf.tokenizer_files import checkpoint_root, write_tokenizer
from research.models import layout
from research.models.layers import DTYPES

_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _host_params(checkpoint: str, model_cfg) -> dict:
  """The checkpoint's parameters as numpy arrays, per layer (a stacked checkpoint is unstacked)."""
  return layout.to_layout(restore_params(checkpoint, abstract_params(model_cfg)), scan_layers=False)


def _source_token_ids(checkpoint: str) -> dict:
  """bos/eos/pad ids for config.json: an imported model's own, else the checkpoint's tokenizer's (a
  model trained or finetuned here), so transformers' generate stops at EOS."""
  path = os.path.join(checkpoint_root(checkpoint), SOURCE_CONFIG)
  if not os.path.isfile(path):
    with tempfile.TemporaryDirectory() as cache:
      tok = read_tokenizer(checkpoint, cache)
    return {} if tok is None else {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
  with open(path) as f:
    source = json.load(f)
  return {k: source[k] for k in _TOKEN_IDS if k in source}


def export_hf(checkpoint: str, out_dir: str, max_shard_size: int | str = "5GB", dtype: str | None = None) -> list[str]:
  """Writes the HF directory; returns the names of the files written. dtype: of the tensors
  (default: the checkpoint's model.param_dtype)."""
  present = model_files(out_dir) + (["config.json"] if os.path.isfile(os.path.join(out_dir, "config.json")) else [])
  if present:
    raise HFConvertError(f"{out_dir}: already holds {present[0]}; give a new directory (nothing is overwritten)")
  model_cfg = read_config(checkpoint).model   # keys older checkpoints lack: defaults
  family, hf_config = export_family(model_cfg)
  dtype = dtype or model_cfg.param_dtype
  if dtype not in DTYPES:
    raise HFConvertError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
  params = _host_params(checkpoint, model_cfg)
  tensors = family.params_to_hf(model_cfg, params, np.dtype(DTYPES[dtype]))
  hf_config.update(_source_token_ids(checkpoint), dtype=dtype)
  written = write_model(out_dir, tensors, max_shard_size)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  return ["config.json"] + written + write_tokenizer(checkpoint, out_dir)
