"""Grain pipelines from sources to token batches, per process, deterministic and resumable.

Train: for each source, shuffle documents (seeded, reshuffled every epoch) -> this stream's share ->
encode (the task's `RowFormat`, rows.py; for next-token prediction: tokenize + EOS) -> mix sources
by weight -> rows (the task's; next-token: pack whole documents with segment ids and per-document
positions, so attention never crosses documents, or concatenate-and-chunk) -> shuffle rows in
windows of `data.shuffle_rows` -> batch -> optional worker processes.
The row shuffle is what makes a long document train like nanoGPT's random windows: shuffling
documents alone cuts a one-file corpus into consecutive rows, so every batch held adjacent text and
training walked through the file in order (nanoGPT's char Shakespeare: val 1.99 instead of 1.88). A global batch is `data.streams` such streams side by side, spread over
the processes, so it does not depend on the process count. The iterator's state (`get_state()`, a
small JSON-able dict per stream) restores it to the exact next batch.
Eval: the validation split(s) in order, packed/chunked the same way, the same batches every time.

Batches are dicts of arrays with a leading [rows] axis, keyed as the task's batch spec says
(research/tasks; next-token prediction: inputs, targets, weights, and positions/segment_ids when
packing).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain
import numpy as np

from research.data.row_shuffle import RowShuffleIterDataset
from research.data.rows import RowFormat, Tokenize
from research.data.sources import Source, open_sources
from research.data.tokenizers import Tokenizer, make_tokenizer


def default_cache_dir() -> str:
  return os.environ.get("RESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "research")


@dataclasses.dataclass
class DataPipeline:
  cfg: Any                 # the data config
  tokenizer: Tokenizer
  sources: list[Source]
  row_format: RowFormat    # the task's: record -> document -> rows

  def train_dataset(self, batch_size: int, seq_len: int, seed: int, num_streams: int = 1,
                    process_index: int = 0, process_count: int = 1) -> "Streams":
    """This process's rows of each global batch (batch_size // process_count of them).

    The global batch is `num_streams` independent streams side by side, each with
    batch_size // num_streams rows: stream s reads documents s, s + num_streams, ... of the shuffled
    sources and packs them on its own. Process p runs the contiguous streams
    [p * num_streams / process_count, (p + 1) * num_streams / process_count), so the global batch
    depends only on num_streams, never on how many processes share the work.
    """
    if num_streams % process_count or batch_size % num_streams:
      raise ValueError(f"{num_streams} data streams cannot be split over {process_count} processes and "
                       f"{batch_size} rows; data.streams must divide train.batch_size and be a multiple of "
                       "the process count")
    per_process = num_streams // process_count
    first = process_index * per_process
    return Streams({s: self._stream(s, num_streams, batch_size // num_streams, seq_len, seed)
                    for s in range(first, first + per_process)})

  def _stream(self, index: int, num_streams: int, rows: int, seq_len: int, seed: int) -> grain.IterDataset:
    read = grain.ReadOptions(num_threads=max(1, self.cfg.read_threads), prefetch_buffer_size=64)
    docs = []
    for i, source in enumerate(self.sources):
      ds = grain.MapDataset.source(source.train).shuffle(seed=seed + 7919 * i).repeat(None)
      ds = ds[index::num_streams].map(self.row_format.encode(self.tokenizer, source.feature))
      docs.append(ds.to_iter_dataset(read))
    mixed = docs[0] if len(docs) == 1 else grain.IterDataset.mix(docs, [s.weight for s in self.sources])
    ds = self.row_format.rows(mixed, seq_len, seed + 104729 * index, rows, True)
    if self.cfg.shuffle_rows > 1:
      ds = RowShuffleIterDataset(ds, self.cfg.shuffle_rows, seed=seed + 15485863 * (index + 1))
    ds = ds.batch(rows, drop_remainder=True)
    if self.cfg.num_workers > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.cfg.num_workers))
    return ds

  def eval_batches(self, batch_size: int, seq_len: int, max_batches: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """Validation rows in order (all sources, one after the other); the last batch is padded with
    zero-weight rows. max_batches=0: the whole split. Every process builds the same global batches
    and keeps its own rows."""
    docs = grain.MapDataset.concatenate(
        [grain.MapDataset.source(s.validation).map(self.row_format.encode(self.tokenizer, s.feature))
         for s in self.sources])
    ds = self.row_format.rows(docs.to_iter_dataset(), seq_len, 0, batch_size, False)
    per = batch_size // process_count
    batches, rows = [], []
    for row in ds:
      rows.append(row)
      if len(rows) == batch_size:
        batches.append(_stack(rows))
        rows = []
        if max_batches and len(batches) == max_batches:
          break
    if rows and not (max_batches and len(batches) == max_batches):
      pad = {k: np.zeros_like(v) for k, v in rows[0].items()}
      batches.append(_stack(rows + [pad] * (batch_size - len(rows))))
    if not batches:
      raise ValueError("the validation split yields no rows")
    return [{k: v[process_index * per:(process_index + 1) * per] for k, v in b.items()} for b in batches]

  def unigram_entropy(self, max_tokens: int = 2_000_000) -> float:
    """Entropy (nats/token) of token frequencies in (up to max_tokens of) the first source's training
    split: a model that learned only the frequencies scores about this."""
    counts = np.zeros(self.tokenizer.vocab_size, np.int64)
    tok = Tokenize(self.tokenizer, self.sources[0].feature)
    for i in range(len(self.sources[0].train)):
      counts += np.bincount(tok.map(self.sources[0].train[i]), minlength=len(counts))
      if counts.sum() >= max_tokens:
        break
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Streams:
  """Several streams' datasets, iterated together: each batch is their batches stacked in stream order."""

  def __init__(self, datasets: dict[int, grain.IterDataset]):
    self.datasets = datasets

  def __iter__(self) -> "StreamsIterator":
    return StreamsIterator({s: iter(ds) for s, ds in self.datasets.items()})


