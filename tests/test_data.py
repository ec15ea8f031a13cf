"""Local corpora, the TFDS builder and sources, and bad input."""
import json
import os
import time

import pytest

from research.config import base_config
from research.data import DataError
from research.data.corpus import SkipCounter, corpus_spec, iter_split
from research.data.local_builder import build_local_corpus
from research.data.sources import open_sources
from tests.conftest import write_corpus


def _docs(spec, split):
  return [text for _, text in iter_split(spec, split)]


def test_split_by_file_keeps_works_whole(corpus_dir):
  spec = corpus_spec(corpus_dir, val_files=("play_3.txt",))
  assert len(_docs(spec, "train")) == 3 and len(_docs(spec, "validation")) == 1
  assert _docs(spec, "validation")[0] == open(os.path.join(corpus_dir, "play_3.txt")).read()


def test_split_single_document_by_fraction_cuts_at_a_line(tmp_path):
  path = tmp_path / "one.txt"
  path.write_text("".join(f"line {i}\n" for i in range(100)))
  spec = corpus_spec(str(path), val_fraction=0.1)
  train, val = _docs(spec, "train"), _docs(spec, "validation")
  assert train[0] + val[0] == path.read_text()
  assert val[0].startswith("line ") and 0.08 < len(val[0]) / len(path.read_text()) < 0.12


def test_blank_line_documents_and_jsonl(tmp_path):
  (tmp_path / "a.txt").write_text("KING.\nHello.\n\nQUEEN.\nHi.\n\n\nFOOL.\nHo.\n")
  spec = corpus_spec(str(tmp_path / "a.txt"), doc_split="blank_lines", val_fraction=0.34)
  assert _docs(spec, "train") == ["KING.\nHello.\n", "QUEEN.\nHi.\n"]
  assert _docs(spec, "validation") == ["FOOL.\nHo.\n"]
  lines = [json.dumps({"body": f"doc {i}", "id": i}) for i in range(10)]
  (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
  spec = corpus_spec(str(tmp_path / "b.jsonl"), text_field="body", val_fraction=0.2)
  assert _docs(spec, "train") == [f"doc {i}" for i in range(8)]
  assert _docs(spec, "validation") == ["doc 8", "doc 9"]


def test_glob_and_directory(corpus_dir):
  assert len(corpus_spec(os.path.join(corpus_dir, "play_[01].txt")).files) == 2
  assert len(corpus_spec(corpus_dir).files) == 4


@pytest.mark.parametrize("setup, message", [
    (lambda d: str(d / "missing.txt"), "no such file or directory"),
    (lambda d: str(d / "*.md"), "the glob matches no files"),
    (lambda d: (d / "sub").mkdir() or str(d / "sub"), "directory holds no .txt, .jsonl or .csv files"),
])
def test_bad_paths(tmp_path, setup, message):
  with pytest.raises(DataError, match=message):
    corpus_spec(setup(tmp_path))


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"fine\nstill fine\nbad \xff byte\n", r"bad.txt:3: bytes that are not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not a JSON object"),
    ("bad.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"bad.jsonl:2: no string field 'text' \(data.text_field\); it has: body"),
])
def test_bad_records_name_file_and_line(tmp_path, name, content, message):
  (tmp_path / name).write_bytes(content)
  spec = corpus_spec(str(tmp_path / name))
  with pytest.raises(DataError, match=message):
    list(iter_split(spec, "train"))


def _label_check(record):
  if not str(record.get("text", "")).strip():
    raise ValueError("empty or missing 'text'")
  return {"text": record["text"], "label": str(record["label"])}


def test_records_from_jsonl_and_csv_keep_fields_and_location(tmp_path):
  from research.data.records import WHERE, Records, parse
  records = Records("test:text:label", _label_check)
  (tmp_path / "a.jsonl").write_text('{"text": "one", "label": "x", "id": 1}\n\n{"text": "two", "label": 2}\n')
  (tmp_path / "b.csv").write_text('text,label\n"multi\nline",y\nthree,x\n')
  spec = corpus_spec(str(tmp_path), records=records, val_fraction=0.0)
  docs = [parse(d) for d in _docs(spec, "train")]
  assert [(d["text"], d["label"]) for d in docs] == [("one", "x"), ("two", "2"), ("multi\nline", "y"),
                                                     ("three", "x")]
  assert [d[WHERE].split(os.sep)[-1] for d in docs] == ["a.jsonl:1", "a.jsonl:3", "b.csv:2", "b.csv:4"]
  other = corpus_spec(str(tmp_path), records=Records("test:body:label", _label_check), val_fraction=0.0)
  assert other.fingerprint != spec.fingerprint  # another check or field builds another corpus
  (tmp_path / "b.csv").write_text("text,label\nfine,x\n  ,y\n")
  with pytest.raises(DataError, match=r"b.csv:3: empty or missing 'text'"):
    _docs(corpus_spec(str(tmp_path / "b.csv"), records=records), "train")
  (tmp_path / "c.csv").write_text("text,label\nfine,x,extra\n")
  with pytest.raises(DataError, match=r"c.csv:2: 3 columns where the header has 2"):
    _docs(corpus_spec(str(tmp_path / "c.csv"), records=records), "train")
  (tmp_path / "d.txt").write_text("plain text\n")
  with pytest.raises(DataError, match=r"d.txt: this task reads records"):
    corpus_spec(str(tmp_path / "d.txt"), records=records)


