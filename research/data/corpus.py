"""Local text corpora: resolve `data.path` to files, read them strictly, split train/validation.

Split rules: with `data.val_files` (names or globs matched on the file name) whole files are held
out, so that nothing of a held-out document leaks into training; otherwise the last
`data.val_fraction` of each file's text (cut at a line break) is validation, as nanoGPT does.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import os
from typing import Sequence


class DataError(ValueError):
  """Bad input data; the message names the file (and line) or the config key."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: tuple[str, ...]        # documents (texts)
  validation: tuple[str, ...]
  train_files: tuple[str, ...]
  validation_files: tuple[str, ...]
  fingerprint: str              # changes when any file's path, size or content changes


def resolve_files(path: str) -> list[str]:
  """A file, a directory (its *.txt files, recursively) or a glob -> sorted list of files."""
  if not path:
    raise DataError("data.path is empty; give a text file, a directory or a glob")
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return [expanded]
  if os.path.isdir(expanded):
    files = sorted(glob.glob(os.path.join(expanded, "**", "*.txt"), recursive=True))
    if not files:
      raise DataError(f"data.path={path}: directory holds no .txt files")
    return files
  files = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
  if not files:
    if any(c in path for c in "*?["):
      raise DataError(f"data.path={path}: the glob matches no files")
    raise DataError(f"data.path={path}: no such file or directory")
  return files


def read_text(file: str) -> str:
  """Reads UTF-8 strictly; undecodable bytes are an error naming the file and line."""
  with open(file, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{file}:{line}: bytes that are not UTF-8 ({e.reason} at byte {e.start})") from None


def _split_tail(text: str, fraction: float) -> tuple[str, str]:
  cut = int(len(text) * (1.0 - fraction))
  newline = text.rfind("\n", 0, cut)
  cut = newline + 1 if newline > 0 else cut
  return text[:cut], text[cut:]


def load_corpus(path: str, val_files: Sequence[str] = (), val_fraction: float = 0.1) -> Corpus:
  files = resolve_files(path)
  digest = hashlib.sha256()
  texts = {}
  for file in files:
    text = read_text(file)
    texts[file] = text
    digest.update(os.path.abspath(file).encode() + b"\0" + hashlib.sha256(text.encode()).digest())
  if not any(t.strip() for t in texts.values()):
    raise DataError(f"data.path={path}: the corpus is empty ({len(files)} file(s), no text)")

  if val_files:
    held = [f for f in files if any(fnmatch.fnmatch(os.path.basename(f), p) for p in val_files)]
    for pattern in val_files:
      if not any(fnmatch.fnmatch(os.path.basename(f), pattern) for f in files):
        raise DataError(f"data.val_files: {pattern!r} matches none of the {len(files)} files of data.path={path}")
    train_files = [f for f in files if f not in held]
    if not train_files:
      raise DataError(f"data.val_files={tuple(val_files)} holds out every file of data.path={path}; "
                      "nothing is left to train on")
    train = tuple(texts[f] for f in train_files)
    validation = tuple(texts[f] for f in held)
  else:
    train_files, held = files, files
    pairs = [_split_tail(texts[f], val_fraction) for f in files]
    train = tuple(p[0] for p in pairs)
    validation = tuple(p[1] for p in pairs)
  digest.update(repr((sorted(val_files), val_fraction if not val_files else None)).encode())
  return Corpus(train=train, validation=validation, train_files=tuple(train_files),
                validation_files=tuple(held), fingerprint=digest.hexdigest()[:16])
