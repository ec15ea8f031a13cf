"""A tokenizer saved beside a model, loaded back without the config that built it.

save_tokenizer(tok, dir) copies the files the tokenizer reads (nothing for byte) and writes
`research_tokenizer.json` last: its kind, settings (the tiktoken pattern), fingerprint, file names
and special ids. load_tokenizer(dir) rebuilds it and checks the fingerprint is the saved one, which
checkpoints compare on resume. save_hf_tokenizer(tok, dir) writes what transformers' AutoTokenizer
loads (hf_tokenizer.hf_files). Directories may be local or remote (gs://): written with etils.epath;
a remote one is read through a local copy under `<cache>/tokenizers/copied-<hash>/`, since the
tokenizer libraries read local files (and data-loader workers reload from them).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from research.data.bpe_tokenizers import GPT2BPETokenizer, TiktokenTokenizer
from research.data.corpus import DataError
from research.data.hf_tokenizer import HF_FILES, HFTokenizer, hf_files
from research.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer
from research.paths import is_remote

DESCRIPTOR = "research_tokenizer.json"
KINDS = ("byte", "sentencepiece", "bpe", "tiktoken", "hf")


def _sources(tokenizer) -> dict[str, str]:
  """{name in the saved directory: the local file it is copied from}."""
  kind = getattr(tokenizer, "kind", None)
  if kind == "byte":
    return {}
  if kind == "sentencepiece":
    return {"tokenizer.model": tokenizer.model_file}
  if kind == "bpe":
    return {"vocab.json": tokenizer.vocab_file, "merges.txt": tokenizer.merges_file}
  if kind == "tiktoken":
    return {"tokenizer.tiktoken": tokenizer.path}
  if kind == "hf":
    return {name: os.path.join(tokenizer.directory, name) for name in tokenizer.files}
  raise DataError(f"cannot save a {type(tokenizer).__name__} tokenizer (kind {kind!r}); kinds: {', '.join(KINDS)}")


def _settings(tokenizer) -> dict:
  return {"pattern": tokenizer.pattern} if tokenizer.kind == "tiktoken" else {}


def _build(kind: str, directory: str, settings: dict) -> Tokenizer:
  path = lambda name: os.path.join(directory, name)
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path("tokenizer.model"))
  if kind == "bpe":
    return GPT2BPETokenizer(path("vocab.json"), path("merges.txt"))
  if kind == "tiktoken":
    return TiktokenTokenizer(path("tokenizer.tiktoken"), pattern=settings.get("pattern", "cl100k"))
  return HFTokenizer(directory)


def save_tokenizer(tokenizer: Tokenizer, directory) -> None:
  """Writes `tokenizer` to `directory` (created; local or gs://) so that load_tokenizer rebuilds it.
  The files are read once and checked to still give the tokenizer's fingerprint (an edited file
  would otherwise be saved under the old one)."""
  from etils import epath
  contents = {name: _read_local(src) for name, src in _sources(tokenizer).items()}
  with tempfile.TemporaryDirectory() as tmp:
    for name, data in contents.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    rebuilt = _build(tokenizer.kind, tmp, _settings(tokenizer)).fingerprint
  if rebuilt != tokenizer.fingerprint:
    raise DataError(f"the {tokenizer.kind} tokenizer's files ({', '.join(_sources(tokenizer).values())}) changed "
                    f"since it was loaded (fingerprint {tokenizer.fingerprint}, now {rebuilt}); not saved")
  out = epath.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  for name, data in contents.items():
    (out / name).write_bytes(data)
  descriptor = {"kind": tokenizer.kind, "settings": _settings(tokenizer), "fingerprint": tokenizer.fingerprint,
                "files": sorted(contents), "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "add_bos": tokenizer.add_bos}
  (out / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1) + "\n")  # last: a partial save has none


def load_tokenizer(directory, cache_dir: str | None = None) -> Tokenizer:
  """The tokenizer save_tokenizer wrote to `directory`; DataError if its files no longer give the
  saved fingerprint. cache_dir holds the local copy of a remote directory (default: the data cache)."""
  from etils import epath
  path = epath.Path(directory)
  if not (path / DESCRIPTOR).exists():
    raise DataError(f"{directory}: no {DESCRIPTOR} (written by save_tokenizer); a Hugging Face tokenizer "
                    "directory loads with data.tokenizer=hf and data.tokenizer_dir")
  try:
    descriptor = json.loads((path / DESCRIPTOR).read_text())
    kind, files, saved = descriptor["kind"], descriptor["files"], descriptor["fingerprint"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{path / DESCRIPTOR}: not a tokenizer descriptor ({e!r})") from None
  if kind not in KINDS:
    raise DataError(f"{path / DESCRIPTOR}: kind={kind!r} is not one of {', '.join(KINDS)}")
  tokenizer = _build(kind, local_copy(directory, files, cache_dir), descriptor.get("settings") or {})
  if tokenizer.fingerprint != saved:
    raise DataError(f"{directory}: the files give tokenizer fingerprint {tokenizer.fingerprint}, {DESCRIPTOR} "
                    f"says {saved}; they were edited or damaged after saving")
  return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, directory) -> None:
  """Writes files that transformers.AutoTokenizer.from_pretrained(directory) loads (no remote code) and
  that encode as `tokenizer` does; see hf_tokenizer.hf_files for each kind."""
  from etils import epath
  out = epath.Path(directory)
  files = hf_files(tokenizer)
  out.mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    (out / name).write_bytes(data)


def copy_hf_tokenizer_files(hf_dir, directory) -> list[str]:
  """Copies the Hugging Face tokenizer files of `hf_dir` (those of HF_FILES it has) to `directory`,
  byte for byte; returns their names. DataError when hf_dir holds no tokenizer."""
  from etils import epath
  src, out = epath.Path(hf_dir), epath.Path(directory)
  names = [n for n in HF_FILES if (src / n).exists()]
  if not {"tokenizer.json", "tokenizer.model"} & set(names) and not {"vocab.json", "merges.txt"} <= set(names):
    raise DataError(f"{hf_dir}: no tokenizer files; looked for tokenizer.json, vocab.json + merges.txt, "
                    "tokenizer.model")
  out.mkdir(parents=True, exist_ok=True)
  for name in names:
    (out / name).write_bytes((src / name).read_bytes())
  return names


def local_copy(directory, names, cache_dir: str | None = None) -> str:
  """`directory` itself when local; else a local copy of the files among `names` it holds
  (`cached_files`, prefix 'copied')."""
  if not is_remote(directory):
    return str(directory)
  from etils import epath
  src = epath.Path(directory)
  contents = {n: (src / n).read_bytes() for n in names if (src / n).exists()}
  if not contents:
    raise DataError(f"{directory}: none of {', '.join(names)} there")
  return cached_files(contents, "copied", cache_dir)


def cached_files(contents: dict[str, bytes], prefix: str, cache_dir: str | None = None) -> str:
  """A local directory holding `contents` ({file name: bytes}), made once per content under
  `<cache_dir>/tokenizers/<prefix>-<hash>` (written to a temporary name and renamed, so a reader never
  sees half of it and two processes making it at once both end with the same directory)."""
  digest = hashlib.sha256(b"".join(len(n).to_bytes(8, "little") + n.encode() + len(d).to_bytes(8, "little") + d
                                   for n, d in sorted(contents.items()))).hexdigest()[:16]
  if cache_dir is None:
    from research.data.pipeline import default_cache_dir
    cache_dir = default_cache_dir()
  target = os.path.join(cache_dir, "tokenizers", f"{prefix}-{digest}")
  if not os.path.isdir(target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".copying-")
    for name, data in contents.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    try:
      os.rename(tmp, target)
    except OSError:  # another process made it first: same content
      shutil.rmtree(tmp, ignore_errors=True)
  return target


def _read_local(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()
