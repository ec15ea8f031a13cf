"""From a config to a tokenizer, cached token streams, and train/eval batch sources."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from research.data.batches import TrainBatches, eval_batches
from research.data.corpus import Corpus, DataError, load_corpus
from research.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer


def default_cache_dir() -> str:
  return os.environ.get("RESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "research")


def make_tokenizer(data_cfg, corpus: Corpus | None, cache_dir: str, log=print) -> Tokenizer:
  if data_cfg.tokenizer == "byte":
    return ByteTokenizer()
  if data_cfg.spm_model_file:
    return SentencePieceTokenizer(data_cfg.spm_model_file)
  return SentencePieceTokenizer.train_or_load(
      corpus.train, corpus.fingerprint, cache_dir, data_cfg.vocab_size, data_cfg.spm_model_type, log=log)


def tokenize_documents(texts, tokenizer: Tokenizer, cache_file: str | None) -> np.ndarray:
  """Documents -> one stream, each document followed by EOS. Cached as .npy when `cache_file`."""
  if cache_file and os.path.isfile(cache_file):
    return np.load(cache_file)
  dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.int32
  parts = []
  for text in texts:
    parts.append(np.asarray(tokenizer.encode(text), dtype))
    parts.append(np.asarray([tokenizer.eos_id], dtype))
  stream = np.concatenate(parts) if parts else np.zeros((0,), dtype)
  if cache_file:
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    tmp = cache_file + f".tmp{os.getpid()}.npy"
    np.save(tmp, stream)
    os.replace(tmp, cache_file)
  return stream


@dataclasses.dataclass
class DataPipeline:
  tokenizer: Tokenizer
  train_tokens: np.ndarray
  val_tokens: np.ndarray
  corpus: Corpus

  def train_batches(self, batch_size, seq_len, seed, process_index=0, process_count=1) -> TrainBatches:
    return TrainBatches(self.train_tokens, batch_size, seq_len, seed, process_index, process_count)

  def eval_batches(self, batch_size, seq_len, max_batches, process_index=0, process_count=1):
    return eval_batches(self.val_tokens, batch_size, seq_len, max_batches, process_index, process_count)

  def unigram_entropy(self) -> float:
    """Entropy (nats/token) of the training split's token frequencies: a model that learned
    nothing but the frequencies scores this on similar text."""
    counts = np.bincount(self.train_tokens.astype(np.int64), minlength=self.tokenizer.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def build_pipeline(data_cfg, log=print) -> DataPipeline:
  cache_dir = data_cfg.cache_dir or default_cache_dir()
  corpus = load_corpus(data_cfg.path, tuple(data_cfg.val_files), data_cfg.val_fraction)
  tokenizer = make_tokenizer(data_cfg, corpus, cache_dir, log=log)
  key = f"{corpus.fingerprint}-{tokenizer.fingerprint}"
  streams = os.path.join(cache_dir, "tokens", key)
  train = tokenize_documents(corpus.train, tokenizer, os.path.join(streams, "train.npy"))
  val = tokenize_documents(corpus.validation, tokenizer, os.path.join(streams, "validation.npy"))
  if len(val) < 2:
    raise DataError(f"data.path={data_cfg.path}: the validation split is empty; adjust data.val_files or "
                    "data.val_fraction")
  log(f"data: {len(corpus.train_files)} train / {len(corpus.validation_files)} validation file(s), "
      f"{len(train):,} / {len(val):,} tokens, vocab {tokenizer.vocab_size}")
  return DataPipeline(tokenizer, train, val, corpus)
