"""Local corpora: resolve `data.path` to files, read documents strictly, split train/validation.

Formats: `.txt` (one document per file, or documents separated by blank lines: `data.doc_split`),
`.jsonl` (one JSON object per line, its text in `data.text_field`) and `.csv` (a header row, then one
record per row). A structured task (`records`, research/data/records.py) reads whole records from
.jsonl/.csv instead of one text field: each is checked where its file and line are known and stored
as a JSON document.
Split rules: with `data.val_files` (names or globs matched on the file name) whole files are held
out, so nothing of a held-out work leaks into training; otherwise the last `data.val_fraction` of
each file is validation: of its documents, or of its text (cut at a line break) when the file is a
single document, as nanoGPT does.
Bad records (undecodable bytes, a line that is not JSON or lacks the field) stop with an error naming
file and line, unless `data.skip_bad_records`, which skips and counts them; in a .txt file the
record is the document (doc_split=blank_lines) or the line (doc_split=file). A UTF-8 byte-order
mark at the start of a file is not text and is dropped.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import fnmatch
import functools
import glob
import hashlib
import json
import os
from typing import Iterator

from research.data.files import dedupe, file_digests, find_files
from research.data.records import Records, document


class DataError(ValueError):
  """Bad input data; the message names the file (and line) or the config key."""


FORMATS = ("auto", "text", "jsonl", "csv")
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
  names: tuple[tuple[str, ...], ...] = ()  # per file: every name it is reachable under (links, target)
  digests: tuple[str, ...] = ()            # per file: SHA-256 of its bytes (files.file_digests)
  records: Records | None = None           # a structured task's record check (None: text documents)

  @property
  def fingerprint(self) -> str:
    """Changes when a file is added, removed, renamed or its bytes change, or a setting changes."""
    h = hashlib.sha256()
    digests = self.digests or file_digests(self.files)
    for f, names, digest in zip(self.files, self.names or [()] * len(self.files), digests):
      h.update(f"{os.path.abspath(f)}\0{'/'.join(names)}\0{digest}\n".encode())
    settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for key in ("files", "path", "names", "digests"):
      settings.pop(key)
    settings["records"] = self.records.key if self.records else None
    if settings["records"] is None:  # text corpora keep the fingerprints they had before records existed
      settings.pop("records")
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]

  @functools.cached_property
  def _names_of(self) -> dict[str, tuple[str, ...]]:
    return dict(zip(self.files, self.names))

  def held_out(self, file: str) -> bool:
    """Whether any name the file is reachable under (a link's or its target's) matches data.val_files."""
    names = self._names_of.get(file) or (os.path.basename(file), os.path.basename(os.path.realpath(file)))
    return any(fnmatch.fnmatch(name, p) for name in names for p in self.val_files)


def resolve_files(path: str) -> dict[str, tuple[str, ...]]:
  """A file, a directory (its .txt/.jsonl files, recursively) or a glob -> {file: its names}, sorted,
  one entry per real file (see research/data/files.py for links)."""
  if not path:
    raise DataError("data.path is empty; give a text file, a directory or a glob")
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return dedupe([expanded])
  kind, found = find_files(expanded)
  if not found:
    if kind == "dir":
      raise DataError(f"data.path={path}: directory holds no .txt, .jsonl or .csv files")
    if glob.has_magic(path):
      raise DataError(f"data.path={path}: the glob matches no files")
    raise DataError(f"data.path={path}: no such file or directory")
  return dedupe(found)


def corpus_spec(path: str, *, format: str = "auto", text_field: str = "text", doc_split: str = "file",
                val_files=(), val_fraction: float = 0.1, skip_bad_records: bool = False,
                memo_file: str | None = None, records: Records | None = None) -> CorpusSpec:
  """The corpus at `path`; `memo_file` keeps the files' content hashes between starts."""
  resolved = resolve_files(path)
  files = tuple(resolved)
  spec = CorpusSpec(path, files, format, text_field, doc_split, tuple(val_files), val_fraction,
                    skip_bad_records, tuple(resolved.values()), file_digests(files, memo_file), records)
  if records is not None:
    text_files = [f for f in files if _file_format(spec, f) == "text"]
    if text_files:
      raise DataError(f"{text_files[0]}: this task reads records with fields from .jsonl or .csv files, "
                      "not text (data.format=jsonl|csv, or point data.path at those files)")
  for pattern in spec.val_files:
    if not any(fnmatch.fnmatch(name, pattern) for names in spec.names for name in names):
      raise DataError(f"data.val_files: {pattern!r} matches none of the {len(files)} files of data.path={path}")
  if spec.val_files and all(spec.held_out(f) for f in files):
    raise DataError(f"data.val_files={spec.val_files} holds out every file of data.path={path}; "
                    "nothing is left to train on")
  return spec


def spec_from_config(data_cfg, path: str | None = None, memo_file: str | None = None,
                     records: Records | None = None) -> CorpusSpec:
  return corpus_spec(path or data_cfg.path, format=data_cfg.format, text_field=data_cfg.text_field,
                     doc_split=data_cfg.doc_split, val_files=tuple(data_cfg.val_files),
                     val_fraction=data_cfg.val_fraction, skip_bad_records=data_cfg.skip_bad_records,
                     memo_file=memo_file, records=records)


def _file_format(spec: CorpusSpec, file: str) -> str:
  if spec.format != "auto":
    return spec.format
  if file.endswith(".csv"):
    return "csv"
  return "jsonl" if file.endswith((".jsonl", ".json")) else "text"


