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
