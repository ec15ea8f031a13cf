"""Local corpora, tokenizers and batches: splits, caching, determinism and bad input."""
import os

import numpy as np
import pytest

from research.data import ByteTokenizer, SentencePieceTokenizer, build_pipeline, load_corpus
from research.data.batches import TrainBatches, eval_batches
from research.data.corpus import DataError
from tests.conftest import write_corpus


def test_split_by_file_keeps_documents_whole(corpus_dir):
  c = load_corpus(corpus_dir, val_files=("play_3.txt",))
  assert [os.path.basename(f) for f in c.validation_files] == ["play_3.txt"]
  assert not set(c.train_files) & set(c.validation_files)
  assert len(c.train) == 3 and len(c.validation) == 1


def test_split_by_fraction_cuts_at_a_line(tmp_path):
  path = tmp_path / "one.txt"
  path.write_text("".join(f"line {i}\n" for i in range(100)))
  c = load_corpus(str(path), val_fraction=0.1)
  assert c.train[0] + c.validation[0] == path.read_text()
  assert c.validation[0].startswith("line ") and c.train[0].endswith("\n")
  assert 0.08 < len(c.validation[0]) / len(path.read_text()) < 0.12


def test_glob_and_directory(corpus_dir):
  assert len(load_corpus(os.path.join(corpus_dir, "play_[01].txt")).train_files) == 2
  assert len(load_corpus(corpus_dir).train_files) == 4


@pytest.mark.parametrize("setup, message", [
    (lambda d: str(d / "missing.txt"), "no such file or directory"),
    (lambda d: str(d / "*.md"), "the glob matches no files"),
    (lambda d: (d / "sub").mkdir() or str(d / "sub"), "directory holds no .txt files"),
    (lambda d: (d / "e.txt").write_text("  \n\n") and str(d / "e.txt"), "the corpus is empty"),
    (lambda d: (d / "bad.txt").write_bytes(b"fine\nstill fine\nbad \xff byte\n") and str(d / "bad.txt"),
     r"bad.txt:3: bytes that are not UTF-8"),
])
def test_bad_input_errors(tmp_path, setup, message):
  with pytest.raises(DataError, match=message):
    load_corpus(setup(tmp_path))


def test_val_files_must_match(corpus_dir):
  with pytest.raises(DataError, match="'nope.txt' matches none"):
    load_corpus(corpus_dir, val_files=("nope.txt",))
  with pytest.raises(DataError, match="holds out every file"):
    load_corpus(corpus_dir, val_files=("*.txt",))


def test_byte_tokenizer_roundtrip():
  tok = ByteTokenizer()
  text = "Wherefore art thou — Romeo?\n"
  assert tok.decode(tok.encode(text)) == text
  assert tok.vocab_size == 259 and {tok.bos_id, tok.eos_id, tok.pad_id} == {256, 257, 258}


def test_sentencepiece_trains_once_and_retrains_on_new_settings(corpus_dir, tmp_path):
  c = load_corpus(corpus_dir, val_files=("play_3.txt",))
  logs = []
  a = SentencePieceTokenizer.train_or_load(c.train, c.fingerprint, str(tmp_path), 320, "unigram", log=logs.append)
  b = SentencePieceTokenizer.train_or_load(c.train, c.fingerprint, str(tmp_path), 320, "unigram", log=logs.append)
  assert a.model_file == b.model_file and "reusing" in logs[-1]
  other = SentencePieceTokenizer.train_or_load(c.train, c.fingerprint, str(tmp_path), 330, "bpe", log=logs.append)
  assert other.model_file != a.model_file and other.vocab_size == 330
  with pytest.raises(DataError, match=r"data.vocab_size=100: SentencePiece training failed: Vocabulary size"):
    SentencePieceTokenizer.train_or_load(c.train, c.fingerprint, str(tmp_path), 100, "unigram", log=logs.append)
  text = "KING.\nthe queen spoke of bread.\n"
  assert a.decode(a.encode(text)) == text  # line breaks survive


def test_pipeline_streams_and_unigram_entropy(tiny_cfg):
  p = build_pipeline(tiny_cfg.data, log=lambda *a: None)
  assert p.train_tokens.dtype == np.uint16
  assert (p.train_tokens == p.tokenizer.eos_id).sum() == 3  # one EOS after each training document
  assert 0 < p.unigram_entropy() < np.log(p.tokenizer.vocab_size)
  again = build_pipeline(tiny_cfg.data, log=lambda *a: None)  # from the on-disk cache
  np.testing.assert_array_equal(again.train_tokens, p.train_tokens)


def test_train_batches_are_a_function_of_step_and_split_by_process():
  stream = np.arange(1000, dtype=np.uint16)
  full = TrainBatches(stream, 8, 16, seed=3)
  b5 = full.batch(5)
  np.testing.assert_array_equal(b5["inputs"], full.batch(5)["inputs"])
  np.testing.assert_array_equal(b5["targets"], b5["inputs"] + 1)
  assert not np.array_equal(b5["inputs"], full.batch(6)["inputs"])
  halves = [TrainBatches(stream, 8, 16, seed=3, process_index=i, process_count=2).batch(5) for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]), b5["inputs"])


def test_eval_batches_cover_split_with_padding():
  stream = np.arange(100, dtype=np.uint16)
  batches = eval_batches(stream, batch_size=4, seq_len=10, max_batches=0)
  assert len(batches) == 3  # 9 windows -> 4 + 4 + 1 (+3 padding rows)
  assert batches[-1]["weights"].sum() == 10
  np.testing.assert_array_equal(batches[0]["inputs"][1], np.arange(10, 20))
  again = eval_batches(stream, batch_size=4, seq_len=10, max_batches=0)
  np.testing.assert_array_equal(again[2]["inputs"], batches[2]["inputs"])


def test_write_corpus_helper_is_deterministic(tmp_path):
  a = write_corpus(str(tmp_path / "a"), num_files=1)
  b = write_corpus(str(tmp_path / "b"), num_files=1)
  assert open(a[0]).read() == open(b[0]).read()
