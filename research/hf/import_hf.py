"""A Hugging Face model directory -> one of our checkpoints (parameters only, step 0).

  config.json          -> the family (model_type) and our model.* keys (families.FAMILIES)
  model.safetensors    -> parameters, through the family's tensor map: every tensor the model
  (or its shards)         needs is present with the shape config.json implies, none is left over
  the tokenizer        -> saved in the checkpoint (data.tokenizer=hf), its files in OUT/hf_tokenizer/
                          (tokenizer_files.py); config.json itself -> OUT/hf_config.json

The result loads with `research.load_model(OUT)` and trains with finetune.init_from=OUT.
"""
from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np

from research.checkpoint.params_only import save_params_checkpoint
from research.config.base import base_config
from research.config.validate import ConfigError, validate_config
from research.hf.config_map import load_config
from research.hf.errors import HFConvertError
from research.hf.families import family_of_hf_config
from research.hf.safetensors_io import INDEX, SINGLE, TensorFiles
from research.hf.tensor_map import HFTensors
from research.hf.tokenizer_files import TOKENIZER_DIR, copy_tokenizer_files, hf_tokenizer
from research.models import abstract_model
from research.models.layers import DTYPES
from research.treepaths import path_str

SOURCE_CONFIG = "hf_config.json"   # config.json as it came, beside the checkpoint (token ids for export)
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def check_no_pickles_only(hf_dir: str) -> None:
  """A directory with PyTorch pickles and no safetensors: refused, since nothing is unpickled here."""
  has_safetensors = any(os.path.isfile(os.path.join(hf_dir, n)) for n in (SINGLE, INDEX))
  pickles = [n for n in _PICKLES if os.path.isfile(os.path.join(hf_dir, n))]
  if pickles and not has_safetensors:
    raise HFConvertError(
        f"{os.path.join(hf_dir, pickles[0])}: PyTorch pickles are not read (unpickling runs code); convert it to "
        "safetensors first, e.g. AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) with transformers")


def hf_model_config(hf_dir: str, param_dtype: str = "float32") -> tuple[ml_collections.ConfigDict, object]:
  """(our full config with the model's keys, its family) from config.json; validated."""
  check_no_pickles_only(hf_dir)
  c = load_config(hf_dir)
  family = family_of_hf_config(c)
  cfg = base_config()
  cfg.model.update(family.from_hf_config(c.values, c.path))
  cfg.model.param_dtype = param_dtype
  cfg.train.seq_len = min(cfg.train.seq_len, cfg.model.max_seq_len)
  try:
    validate_config(cfg, num_devices=1, need_data=False, processes=1, backend="cpu")
  except ConfigError as e:
    raise HFConvertError(f"{c.path}: gives a model we cannot build ({e})") from None
  return cfg, family


def abstract_params(model_cfg) -> dict:
  """The parameters model_cfg's architecture creates, as a pure dict of ShapeDtypeStructs (nothing
  allocated)."""
  return abstract_model(model_cfg)[1]


def _shapes(tree) -> dict[str, tuple]:
  return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_against_model(params: dict, model_cfg, where: str) -> None:
  want, got = _shapes(abstract_params(model_cfg)), _shapes(params)
  problems = [f"{k}: not mapped" for k in want if k not in got] + [f"{k}: not in the model" for k in got if k not in want]
  problems += [f"{k}: {got[k]} vs model {want[k]}" for k in want if k in got and got[k] != want[k]]
  if problems:
    raise HFConvertError(f"{where}: the tensor map does not fit the model ({'; '.join(problems[:5])})")


def import_hf(hf_dir: str, out_dir: str, param_dtype: str = "float32") -> ml_collections.ConfigDict:
  """Converts the HF model in hf_dir into a checkpoint directory out_dir; returns its config.
  Parameters are stored in `param_dtype` (float32: bfloat16 weights widen exactly). The model's
  tokenizer, when it ships one, is saved with the checkpoint (data.tokenizer=hf)."""
  hf_dir, out_dir = os.path.abspath(hf_dir), os.path.abspath(out_dir)
  if param_dtype not in DTYPES:
    raise HFConvertError(f"param_dtype={param_dtype!r} is not one of {', '.join(DTYPES)}")
  cfg, family = hf_model_config(hf_dir, param_dtype)
  tokenizer = hf_tokenizer(hf_dir)
  if tokenizer is not None:
    cfg.data.tokenizer, cfg.data.tokenizer_dir = "hf", os.path.join(out_dir, TOKENIZER_DIR)
  files = TensorFiles(hf_dir)
  tensors = HFTensors(files, family.prefix, DTYPES[param_dtype], family.ignored(cfg.model))
  params = family.hf_to_params(cfg.model, tensors)
  _check_against_model(params, cfg.model, files.listing)
  save_params_checkpoint(out_dir, params, cfg, tokenizer=tokenizer, source=f"hf:{hf_dir}")
  copy_tokenizer_files(hf_dir, out_dir)
  shutil.copyfile(os.path.join(hf_dir, "config.json"), os.path.join(out_dir, SOURCE_CONFIG))
  return cfg
