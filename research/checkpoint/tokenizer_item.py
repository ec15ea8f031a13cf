"""The tokenizer saved with every checkpoint (the `tokenizer` item: its files, base64, in JSON), so a
finetuning run, evaluation or generation reads text exactly as the model was trained on it, whatever
its own data config says. Tokenizer files are small (a SentencePiece model ~0.3 MB, a 128k-entry
tokenizer.json ~9 MB) next to the parameters."""
from __future__ import annotations

import base64
import os
import tempfile


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
  """The tokenizer of a saved item, its files unpacked once under <cache>/tokenizers/checkpoint-<hash>/."""
  from research.data.tokenizer_store import cached_files, load_tokenizer
  contents = {name: base64.b64decode(data) for name, data in item["files"].items()}
  return load_tokenizer(cached_files(contents, "checkpoint", cache_dir))