def test_skip_bad_records_counts_them(tmp_path):
  (tmp_path / "c.jsonl").write_bytes(b'{"text": "one"}\nnot json\n{"text": "two"}\n{"x": 1}\n{"text": "three"}\n')
  spec = corpus_spec(str(tmp_path / "c.jsonl"), val_fraction=0.34, skip_bad_records=True)
  builder = build_local_corpus(spec, str(tmp_path / "tfds"), log=lambda *a: None)
  assert builder.skipped_records() == {"train": 2, "validation": 2}  # each split reads the file once
  assert builder.info.splits["train"].num_examples == 2


def test_val_files_must_match(corpus_dir):
  with pytest.raises(DataError, match="'nope.txt' matches none"):
    corpus_spec(corpus_dir, val_files=("nope.txt",))
  with pytest.raises(DataError, match="holds out every file"):
    corpus_spec(corpus_dir, val_files=("*.txt",))


def test_empty_split_is_an_error(tmp_path):
  (tmp_path / "e.txt").write_text("  \n\n")
  (tmp_path / "f.txt").write_text("text\n")
  with pytest.raises(DataError, match="the train split has no documents"):
    build_local_corpus(corpus_spec(str(tmp_path / "*.txt"), val_files=("f.txt",)), str(tmp_path / "t"))


def test_builder_builds_once_and_rebuilds_when_a_file_changes(tmp_path):
  write_corpus(str(tmp_path / "c"), num_files=3)
  logs = []
  spec = corpus_spec(str(tmp_path / "c"), val_files=("play_2.txt",))
  b1 = build_local_corpus(spec, str(tmp_path / "tfds"), log=logs.append)
  assert sum("building" in m for m in logs) == 1
  b2 = build_local_corpus(corpus_spec(str(tmp_path / "c"), val_files=("play_2.txt",)), str(tmp_path / "tfds"),
                          log=logs.append)
  assert sum("building" in m for m in logs) == 1 and b2.data_dir == b1.data_dir
  source = b1.as_data_source(split="train")
  assert len(source) == 2 and source[0]["text"].decode().startswith(("KING", "QUEEN", "FOOL"))
  time.sleep(0.01)
  with open(tmp_path / "c" / "play_0.txt", "a") as f:
    f.write("KING.\nmore.\n")
  b3 = build_local_corpus(corpus_spec(str(tmp_path / "c"), val_files=("play_2.txt",)), str(tmp_path / "tfds"),
                          log=logs.append)
  assert sum("building" in m for m in logs) == 2 and b3.data_dir != b1.data_dir


def _data_cfg(**kw):
  c = base_config().data
  c.update(kw)
  return c


