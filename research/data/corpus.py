"""Local corpora: resolve `data.path` to files, read documents strictly, split train/validation.

Formats: `.txt` (one document per file, or documents separated by blank lines: `data.doc_split`) and
`.jsonl` (one JSON object per line, its text in `data.text_field`).
Split rules: with `data.val_files` (names or globs matched on the file name) whole files are held
out, so nothing of a held-out work leaks into training; otherwise the last `data.val_fraction` of
each file is validation: of its documents, or of its text (cut at a line break) when the file is a
single document, as nanoGPT does.
Bad records (undecodable bytes, a line that is not JSON or lacks the field) stop with an error naming
file and line, unless `data.skip_bad_records`, which skips and counts them.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
from typing import Iterator


class DataError(ValueError):
  """Bad input data; the message names the file (and line) or the config key."""


FORMATS = ("auto", "text", "jsonl")
DOC_SPLITS = ("file", "blank_lines")


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  path: str
  files: tuple[str, ...]
  format: str = "auto"
  text_field: str = "text"
  doc_split: str = "file"
  val_files: tuple[str, ...] = ()
  val_fraction: float = 0.1
  skip_bad_records: bool = False

  @property
  def fingerprint(self) -> str:
    """Changes when a file is added, removed or modified (path, size, mtime) or a setting changes."""
    h = hashlib.sha256()
    for f in self.files:
      st = os.stat(f)
      h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    settings = dataclasses.asdict(self)
    settings.pop("files"), settings.pop("path")
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]

  def held_out(self, file: str) -> bool:
    return any(fnmatch.fnmatch(os.path.basename(file), p) for p in self.val_files)


def resolve_files(path: str) -> list[str]:
  """A file, a directory (its .txt/.jsonl files, recursively) or a glob -> sorted list of files."""
  if not path:
    raise DataError("data.path is empty; give a text file, a directory or a glob")
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return [expanded]
  if os.path.isdir(expanded):
    files = sorted(f for ext in ("txt", "jsonl")
                   for f in glob.glob(os.path.join(expanded, "**", f"*.{ext}"), recursive=True))
    if not files:
      raise DataError(f"data.path={path}: directory holds no .txt or .jsonl files")
    return files
  files = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
  if not files:
    if any(c in path for c in "*?["):
      raise DataError(f"data.path={path}: the glob matches no files")
    raise DataError(f"data.path={path}: no such file or directory")
  return files


def corpus_spec(path: str, *, format: str = "auto", text_field: str = "text", doc_split: str = "file",
                val_files=(), val_fraction: float = 0.1, skip_bad_records: bool = False) -> CorpusSpec:
  files = resolve_files(path)
  spec = CorpusSpec(path, tuple(files), format, text_field, doc_split, tuple(val_files), val_fraction,
                    skip_bad_records)
  for pattern in spec.val_files:
    if not any(fnmatch.fnmatch(os.path.basename(f), pattern) for f in files):
      raise DataError(f"data.val_files: {pattern!r} matches none of the {len(files)} files of data.path={path}")
  if spec.val_files and all(spec.held_out(f) for f in files):
    raise DataError(f"data.val_files={spec.val_files} holds out every file of data.path={path}; "
                    "nothing is left to train on")
  return spec


def spec_from_config(data_cfg, path: str | None = None) -> CorpusSpec:
  return corpus_spec(path or data_cfg.path, format=data_cfg.format, text_field=data_cfg.text_field,
                     doc_split=data_cfg.doc_split, val_files=tuple(data_cfg.val_files),
                     val_fraction=data_cfg.val_fraction, skip_bad_records=data_cfg.skip_bad_records)


def _file_format(spec: CorpusSpec, file: str) -> str:
  if spec.format != "auto":
    return spec.format
  return "jsonl" if file.endswith((".jsonl", ".json")) else "text"


def read_text(file: str) -> str:
  """Reads UTF-8 strictly; undecodable bytes are an error naming the file and line."""
  with open(file, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{file}:{line}: bytes that are not UTF-8 ({e.reason} at byte {e.start})") from None


class SkipCounter:
  """Counts records skipped under data.skip_bad_records, with the first reason for the log."""

  def __init__(self):
    self.count, self.first = 0, None

  def skip(self, spec: CorpusSpec, error: DataError) -> None:
    if not spec.skip_bad_records:
      raise error
    self.count += 1
    self.first = self.first or str(error)


def _documents(spec: CorpusSpec, file: str, skipped: SkipCounter) -> list[str]:
  if _file_format(spec, file) == "jsonl":
    docs = []
    with open(file, "rb") as f:
      for number, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        try:
          record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
          skipped.skip(spec, DataError(f"{file}:{number}: not a JSON object ({str(e).splitlines()[0]})"))
          continue
        if not isinstance(record, dict) or not isinstance(record.get(spec.text_field), str):
          keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
          skipped.skip(spec, DataError(f"{file}:{number}: no string field {spec.text_field!r} "
                                       f"(data.text_field); it has: {keys}"))
          continue
        docs.append(record[spec.text_field])
    return docs
  try:
    text = read_text(file)
  except DataError as e:
    skipped.skip(spec, e)
    return []
  if spec.doc_split == "blank_lines":
    return [d.strip("\n") + "\n" for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
  return [text] if text.strip() else []


def _tail_split(text: str, fraction: float) -> tuple[str, str]:
  cut = int(len(text) * (1.0 - fraction))
  newline = text.rfind("\n", 0, cut)
  cut = newline + 1 if newline > 0 else cut
  return text[:cut], text[cut:]


def iter_split(spec: CorpusSpec, split: str, skipped: SkipCounter | None = None) -> Iterator[tuple[str, str]]:
  """Yields (unique key, document text) of `split` ('train' or 'validation'), in file order."""
  skipped = skipped or SkipCounter()
  for file_index, file in enumerate(spec.files):
    docs = _documents(spec, file, skipped)
    if spec.val_files:
      chosen = docs if spec.held_out(file) == (split == "validation") else []
    elif len(docs) == 1:
      train, val = _tail_split(docs[0], spec.val_fraction)
      chosen = [val if split == "validation" else train]
    else:
      n_val = round(len(docs) * spec.val_fraction)
      chosen = docs[len(docs) - n_val:] if split == "validation" else docs[:len(docs) - n_val]
    for i, doc in enumerate(chosen):
      if doc.strip():
        yield f"{file_index}:{os.path.basename(file)}:{i}", doc  # unique even for equal names
