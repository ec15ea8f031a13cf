"""The evaluation files, read strictly through the corpus reader (research/data/corpus.py): a bad
line stops with an error naming file:line and the field.

  multiple choice  .jsonl: {"context": str, "choices": [str, ...], "gold": int index}
  perplexity       .txt (documents split as the run's data.doc_split), .jsonl / .csv (a text field),
                   or "validation": the run's own validation split, through its data sources
  classify         .jsonl / .csv with a text and a label field (research/data/labelled.py's check)
"""
from __future__ import annotations

import dataclasses
import os

from research.data.corpus import DataError, file_documents
from research.data.records import WHERE, Records, parse

VALIDATION = "validation"   # --data=validation: the run's validation split


@dataclasses.dataclass(frozen=True)
class Choice:
  """One multiple-choice item; `where` is its file:line."""
  context: str
  choices: tuple[str, ...]
  gold: int
  where: str = ""

  def key(self) -> tuple:
    return (self.context, self.choices, self.gold)


def check_choice(record: dict) -> dict:
  """The record check of a multiple-choice line (ValueError names the field)."""
  context, choices, gold = record.get("context"), record.get("choices"), record.get("gold")
  if not isinstance(context, str):
    raise ValueError(f"the field 'context' must be a string (it is {_shown(record, 'context')})")
  if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
    raise ValueError(f"the field 'choices' must be a list of two or more non-empty strings (it is "
                     f"{_shown(record, 'choices')})")
  if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
    raise ValueError(f"the field 'gold' must be an integer index into the {len(choices)} choices (it is "
                     f"{_shown(record, 'gold')})")
  return {"context": context, "choices": choices, "gold": gold}


def _shown(record: dict, field: str) -> str:
  return repr(record[field])[:60] if field in record else f"missing; the line has: {', '.join(sorted(record))}"


def _require_file(path: str, what: str, suffixes: tuple[str, ...]) -> None:
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file ({what})")
  if not path.endswith(suffixes):
    raise DataError(f"{path}: {what} must be a {' / '.join(suffixes)} file")


def read_choices(path: str) -> list[Choice]:
  """Every item of a multiple-choice .jsonl file, in file order."""
  _require_file(path, "multiple-choice items", (".jsonl", ".json"))
  docs = file_documents(path, format="jsonl", records=Records("mc", check_choice))
  items = []
  for doc in docs:
    r = parse(doc)
    items.append(Choice(r["context"], tuple(r["choices"]), r["gold"], r[WHERE]))
  if not items:
    raise DataError(f"{path}: no multiple-choice items")
  return items


def read_documents(path: str, text_field: str, doc_split: str) -> list[str]:
  """The texts to score of a .txt / .jsonl / .csv file."""
  _require_file(path, "the text to score", (".txt", ".jsonl", ".json", ".csv"))
  docs = file_documents(path, text_field=text_field, doc_split=doc_split)
  if not docs:
    raise DataError(f"{path}: no text to score")
  return docs


def validation_documents(cfg) -> list[str]:
  """The run's validation split (every source's, in order), as its data pipeline reads it."""
  from research.data.pipeline import default_cache_dir
  from research.data.sources import open_sources
  sources = open_sources(cfg.data, cfg.data.cache_dir or default_cache_dir(), log=lambda *a: None)
  return source_validation_documents(sources)


def source_validation_documents(sources) -> list[str]:
  from research.data.sources import text_of
  docs = [text_of(s.validation[i], s.feature) for s in sources for i in range(len(s.validation))]
  if not docs:
    raise DataError("the run's validation split holds no documents")
  return docs


def read_labelled(path: str, text_field: str, label_field: str) -> list[dict]:
  """[{"text", "label", WHERE}] of a labelled .jsonl / .csv file (the classifier's record check)."""
  from research.data.labelled import LabelledText
  _require_file(path, "labelled texts", (".jsonl", ".json", ".csv"))
  docs = file_documents(path, records=Records("classify", LabelledText(text_field, label_field)))
  if not docs:
    raise DataError(f"{path}: no labelled texts")
  return [parse(d) for d in docs]


@dataclasses.dataclass(frozen=True)
class Target:
  """One generation item: the model continues `context`; `target` is the expected answer."""
  context: str
  target: str
  where: str = ""


def check_target(record: dict) -> dict:
  context, target = record.get("context"), record.get("target")
  if not isinstance(context, str) or not context:
    raise ValueError(f"the field 'context' must be a non-empty string (it is {_shown(record, 'context')})")
  if not isinstance(target, str):
    raise ValueError(f"the field 'target' must be a string (it is {_shown(record, 'target')})")
  return {"context": context, "target": target}


def read_targets(path: str) -> list[Target]:
  """Every item of a generation .jsonl file ({"context": str, "target": str}), in file order."""
  _require_file(path, "generation items", (".jsonl", ".json"))
  docs = file_documents(path, format="jsonl", records=Records("generate", check_target))
  items = [Target(r["context"], r["target"], r[WHERE]) for r in map(parse, docs)]
  if not items:
    raise DataError(f"{path}: no generation items")
  return items
