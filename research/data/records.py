"""Structured records: how a task that reads fields (a prompt and a response, a text and a label)
gets them from local .jsonl / .csv files.

The task hands a `Records` to the pipeline (through its `RowFormat`); the corpus reader calls its
`check` on every record where the file and line are known, so a missing field or an empty text stops
with one line naming both. What `check` returns is stored as the document: a JSON object with the
record's location under `WHERE` ("file:line"), so a later check (a validation label training never
saw) can name the line too. `key` identifies the check and its settings in the corpus fingerprint, so
changing a field name builds the corpus anew.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable

WHERE = "_where"


@dataclasses.dataclass(frozen=True)
class Records:
  key: str                                   # e.g. "classify:text:label": the check and its settings
  check: Callable[[dict], dict]              # record -> the fields kept; ValueError(reason) when bad
  text: Callable[[dict], str] = lambda r: " ".join(str(v) for v in r.values())  # checked record ->
                                             # its text (what a tokenizer trained on the corpus reads)


def document(fields: dict, where: str) -> str:
  """The stored document of a checked record."""
  return json.dumps({**fields, WHERE: where}, ensure_ascii=False, sort_keys=True)


def parse(document_text: str | bytes) -> dict:
  """A stored document -> the checked record (with WHERE)."""
  return json.loads(document_text)
