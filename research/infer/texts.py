"""Texts to run a model on, from a file: .jsonl (a field), .csv (a column) or .txt (one text per
non-empty line); a record without its text is an error naming file:line (scripts/predict.py's inputs,
scripts/generate.py's prompts)."""
from __future__ import annotations

import csv
import json

from research.data.corpus import DataError, read_text


def read_texts(path: str, text_field: str, flag: str = "--text_field") -> list[str]:
  """The texts of a .jsonl, .csv or .txt file; a record without a text is an error naming file:line."""
  if path.endswith((".jsonl", ".json")):
    texts = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not a JSON object ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get(text_field), str) or not record[text_field].strip():
        raise DataError(f"{path}:{number}: no non-empty string field {text_field!r} ({flag})")
      texts.append(record[text_field])
    return texts
  if path.endswith(".csv"):
    reader = csv.DictReader(read_text(path).splitlines(keepends=True))
    if text_field not in (reader.fieldnames or ()):
      raise DataError(f"{path}:1: no column {text_field!r} ({flag}); the header has: "
                      f"{', '.join(reader.fieldnames or ())}")
    texts, start = [], reader.line_num + 1
    for row in reader:
      if not (row.get(text_field) or "").strip():
        raise DataError(f"{path}:{start}: the text column {text_field!r} is empty")
      texts.append(row[text_field])
      start = reader.line_num + 1
    return texts
  if path.endswith(".txt"):
    return [line for line in read_text(path).splitlines() if line.strip()]
  raise DataError(f"{path}: texts are read from .jsonl, .csv or .txt files")
