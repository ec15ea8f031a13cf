"""GPT-2 BPE and tiktoken files: exact round trips, merges applied, special ids, fingerprints, bad files.

Every test builds its own tiny vocabulary in tmp_path; nothing is downloaded.
"""
import base64
import json
import os

import pytest

from research.data.bpe_tokenizers import PATTERNS, GPT2BPETokenizer, TiktokenTokenizer
from research.data.corpus import DataError

SENTENCES = ["the cat sat on the mat", "the king and the queen spoke of the war",
             "héllo wörld, 日本語 text", "numbers 12345 and symbols !? <tags>"] * 5
HARD_TEXT = "the <|endoftext|> cat\n\n  😀 héllo\tend 12345 ünïcödé\r\nthe end  "


def write_gpt2_files(directory) -> tuple[str, str]:
  """Trains a tiny byte-level BPE with `tokenizers` and saves vocab.json + merges.txt."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(SENTENCES, trainer)
  os.makedirs(directory, exist_ok=True)
  vocab_file, merges_file = tok.model.save(str(directory))
  return vocab_file, merges_file


def write_tiktoken_file(path, merged=(b"th", b"the", b" the")) -> str:
  ranks = [bytes([b]) for b in range(256)] + list(merged)
  with open(path, "w") as f:
    f.writelines(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(ranks))
  return str(path)


@pytest.fixture
def gpt2(tmp_path):
  return GPT2BPETokenizer(*write_gpt2_files(tmp_path / "gpt2"))


@pytest.fixture
def tiktoken_file(tmp_path):
  return write_tiktoken_file(tmp_path / "tiny.tiktoken")


@pytest.mark.parametrize("text", [HARD_TEXT, "", " ", "\n", "<|endoftext|>", "a" * 1000, "\x00\x7f\u0300"])
def test_round_trip_is_exact(gpt2, tiktoken_file, text):
  for tok in (gpt2, TiktokenTokenizer(tiktoken_file), TiktokenTokenizer(tiktoken_file, pattern="gpt2")):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_token_text_is_ordinary_text(gpt2, tiktoken_file):
  tik = TiktokenTokenizer(tiktoken_file)
  for tok in (gpt2, tik):
    assert tok.eos_id not in tok.encode("a <|endoftext|> b")
    # decode drops the special id, so a sample that runs past EOS reads cleanly
    assert tok.decode([tok.eos_id] + tok.encode("hi") + [tok.eos_id, tok.vocab_size + 5]) == "hi"


def test_gpt2_special_ids_and_merges(tmp_path, gpt2):
  vocab = json.loads((tmp_path / "gpt2" / "vocab.json").read_text())
  assert gpt2.bos_id == gpt2.eos_id == gpt2.pad_id == vocab["<|endoftext|>"]
  assert gpt2.vocab_size == len(vocab) == 320
  assert gpt2.encode(" the") == [vocab["Ġthe"]]  # Ġ is the byte-level symbol for a space
  assert len(gpt2.encode("the cat sat on the mat")) < len("the cat sat on the mat") // 2


def test_tiktoken_special_ids_and_merges(tiktoken_file):
  tok = TiktokenTokenizer(tiktoken_file)
  assert tok.bos_id == tok.eos_id == tok.pad_id == 259
  assert tok.vocab_size == 260
  assert tok.encode("the") == [257]
  assert tok.encode("the the") == [257, 258]
  assert tok.encode("this") == [256, ord("i"), ord("s")]
  assert tok.encode("ab") == [ord("a"), ord("b")]


def test_patterns_match_tiktoken_published_ones():
  import inspect
  from tiktoken_ext import openai_public
  assert PATTERNS["gpt2"] == openai_public.r50k_pat_str
  # cl100k_base() would download its ranks, so look for the regex in its source instead
  assert f'r"""{PATTERNS["cl100k"]}"""' in inspect.getsource(openai_public.cl100k_base)


def test_patterns_split_differently():
  # cl100k splits digits in groups of three; GPT-2's pattern keeps a run of digits whole.
  import regex
  assert regex.findall(PATTERNS["cl100k"], "12345") == ["123", "45"]
  assert regex.findall(PATTERNS["gpt2"], "12345") == ["12345"]


def test_gpt2_matches_tiktoken_on_the_same_merges(tmp_path, gpt2):
  """Two implementations (HF merge ranks vs tiktoken token ranks) must agree on GPT-2 files."""
  from tokenizers import pre_tokenizers
  vocab = json.loads((tmp_path / "gpt2" / "vocab.json").read_text())
  byte_of = _byte_level_decoder()
  assert set(byte_of) == set(pre_tokenizers.ByteLevel.alphabet())
  # The trainer puts <|endoftext|> at id 0; shift the rest down by one to get ranks 0..n-1.
  assert vocab["<|endoftext|>"] == 0
  path = tmp_path / "same.tiktoken"
  path.write_text("".join(f"{base64.b64encode(bytes(byte_of[c] for c in t)).decode()} {i - 1}\n"
                          for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i > 0))
  tik = TiktokenTokenizer(str(path), pattern="gpt2")
  for text in SENTENCES[:4] + [HARD_TEXT, "the theme of the thesis  \n\n  "]:
    assert gpt2.encode(text) == [i + 1 for i in tik.encode(text)], text


def _byte_level_decoder() -> dict[str, int]:
  """GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the rest to 256+."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def test_fingerprints_follow_file_contents(tmp_path):
  vocab_file, merges_file = write_gpt2_files(tmp_path / "a")
  first = GPT2BPETokenizer(vocab_file, merges_file).fingerprint
  assert first.startswith("bpe-") and GPT2BPETokenizer(vocab_file, merges_file).fingerprint == first
  lines = open(merges_file).read().splitlines()
  with open(merges_file, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")  # drop the last merge
  assert GPT2BPETokenizer(vocab_file, merges_file).fingerprint != first

  path = write_tiktoken_file(tmp_path / "t.tiktoken")
  cl100k = TiktokenTokenizer(path).fingerprint
  assert cl100k.startswith("tiktoken-") and TiktokenTokenizer(path, pattern="gpt2").fingerprint != cl100k
  write_tiktoken_file(path, merged=(b"th", b"the"))
  edited = TiktokenTokenizer(path)
  assert edited.fingerprint != cl100k
  assert edited.vocab_size == 259  # the edit is seen: no stale copy from tiktoken's file cache


def _write(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return str(path)


def test_gpt2_bad_files(tmp_path):
  vocab_file, merges_file = write_gpt2_files(tmp_path / "ok")
  vocab = json.loads(open(vocab_file).read())
  with pytest.raises(DataError, match=r"data.bpe_vocab_file=.*nope.json: no such file"):
    GPT2BPETokenizer(str(tmp_path / "nope.json"), merges_file)
  with pytest.raises(DataError, match=r"data.bpe_merges_file=.*nope.txt: no such file"):
    GPT2BPETokenizer(vocab_file, str(tmp_path / "nope.txt"))
  cases = [
      ("{", None, r"v.json: not valid JSON"),
      ("[1, 2]", None, r"v.json: expected a JSON object"),
      (json.dumps({**vocab, "x": "7"}), None, r"v.json: token 'x' has id '7'"),
      (json.dumps({k: v for k, v in vocab.items() if k != "<|endoftext|>"}), None,
       r"v.json: no <\|endoftext\|> token"),
      (json.dumps({k: v for k, v in vocab.items() if k != "a"}), None, r"v.json: lacks 1 of the 256"),
      (None, "#version: 0.2\nthe\n", r"m.txt: .*Merges text file invalid"),
      (None, "#version: 0.2\nzz qq\n", r"m.txt: .*Token `zz` out of vocabulary"),
  ]
  good_vocab, good_merges = open(vocab_file).read(), open(merges_file).read()
  for i, (vocab_text, merges_text, message) in enumerate(cases):
    v = _write(tmp_path / str(i) / "v.json", good_vocab if vocab_text is None else vocab_text)
    m = _write(tmp_path / str(i) / "m.txt", good_merges if merges_text is None else merges_text)
    with pytest.raises(DataError, match=message) as e:
      GPT2BPETokenizer(v, m)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b"\n\n", r"bad.tiktoken: holds no tokens"),
    (b"YQ== 0\nnot base64! 1\n", r"bad.tiktoken:2: expected '<base64 token> <rank>'"),
    (b"YQ== 0\nYg== one\n", r"bad.tiktoken:2: expected"),
    (b"YQ== 0\n\nYQ== 1\n", r"bad.tiktoken:3: token b'a' is empty or listed twice"),
    (b"YQ== 0\nYg== 5\n", r"bad.tiktoken: the ranks are not 0..1"),
    (b"YQ== 0\nYg== 1\n", r"bad.tiktoken: no token for 254 of the 256 single bytes"),
])
def test_tiktoken_bad_files(tmp_path, content, message):
  with pytest.raises(DataError, match=message) as e:
    TiktokenTokenizer(_write(tmp_path / "bad.tiktoken", content))
  assert "\n" not in str(e.value)


def test_tiktoken_missing_file_and_bad_pattern(tmp_path, tiktoken_file):
  with pytest.raises(DataError, match=r"data.tiktoken_file=.*nope.tiktoken: no such file"):
    TiktokenTokenizer(str(tmp_path / "nope.tiktoken"))
  with pytest.raises(DataError, match=r"data.tiktoken_pattern='o200k': choose one of gpt2, cl100k"):
    TiktokenTokenizer(tiktoken_file, pattern="o200k")
