"""The tokenizer saved with every checkpoint (the `tokenizer` item: its files, base64, in JSON), so a
finetuning run, evaluation or generation reads text exactly as the model was trained on it, whatever
its own data config says. Tokenizer files are small (a SentencePiece model ~0.3 MB, a 128k-entry
tokenizer.json ~9 MB) next to the parameters."""
from __future__ import annotations

import base64
import os
import tempfile

from etils import epath


def tokenizer_item(tokenizer) -> dict:
  """{'fingerprint', 'files': {name: base64}}: what `research.data.tokenizer_store` writes for it."""
  from research.data.tokenizer_store import save_tokenizer
  with tempfile.TemporaryDirectory() as tmp:
    save_tokenizer(tokenizer, tmp)
    files = {}
    for name in sorted(os.listdir(tmp)):
      with open(os.path.join(tmp, name), "rb") as f:
        files[name] = base64.b64encode(f.read()).decode("ascii")
  return {"fingerprint": tokenizer.fingerprint, "files": files}


def tokenizer_from_item(item: dict, cache_dir: str):
  """The tokenizer of a saved item, its files unpacked once under <cache>/tokenizers/checkpoint-<fp>/."""
  from research.data.tokenizer_store import load_tokenizer
  directory = epath.Path(cache_dir) / "tokenizers" / f"checkpoint-{item['fingerprint']}"
  if not (directory / "research_tokenizer.json").exists():
    tmp = epath.Path(f"{directory}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, data in item["files"].items():
      (tmp / name).write_bytes(base64.b64decode(data))
    try:
      tmp.rename(directory)
    except OSError:  # another process on this host unpacked it meanwhile: theirs is the same
      if not (directory / "research_tokenizer.json").exists():
        raise
      for p in tmp.iterdir():
        p.unlink()
      tmp.rmdir()
  return load_tokenizer(str(directory))
