"""Byte-level and SentencePiece tokenizers (BPE / tiktoken: test_bpe_tokenizers.py)."""
import pickle

import pytest

from research.data import ByteTokenizer, DataError, SentencePieceTokenizer
from research.data.corpus import corpus_spec, iter_split


def test_byte_tokenizer_roundtrip():
  tok = ByteTokenizer()
  text = "Wherefore art thou — Romeo?\n"
  assert tok.decode(tok.encode(text)) == text
  assert tok.vocab_size == 259 and {tok.bos_id, tok.eos_id, tok.pad_id} == {256, 257, 258}
  assert (tok.kind, tok.add_bos, tok.chat_template) == ("byte", False, None)


def test_sentencepiece_trains_once_and_retrains_on_new_settings(corpus_dir, tmp_path):
  texts = [t for _, t in iter_split(corpus_spec(corpus_dir), "train")]
  logs = []
  a = SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path), 320, "unigram", log=logs.append)
  b = SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path), 320, "unigram", log=logs.append)
  assert a.model_file == b.model_file and "reusing" in logs[-1]
  other = SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path), 330, "bpe", log=logs.append)
  assert other.model_file != a.model_file and other.vocab_size == 330
  changed = SentencePieceTokenizer.train_or_load(texts, "fp2", str(tmp_path), 320, "unigram", log=logs.append)
  assert changed.model_file != a.model_file  # another corpus: trained anew
  with pytest.raises(DataError, match=r"data.vocab_size=100: SentencePiece training failed: Vocabulary size"):
    SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path), 100, "unigram", log=logs.append)
  text = "KING.\nthe queen spoke of bread.\n"
  assert a.decode(a.encode(text)) == text  # line breaks survive
  assert pickle.loads(pickle.dumps(a)).encode(text) == a.encode(text)  # for data-loader workers


def test_trained_sentencepiece_does_not_depend_on_the_machines_cpu_count(corpus_dir, tmp_path, monkeypatch):
  import os
  texts = [t for _, t in iter_split(corpus_spec(corpus_dir), "train")] * 3
  models = []
  for cpus in (1, 4):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    tok = SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path / f"cpus{cpus}"), 320, "unigram",
                                               log=lambda *a: None)
    models.append(open(tok.model_file, "rb").read())
  assert models[0] == models[1]


def _spm_model(tmp_path, **kwargs):
  import sentencepiece as spm
  lines = [f"the king spoke to the queen about bread number {i}" for i in range(50)]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "m"), vocab_size=40,
                                 hard_vocab_limit=False, minloglevel=2, **kwargs)
  return str(tmp_path / "m.model")


def test_external_sentencepiece_model_errors(tmp_path):
  from research.config import base_config
  from research.data.tokenizers import make_tokenizer
  cfg = base_config().data
  cfg.tokenizer = "sentencepiece"
  cfg.spm_model_file = str(tmp_path / "missing.model")
  with pytest.raises(DataError, match=r"^data.spm_model_file=.*missing.model: no such file$"):
    make_tokenizer(cfg, [], str(tmp_path))
  cfg.spm_model_file = _spm_model(tmp_path, eos_id=-1)
  with pytest.raises(DataError, match=r"data.spm_model_file=.*m.model: the model has no EOS piece \(eos_id -1\)"):
    make_tokenizer(cfg, [], str(tmp_path))
  cfg.spm_model_file = _spm_model(tmp_path)
  tok = make_tokenizer(cfg, [], str(tmp_path))
  assert (tok.eos_id, tok.bos_id, tok.add_bos, tok.chat_template) == (2, 1, False, None)
  cfg.spm_model_file = _spm_model(tmp_path, bos_id=-1, pad_id=-1)  # SentencePiece's default pad_id is -1
  tok = make_tokenizer(cfg, [], str(tmp_path))
  assert tok.bos_id == tok.pad_id == tok.eos_id == 2  # no BOS/PAD piece: EOS serves, never id -1
