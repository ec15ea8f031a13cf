"""How records become training rows: the pipeline's one seam with the task.

A `RowFormat` says how one record becomes a document (`encode`, a Grain map run per source, after
the document shuffle) and how the mixed stream of documents becomes fixed-length rows (`rows`). The
pipeline shuffles, shards, mixes, row-shuffles and batches whatever rows it is given; it never
imports a task. `token_rows(packing)` is next-token prediction's: text -> ids + EOS -> packed or
chunked [seq_len] rows of inputs/targets/weights (and positions/segment_ids when packing).
`example_rows(packing)` is for tasks whose documents are whole examples that never split
(supervised finetuning): packed first-fit with segment ids and per-example positions, or one per row.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import grain
import numpy as np

from research.data.sources import text_of
from research.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class RowFormat:
  # (tokenizer, the source's text feature) -> a Grain map: record -> document
  encode: Callable[[Tokenizer, str], grain.transforms.Map]
  # (documents, seq_len, seed, num_bins, shuffle_bins) -> rows (dicts of [seq_len] arrays)
  rows: Callable[[grain.IterDataset, int, int, int, bool], grain.IterDataset]
  # a structured task's record check (research/data/records.py); None: text documents
  records: Any = None
  # (sources, tokenizer) -> lines the pipeline logs when it opens (e.g. how many examples are longer
  # than a row); None: nothing to report
  describe: Callable[[list, Tokenizer], list[str]] | None = None


def token_rows(packing: str) -> RowFormat:
  """Next-token rows: every document's ids then EOS, packed (`pack`) or concatenated (`chunk`)."""
  return RowFormat(encode=Tokenize,
                   rows=lambda docs, seq_len, seed, num_bins, shuffle_bins: rows_from_documents(
                       docs, packing, seq_len, seed, num_bins, shuffle_bins))


class Tokenize(grain.transforms.Map):
  """record -> int32 token ids of its text (after BOS when the tokenizer's model expects one), then EOS."""

  def __init__(self, tokenizer: Tokenizer, feature: str):
    self.tokenizer, self.feature = tokenizer, feature

  def map(self, record) -> np.ndarray:
    ids = self.tokenizer.encode(text_of(record, self.feature))
    if self.tokenizer.add_bos:  # models pretrained with BOS first (Llama, Gemma) see it before each document
      ids.insert(0, self.tokenizer.bos_id)
    ids.append(self.tokenizer.eos_id)
    return np.asarray(ids, np.int32)


class SplitForPacking(grain.experimental.FlatMapTransform):
  """A document longer than a row becomes several pieces of seq_len (+1 for the shifted target),
  overlapping by one token so that no target is lost."""

  max_fan_out = 1 << 20

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def flat_map(self, tokens: np.ndarray):
    n, pieces = self.seq_len, []
    for start in range(0, len(tokens) - 1, n):
      m = min(n, len(tokens) - 1 - start)  # inputs and targets of equal length
      pieces.append({"inputs": tokens[start:start + m], "targets": tokens[start + 1:start + 1 + m]})
    return pieces


def _packed_to_batch(row: dict) -> dict:
  segments = row["inputs_segment_ids"].astype(np.int32)
  return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
          "weights": (segments > 0).astype(np.float32), "positions": row["inputs_positions"].astype(np.int32),
          "segment_ids": segments}


def _chunk_to_batch(row: dict) -> dict:
  tokens = row["tokens"].astype(np.int32)
  return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": np.ones(len(tokens) - 1, np.float32)}


def rows_from_documents(docs: grain.IterDataset, packing: str, seq_len: int, seed: int,
                        num_bins: int, shuffle_bins: bool) -> grain.IterDataset:
  """Token documents -> fixed-length training rows (dicts of [seq_len] arrays)."""
  if packing == "pack":
    pieces = grain.experimental.FlatMapIterDataset(docs, SplitForPacking(seq_len))
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces, length_struct={"inputs": seq_len, "targets": seq_len}, num_packing_bins=num_bins,
        seed=seed, shuffle_bins=shuffle_bins)
    return packed.map(_packed_to_batch)
  chunks = grain.experimental.ConcatThenSplitIterDataset(
      docs.map(lambda t: {"tokens": t}), length_struct={"tokens": seq_len + 1})
  return chunks.map(_chunk_to_batch)


# ------------------------------------------------------------------------------- whole examples

EXAMPLE_KEYS = ("inputs", "targets", "weights")


def example_rows(packing: str) -> Callable[[grain.IterDataset, int, int, int, bool], grain.IterDataset]:
  """rows() for documents that are whole examples, {"inputs", "targets", "weights"} of at most seq_len
  tokens each (the encode map cuts longer ones): `pack` puts them first-fit into rows, with segment
  ids and per-example positions so attention never crosses examples; `pad` gives each its own row,
  padded with weight 0. Either way an example is never split over two rows."""
  if packing not in ("pack", "pad"):
    raise ValueError(f"data.packing={packing!r}: examples are packed whole (pack) or one per row (pad)")

  def rows(examples, seq_len, seed, num_bins, shuffle_bins):
    if packing == "pad":
      return examples.map(lambda e: pad_example(e, seq_len))
    packed = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct={k: seq_len for k in EXAMPLE_KEYS}, num_packing_bins=num_bins, seed=seed,
        shuffle_bins=shuffle_bins)
    return packed.map(_packed_examples_to_batch)

  return rows


def pad_example(example: dict, seq_len: int) -> dict:
  """One example at the start of a [seq_len] row: segment 1, positions from 0; the rest weight 0."""
  n = len(example["inputs"])
  if n > seq_len:
    raise ValueError(f"an example of {n} tokens does not fit a row of {seq_len}; the encode map cuts it first")
  padded = lambda x, dtype: np.pad(np.asarray(x, dtype), (0, seq_len - n))
  return {"inputs": padded(example["inputs"], np.int32), "targets": padded(example["targets"], np.int32),
          "weights": padded(example["weights"], np.float32), "positions": padded(np.arange(n), np.int32),
          "segment_ids": padded(np.ones(n), np.int32)}


def _packed_examples_to_batch(row: dict) -> dict:
  return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
          "weights": row["weights"].astype(np.float32), "positions": row["inputs_positions"].astype(np.int32),
          "segment_ids": row["inputs_segment_ids"].astype(np.int32)}