def test_tfds_source_by_name_and_errors(tmp_path):
  import tensorflow_datasets as tfds

  class TinyLines(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"sentence": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(20), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"sentence": f"sentence number {i}"}

  TinyLines(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  cfg = _data_cfg(tfds_name="tiny_lines", tfds_data_dir=str(tmp_path), tfds_eval_split="test",
                  tfds_text_feature="sentence")
  (source,) = open_sources(cfg, str(tmp_path / "cache"))
  assert len(source.train) == 20 and len(source.validation) == 5
  assert ":tiny_lines/1.0.0:train:sentence:20:" in source.fingerprint  # version and text feature
  assert sorted(source.train[i]["sentence"] for i in range(20)) == sorted(f"sentence number {i}".encode() for i in range(20))
  with pytest.raises(DataError, match=r"data.tfds_name=no_such_set .*: Dataset no_such_set not found"):
    open_sources(_data_cfg(tfds_name="no_such_set", tfds_data_dir=str(tmp_path)), str(tmp_path))
  with pytest.raises(DataError, match=r"split 'validation'\): Unknown split 'validation'"):
    open_sources(_data_cfg(tfds_name="tiny_lines", tfds_data_dir=str(tmp_path), tfds_text_feature="sentence"),
                 str(tmp_path))
  with pytest.raises(DataError, match=r"data.tfds_text_feature='text' is not a feature of tiny_lines; it has: sentence"):
    open_sources(_data_cfg(tfds_name="tiny_lines", tfds_data_dir=str(tmp_path), tfds_eval_split="test"),
                 str(tmp_path))


def test_mixture_entries_are_checked(corpus_dir, tmp_path):
  with pytest.raises(DataError, match=r"data.mixture\[0\]=.* must be \(source, weight > 0\)"):
    open_sources(_data_cfg(mixture=((corpus_dir, -1.0),)), str(tmp_path))


def test_same_file_name_in_two_folders(tmp_path):
  for sub in ("a", "b"):
    (tmp_path / sub).mkdir()
    (tmp_path / sub / "part.txt").write_text(f"text of {sub}\n")
  spec = corpus_spec(str(tmp_path), val_fraction=0.5)
  builder = build_local_corpus(spec, str(tmp_path / "tfds"), log=lambda *a: None)
  assert builder.info.splits["train"].num_examples == 2


def test_fingerprint_sees_an_edit_that_keeps_size_and_mtime(tmp_path, monkeypatch):
  from research.data import files
  (tmp_path / "c").mkdir()
  path = tmp_path / "c" / "a.txt"
  path.write_text("the king spoke\n")
  memo = str(tmp_path / "memo.json")
  hashed = []
  sha256 = files._sha256
  monkeypatch.setattr(files, "_sha256", lambda f: hashed.append(f) or sha256(f))
  before = corpus_spec(str(tmp_path / "c"), memo_file=memo).fingerprint
  assert corpus_spec(str(tmp_path / "c"), memo_file=memo).fingerprint == before
  assert len(hashed) == 1  # the second start read the memo, not the file
  st = os.stat(path)
  path.write_text("the fool spoke\n")  # as cp -p / rsync -t / tar leave it: same size, same mtime
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
  assert corpus_spec(str(tmp_path / "c"), memo_file=memo).fingerprint != before
  assert len(hashed) == 2


def test_a_directory_linking_to_itself_gives_each_file_once(tmp_path):
  write_corpus(str(tmp_path / "c"), num_files=2)
  os.symlink(str(tmp_path / "c"), str(tmp_path / "c" / "loop"))
  (tmp_path / "c" / "sub").mkdir()
  os.symlink(str(tmp_path / "c" / "play_0.txt"), str(tmp_path / "c" / "sub" / "again.txt"))
  assert [os.path.basename(f) for f in corpus_spec(str(tmp_path / "c")).files] == ["play_0.txt", "play_1.txt"]
  assert len(corpus_spec(str(tmp_path / "c" / "**" / "*.txt")).files) == 2


def test_a_file_reachable_under_a_held_out_name_is_held_out(tmp_path):
  write_corpus(str(tmp_path / "c"), num_files=3)
  os.symlink("play_2.txt", str(tmp_path / "c" / "alias.txt"))        # a link to the held-out file
  os.symlink("play_1.txt", str(tmp_path / "c" / "held_out.txt"))     # a held-out name for a train file
  spec = corpus_spec(str(tmp_path / "c"), val_files=("play_2.txt", "held_out.txt"))
  validation = _docs(spec, "validation")
  assert len(spec.files) == 3 and len(_docs(spec, "train")) == 1 and len(validation) == 2
  assert (tmp_path / "c" / "play_2.txt").read_text() in validation


def test_a_byte_order_mark_is_not_text(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfKING.\nHello.\n")
  (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
  assert _docs(corpus_spec(str(tmp_path / "a.txt"), val_fraction=0.0), "train") == ["KING.\nHello.\n"]
  assert _docs(corpus_spec(str(tmp_path / "b.jsonl"), val_fraction=0.0), "train") == ["one", "two"]


@pytest.mark.parametrize("doc_split, expected", [
    ("blank_lines", ["KING.\nHello.\n", "FOOL.\nHo.\n"]),   # the bad document goes
    ("file", ["KING.\nHello.\n\nQUEEN.\n\nFOOL.\nHo.\n"]),  # the bad line goes
])
def test_skip_bad_records_skips_the_record_not_the_file(tmp_path, doc_split, expected):
  (tmp_path / "a.txt").write_bytes(b"KING.\nHello.\n\nQUEEN.\nH\xffi.\n\nFOOL.\nHo.\n")
  spec = corpus_spec(str(tmp_path / "a.txt"), doc_split=doc_split, val_fraction=0.0, skip_bad_records=True)
  skipped = SkipCounter()
  assert [t for _, t in iter_split(spec, "train", skipped)] == expected
  assert skipped.count == 1 and skipped.first.startswith(f"{tmp_path / 'a.txt'}:5: bytes that are not UTF-8")
