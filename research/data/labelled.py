"""Labelled texts for classification (research/tasks/classify.py): the record check, the label
order, and the rows: one example per row, [BOS] text ids EOS, truncated to the row (its first
seq_len - 1 tokens and EOS), padded on the right.

Shape legend: L length (train.seq_len).
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from research.data.records import parse
from research.data.rows import Tokenize
from research.data.sources import text_of


@dataclasses.dataclass(frozen=True)
class LabelledText:
  """The record check: a non-empty string text and a label (str or int, kept as its string)."""
  text_field: str
  label_field: str

  def __call__(self, record: dict) -> dict:
    text, label = record.get(self.text_field), record.get(self.label_field)
    if self.text_field not in record:
      raise ValueError(f"no field {self.text_field!r} (data.text_field); it has: {', '.join(sorted(record))}")
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"the text ({self.text_field!r}) is empty or not a string")
    if self.label_field not in record:
      raise ValueError(f"no field {self.label_field!r} (data.label_field); it has: {', '.join(sorted(record))}")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
      raise ValueError(f"the label ({self.label_field!r}) is {label!r}; labels are non-empty strings or integers")
    return {"text": text, "label": str(label).strip()}


def label_order(labels) -> list[str]:
  """Sorted; numerically when every label is an integer ('2' before '10')."""
  labels = set(labels)
  numeric = all(l.lstrip("-").isdigit() for l in labels)
  return sorted(labels, key=(lambda l: (int(l), l)) if numeric else None)


class EncodeExample(grain.transforms.Map):
  """record (a stored document) -> {'ids': [BOS] text ids EOS, 'label': class index}."""

  def __init__(self, tokenizer, feature: str, labels: tuple[str, ...]):
    self.tokenize = Tokenize(tokenizer, feature)
    self.feature, self.index = feature, {label: i for i, label in enumerate(labels)}

  def map(self, record) -> dict:
    fields = parse(text_of(record, self.feature))
    return {"ids": self.tokenize.map({self.feature: fields["text"]}),
            "label": np.int32(self.index[fields["label"]])}


def example_row(ids: np.ndarray, label: int, seq_len: int) -> dict:
  """One padded row; a longer text keeps its first seq_len - 1 tokens and its last (EOS)."""
  if len(ids) > seq_len:
    ids = np.concatenate([ids[:seq_len - 1], ids[-1:]])
  inputs, mask = np.zeros(seq_len, np.int32), np.zeros(seq_len, np.int32)
  inputs[:len(ids)], mask[:len(ids)] = ids, 1
  return {"inputs": inputs, "mask": mask, "label": np.int32(label), "weight": np.float32(1.0)}


def padded_rows(docs: grain.IterDataset, seq_len: int, seed: int, num_bins: int, shuffle_bins: bool):
  del seed, num_bins, shuffle_bins  # one example per row: nothing to pack
  return docs.map(lambda ex: example_row(ex["ids"], ex["label"], seq_len))


def split_records(split) -> list[dict]:
  """Every checked record (text, label, WHERE) of a source's split, in its stored order."""
  out, n = [], len(split)
  for start in range(0, n, 4096):
    indices = list(range(start, min(start + 4096, n)))
    batch = split.__getitems__(indices) if hasattr(split, "__getitems__") else [split[i] for i in indices]
    out.extend(parse(text_of(r, "text")) for r in batch)
  return out