def _jsonl_records(spec: CorpusSpec, file: str, skipped: "SkipCounter") -> Iterator[tuple[int, dict]]:
  """(line number, JSON object) of each non-blank line; a line that is not an object is a bad record."""
  with open(file, "rb") as f:
    for number, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # a byte-order mark is not part of the text
      try:
        record = json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        skipped.skip(spec, DataError(f"{file}:{number}: not a JSON object ({str(e).splitlines()[0]})"))
        continue
      if not isinstance(record, dict):
        skipped.skip(spec, DataError(f"{file}:{number}: not a JSON object (a {type(record).__name__})"))
        continue
      yield number, record


def _csv_records(spec: CorpusSpec, file: str, skipped: "SkipCounter") -> Iterator[tuple[int, dict]]:
  """(line number where the row starts, {column: value}) of each row after the header."""
  reader = csv.DictReader(read_text(file).splitlines(keepends=True))
  if not reader.fieldnames:
    return
  start = reader.line_num + 1
  for row in reader:
    if None in row or any(v is None for v in row.values()):
      columns = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))
      skipped.skip(spec, DataError(f"{file}:{start}: {columns} columns where the header "
                                   f"has {len(reader.fieldnames)}"))
    elif any(v.strip() for v in row.values()):
      yield start, row
    start = reader.line_num + 1


def _records(spec: CorpusSpec, file: str, skipped: "SkipCounter") -> Iterator[tuple[int, dict]]:
  kind = _file_format(spec, file)
  return _csv_records(spec, file, skipped) if kind == "csv" else _jsonl_records(spec, file, skipped)


def _checked_documents(spec: CorpusSpec, file: str, skipped: "SkipCounter") -> list[str]:
  """A structured task's documents: each record checked by spec.records, stored with file:line."""
  docs = []
  for number, record in _records(spec, file, skipped):
    try:
      fields = spec.records.check(record)
    except ValueError as e:
      skipped.skip(spec, DataError(f"{file}:{number}: {e}"))
      continue
    docs.append(document(fields, f"{file}:{number}"))
  return docs


def read_text(file: str) -> str:
  """Reads UTF-8 strictly, without a leading byte-order mark; undecodable bytes are an error naming
  the file and line."""
  with open(file, "rb") as f:
    raw = f.read()
  bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
  try:
    return raw[bom:].decode("utf-8")
  except UnicodeDecodeError as e:
    raise _not_utf8(file, raw[bom:], e, offset=bom) from None


def _not_utf8(file: str, raw: bytes, e: UnicodeDecodeError, offset: int | None = None,
              first_line: int = 1) -> DataError:
  """The error for undecodable bytes at raw[e.start]; raw starts at line `first_line` of the file
  (and at byte `offset`, when known)."""
  line = first_line + raw[:e.start].count(b"\n")
  where = f" at byte {offset + e.start}" if offset is not None else ""
  return DataError(f"{file}:{line}: bytes that are not UTF-8 ({e.reason}{where})")


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
  if spec.records is not None:
    return _checked_documents(spec, file, skipped)
  if _file_format(spec, file) in ("jsonl", "csv"):
    docs = []
    for number, record in _records(spec, file, skipped):
      if not isinstance(record.get(spec.text_field), str):
        keys = ", ".join(sorted(record))
        skipped.skip(spec, DataError(f"{file}:{number}: no string field {spec.text_field!r} "
                                     f"(data.text_field); it has: {keys}"))
        continue
      docs.append(record[spec.text_field])
    return docs
  try:
    text = read_text(file)
  except DataError:
    if not spec.skip_bad_records:
      raise
    return _text_skipping_bad_records(spec, file, skipped)
  if spec.doc_split == "blank_lines":
    return [d.strip("\n") + "\n" for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
  return [text] if text.strip() else []


def file_documents(file: str, format: str = "auto", text_field: str = "text", doc_split: str = "file",
                   records: Records | None = None) -> list[str]:
  """The documents of one file, read as a corpus reads it, without a train/validation split: strict
  UTF-8; .txt split by `doc_split`; .jsonl/.csv records' `text_field` (a record without it is an
  error naming file:line), or with `records` each record checked and stored as a JSON document
  (records.parse reads it back, with its file:line)."""
  spec = CorpusSpec(file, (file,), format, text_field, doc_split, records=records)
  return [d for d in _documents(spec, file, SkipCounter()) if d.strip()]


def _text_skipping_bad_records(spec: CorpusSpec, file: str, skipped: SkipCounter) -> list[str]:
  """A text file's documents without the records that hold bytes that are not UTF-8, each skipped and
  counted. A record is a document with doc_split=blank_lines, and a line with doc_split=file: the
  file is one document then, and one bad byte should not drop a whole book."""
  with open(file, "rb") as f:
    raw = f.read().removeprefix(codecs.BOM_UTF8)
  blank_lines = spec.doc_split == "blank_lines"
  if blank_lines:  # split as the decoded text is (\n never occurs inside a UTF-8 sequence)
    raw = raw.replace(b"\r\n", b"\n")
  separator = b"\n\n" if blank_lines else b"\n"
  good, line = [], 1
  for record in raw.split(separator):
    try:
      good.append(record.decode("utf-8"))
    except UnicodeDecodeError as e:
      skipped.skip(spec, _not_utf8(file, record, e, first_line=line))
    line += record.count(b"\n") + separator.count(b"\n")
  if blank_lines:
    return [d.strip("\n") + "\n" for d in good if d.strip()]
  text = "\n".join(good)
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
    elif len(docs) == 1 and spec.records is None:
      train, val = _tail_split(docs[0], spec.val_fraction)
      chosen = [val if split == "validation" else train]
    else:
      n_val = round(len(docs) * spec.val_fraction)
      chosen = docs[len(docs) - n_val:] if split == "validation" else docs[:len(docs) - n_val]
    for i, doc in enumerate(chosen):
      if doc.strip():
        yield f"{file_index}:{os.path.basename(file)}:{i}", doc  # unique even for equal names
