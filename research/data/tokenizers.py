"""Tokenizers behind one interface: encode, decode, vocab_size, bos_id, eos_id, pad_id, add_bos.

- ByteTokenizer: UTF-8 bytes 0..255, then BOS, EOS, PAD (259 ids).
- GPT-2 BPE (vocab.json + merges.txt) and .tiktoken files: see bpe_tokenizers.py.
- A Hugging Face tokenizer directory (data.tokenizer=hf): see hf_tokenizer.py.
- SentencePieceTokenizer: loads a .model file, or trains one on the training split and caches it
  under the cache directory keyed by the corpus fingerprint and every training setting, so that
  changing a setting trains a new one instead of silently reusing the old.

encode() never adds special tokens; `add_bos` says whether the model expects BOS before a
document (the caller prepends bos_id). Every kind saves itself to a directory and loads back, and
exports files that transformers loads: tokenizer_store.py.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Protocol, Sequence

from research.data.cache_lock import cache_lock
from research.data.corpus import DataError

# SentencePiece's trained model depends on its thread count (each count gives other bytes, the same
# count the same bytes), so the count is fixed rather than os.cpu_count() and another machine trains
# the same tokenizer. 8 uses a big machine's cores; on 2 shared cores it was no slower than 1 within
# the noise (the default corpus: 11-15 s vs 7-12 s).
SPM_THREADS = 8


class Tokenizer(Protocol):
  kind: str                  # the data.tokenizer value that builds it; tokenizer_store saves by it
  vocab_size: int            # every id is below it (added tokens included)
  bos_id: int
  eos_id: int                # ends every document
  pad_id: int
  add_bos: bool              # the model expects bos_id before each document (encode never adds it)
  chat_template: str | None  # a Jinja chat template shipped with the tokenizer (hf), else None
  fingerprint: str           # changes when the text -> ids mapping may change; checkpoints compare it

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  kind = "byte"
  vocab_size = 259
  add_bos, chat_template = False, None
  bos_id, eos_id, pad_id = 256, 257, 258
  fingerprint = "byte-v1"

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  kind = "sentencepiece"
  add_bos, chat_template = False, None

  def __init__(self, model_file: str):
    import sentencepiece as spm
    if not os.path.isfile(model_file):
      raise DataError(f"data.spm_model_file={model_file}: no such file")
    self.model_file = model_file
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()
    if self.eos_id < 0:  # every document ends with EOS; -1 would be a token id out of range
      raise DataError(f"data.spm_model_file={model_file}: the model has no EOS piece (eos_id -1), which ends "
                      "every document; use a model trained with an eos_id (SentencePiece's default is 2)")
    # A model without BOS or PAD pieces (id -1) uses EOS for them, as GPT-2 does.
    self.bos_id, self.pad_id = (i if i >= 0 else self.eos_id for i in (self.bos_id, self.pad_id))
    with open(model_file, "rb") as f:
      self.fingerprint = "spm-" + hashlib.sha256(f.read()).hexdigest()[:16]

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def __getstate__(self):  # picklable for data-loader worker processes: reload from the file
    return {"model_file": self.model_file}

  def __setstate__(self, state):
    self.__init__(state["model_file"])

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])

  @classmethod
  def train_or_load(cls, texts: Iterable[str], corpus_fingerprint: str, cache_dir: str, vocab_size: int,
                    model_type: str, log=print) -> "SentencePieceTokenizer":
    import sentencepiece as spm
    settings = dict(vocab_size=vocab_size, model_type=model_type, corpus=corpus_fingerprint,
                    character_coverage=1.0, byte_fallback=True, normalization="identity",
                    newline_symbol=True, num_threads=SPM_THREADS, sentencepiece=spm.__version__, version=3)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    directory = os.path.join(cache_dir, "tokenizers", f"spm-{model_type}-{vocab_size}-{key}")
    model_file = os.path.join(directory, "spm.model")
    if os.path.isfile(model_file):
      log(f"tokenizer: reusing {model_file}")
      return cls(model_file)
    with cache_lock(directory):   # another run training the same tokenizer: wait for it, then reuse it
      if not os.path.isfile(model_file):
        cls._train(spm, texts, directory, model_file, settings, vocab_size, model_type, log)
    return cls(model_file)

  @staticmethod
  def _train(spm, texts, directory: str, model_file: str, settings: dict, vocab_size: int, model_type: str,
             log) -> None:
    log(f"tokenizer: training SentencePiece ({model_type}, vocab {vocab_size}) -> {model_file}")
    sentences = (line for text in texts for line in text.splitlines() if line.strip())
    tmp = model_file + f".tmp{os.getpid()}"
    try:
      with open(tmp, "wb") as out:
        _train_spm(
            spm, out, sentences, "data.vocab_size", vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, byte_fallback=True, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            num_threads=SPM_THREADS, input_sentence_size=2_000_000, shuffle_input_sentence=True,
            # identity normalisation and "\n" as a piece keep line breaks (verse, speaker turns).
            remove_extra_whitespaces=False, normalization_rule_name="identity", user_defined_symbols=["\n"],
            split_digits=True, minloglevel=2, seed_sentencepiece_size=200_000)
    finally:
      if not os.path.getsize(tmp):
        os.remove(tmp)
    os.replace(tmp, model_file)  # atomic: a killed run never leaves a half-written model behind
    with open(os.path.join(directory, "settings.json"), "w") as f:
      json.dump(settings, f, indent=1)


def _train_spm(spm, out, sentence_iterator, vocab_key, **kwargs) -> None:
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=sentence_iterator, model_writer=out, **kwargs)
  except RuntimeError as e:  # e.g. a vocabulary too small for the corpus' characters + 256 bytes
    reason = str(e).split("]")[-1].strip()
    raise DataError(f"{vocab_key}={kwargs['vocab_size']}: SentencePiece training failed: {reason}") from None


def make_tokenizer(data_cfg, sources, cache_dir: str, log=print, records=None) -> Tokenizer:
  """The tokenizer `data.tokenizer` names; SentencePiece trains on up to `data.spm_max_documents`
  training documents of the source(s) unless `data.spm_model_file` is given (a structured task's
  documents through `records.text`: the text its fields hold, not their JSON)."""
  if data_cfg.tokenizer == "byte":
    return ByteTokenizer()
  if data_cfg.tokenizer == "bpe":
    from research.data.bpe_tokenizers import GPT2BPETokenizer
    return GPT2BPETokenizer(data_cfg.bpe_vocab_file, data_cfg.bpe_merges_file)
  if data_cfg.tokenizer == "tiktoken":
    from research.data.bpe_tokenizers import TiktokenTokenizer
    return TiktokenTokenizer(data_cfg.tiktoken_file, pattern=data_cfg.tiktoken_pattern)
  if data_cfg.tokenizer == "hf":
    from research.data.hf_tokenizer import HF_FILES, HFTokenizer
    from research.data.tokenizer_store import local_copy
    return HFTokenizer(local_copy(data_cfg.tokenizer_dir, HF_FILES, cache_dir))
  if data_cfg.tokenizer != "sentencepiece":
    raise DataError(f"data.tokenizer={data_cfg.tokenizer!r} is not one of byte, sentencepiece, bpe, tiktoken, hf")
  if data_cfg.spm_model_file:
    return SentencePieceTokenizer(data_cfg.spm_model_file)
  from research.data.records import parse
  from research.data.sources import text_of
  per_source = max(1, data_cfg.spm_max_documents // len(sources))

  def texts():
    for s in sources:
      for i in range(min(len(s.train), per_source)):
        text = text_of(s.train[i], s.feature)
        yield records.text(parse(text)) if records is not None else text

  fingerprint = hashlib.sha256("|".join(s.fingerprint for s in sources).encode()).hexdigest()[:16]
  return SentencePieceTokenizer.train_or_load(texts(), f"{fingerprint}-{per_source}", cache_dir,
                                              data_cfg.vocab_size, data_cfg.spm_model_type, log=log)
