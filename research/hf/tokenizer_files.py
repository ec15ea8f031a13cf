"""The tokenizer that travels with a Hugging Face model.

Import: the HF directory's tokenizer is read as data.tokenizer=hf (research.data.hf_tokenizer) and
saved in the checkpoint as a training run saves its own, so finetune.init_from=OUT reads text as the
model was trained; its files are also copied byte for byte into OUT/hf_tokenizer/ (with
generation_config.json), which the saved config's data.tokenizer_dir names.
Export: the checkpoint's saved tokenizer, of any kind, is written as transformers' AutoTokenizer loads
it (tokenizer_store.save_hf_tokenizer's files), plus the files of hf_tokenizer/ it does not cover
(generation_config.json) when the model was imported.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from research.checkpoint.loading import read_tokenizer, resolve_step_dir
from research.data.corpus import DataError
from research.data.hf_tokenizer import HF_FILES, HFTokenizer, hf_files
from research.hf.errors import HFConvertError

TOKENIZER_DIR = "hf_tokenizer"
FILES = HF_FILES + ("added_tokens.json", "generation_config.json")


def _copy(source: str, target: str, skip=()) -> list[str]:
  present = [n for n in FILES if n not in skip and os.path.isfile(os.path.join(source, n))]
  if present:
    os.makedirs(target, exist_ok=True)
  for name in present:
    shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  return present


def copy_tokenizer_files(hf_dir: str, out_dir: str) -> list[str]:
  """Copies the tokenizer files hf_dir has into OUT/hf_tokenizer/; returns their names ([]: none)."""
  return _copy(hf_dir, os.path.join(out_dir, TOKENIZER_DIR))


def hf_tokenizer(hf_dir: str) -> HFTokenizer | None:
  """hf_dir's tokenizer (None when it ships none); one line naming the problem when it cannot be read."""
  names = {n for n in HF_FILES if os.path.isfile(os.path.join(hf_dir, n))}
  if not {"tokenizer.json", "tokenizer.model"} & names and not {"vocab.json", "merges.txt"} <= names:
    return None
  try:
    return HFTokenizer(hf_dir)
  except DataError as e:
    raise HFConvertError(f"{hf_dir}: its tokenizer cannot be read ({e})") from None


def checkpoint_root(checkpoint_path: str) -> str:
  """The directory above checkpoints/ of a workdir, checkpoints dir or step dir."""
  ckpt_dir, _ = resolve_step_dir(checkpoint_path)
  ckpt_dir = os.path.abspath(ckpt_dir)
  return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir


def write_tokenizer(checkpoint_path: str, out_dir: str) -> list[str]:
  """Writes the checkpoint's tokenizer into out_dir as transformers loads it; returns the file names
  ([] for a checkpoint that saved none and was not imported)."""
  written: list[str] = []
  with tempfile.TemporaryDirectory() as cache:
    tokenizer = read_tokenizer(checkpoint_path, cache)
    if tokenizer is not None:
      files = hf_files(tokenizer)
      os.makedirs(out_dir, exist_ok=True)
      for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
          f.write(data)
      written = sorted(files)
  imported = os.path.join(checkpoint_root(checkpoint_path), TOKENIZER_DIR)
  return written + _copy(imported, out_dir, skip=written) if os.path.isdir(imported) else written