class StreamsIterator:
  """next() -> one batch of this process's rows; get_state()/set_state() -> {'streams': {s: state}},
  keyed by global stream index so that a checkpoint can be split over another process count."""

  def __init__(self, iterators: dict):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(it) for it in self.iterators.values()]
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    return {"streams": {str(s): it.get_state() for s, it in self.iterators.items()}}

  def set_state(self, state: dict) -> None:
    saved = state["streams"]
    missing = [s for s in self.iterators if str(s) not in saved]
    if missing:
      raise KeyError(f"no saved state for data stream(s) {missing}; the state holds {sorted(saved, key=int)}")
    for s, it in self.iterators.items():
      it.set_state(saved[str(s)])

  def close(self) -> None:
    for it in self.iterators.values():
      if hasattr(it, "close"):
        it.close()


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def build_pipeline(data_cfg, row_format: RowFormat, log=print, tokenizer: Tokenizer | None = None) -> DataPipeline:
  """Sources and tokenizer (`tokenizer`, e.g. a finetuned checkpoint's, or the one data.tokenizer
  names) feeding rows made by `row_format` (the task's)."""
  cache_dir = data_cfg.cache_dir or default_cache_dir()
  sources = open_sources(data_cfg, cache_dir, log=log, records=row_format.records)
  tokenizer = tokenizer or make_tokenizer(data_cfg, sources, cache_dir, log=log, records=row_format.records)
  for s in sources:
    log(f"data: {s.name}: {len(s.train):,} train / {len(s.validation):,} validation documents"
        + (f", weight {s.weight:g}" if len(sources) > 1 else "")
        + (f", {s.skipped_records} bad record(s) skipped" if s.skipped_records else ""))
  log(f"data: tokenizer {tokenizer.fingerprint}, vocab {tokenizer.vocab_size}; packing={data_cfg.packing}")
  for line in row_format.describe(sources, tokenizer) if row_format.describe else ():
    log(line)
  return DataPipeline(data_cfg, tokenizer, sources, row_format)
