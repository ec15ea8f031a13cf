"""The tokenizer files that travel with a Hugging Face model, copied as they are.

Import copies them from the HF directory into OUT/hf_tokenizer/; export writes them from there
beside the exported config.json and safetensors, so `AutoTokenizer.from_pretrained(DIR)` loads the
tokenizer the model was trained with. Models trained here keep their tokenizer elsewhere:
`write_tokenizer` is the one place an export asks for it.
"""
from __future__ import annotations

import os
import shutil

from research.checkpoint.loading import resolve_step_dir

TOKENIZER_DIR = "hf_tokenizer"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
         "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def _copy(source: str, target: str) -> list[str]:
  present = [name for name in FILES if os.path.isfile(os.path.join(source, name))]
  if present:
    os.makedirs(target, exist_ok=True)
  for name in present:
    shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  return present


def copy_tokenizer_files(hf_dir: str, out_dir: str) -> list[str]:
  """Copies the tokenizer files hf_dir has into OUT/hf_tokenizer/; returns their names ([]: none)."""
  return _copy(hf_dir, os.path.join(out_dir, TOKENIZER_DIR))


def checkpoint_root(checkpoint_path: str) -> str:
  """The directory above checkpoints/ of a workdir, checkpoints dir or step dir."""
  ckpt_dir, _ = resolve_step_dir(checkpoint_path)
  ckpt_dir = os.path.abspath(ckpt_dir)
  return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir


def write_tokenizer(checkpoint_path: str, out_dir: str) -> list[str]:
  """Writes the checkpoint's tokenizer files into out_dir; returns their names. An imported model's
  come from its hf_tokenizer/; a model trained here has none there and gets none yet ([])."""
  return _copy(os.path.join(checkpoint_root(checkpoint_path), TOKENIZER_DIR), out_dir)
