"""Hugging Face tokenizer directories (data.tokenizer=hf), saving/loading every kind, and the HF export.

Parity is with transformers (test-only): AutoTokenizer.from_pretrained(dir).encode(text,
add_special_tokens=False) on directories the tests build themselves; nothing is downloaded.
"""
import json
import os
import pickle
import random

import pytest

from research.data.bpe_tokenizers import GPT2BPETokenizer, TiktokenTokenizer
from research.data.corpus import DataError
from research.data.hf_tokenizer import HFTokenizer
from research.data.tokenizer_store import (DESCRIPTOR, copy_hf_tokenizer_files, load_tokenizer, save_hf_tokenizer,
                                           save_tokenizer)
from research.data.tokenizers import ByteTokenizer, SentencePieceTokenizer
from tests.test_bpe_tokenizers import SENTENCES, write_gpt2_files, write_tiktoken_file

TEXTS = ["the cat sat on the mat", "héllo wörld, 日本語 text 12345 😀 ünïcödé",
         "KING.\nthe queen spoke\n\n  of war\tend", "trailing spaces  ", " a leading space", "   ", "\n", ""]
# Every ASCII character occurs, as in any real corpus: a literal piece name ("</s>", "<0x0A>") in a text
# with a character the model lacks can come out as that piece in the tokenizer.json export.
SPM_LINES = SENTENCES + ["KING.\nthe queen spoke of bread 2024.", "café über naïve 日本語 text",
                         "".join(map(chr, range(33, 127)))] * 3


def auto(directory, **kwargs):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def assert_parity(ours, hf, texts=TEXTS, round_trip=lambda text: True):
  for text in texts:
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
    if round_trip(text):
      assert ours.decode(ours.encode(text)) == text, text


def write_json(path, value):
  path.write_text(json.dumps(value))


# ------------------------------------------------------------------------ the three layouts

def tokenizer_json_dir(d):
  """A byte-level BPE tokenizer.json whose post-processor puts BOS first (as Llama 3's does)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|begin|>", "<|end|>", "<|pad|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.post_processor = processors.TemplateProcessing(single="<|begin|> $A", special_tokens=[("<|begin|>", 0)])
  tok.enable_truncation(8)  # shipped for the model's context; must not cut documents
  d.mkdir(parents=True)
  tok.save(str(d / "tokenizer.json"))
  write_json(d / "tokenizer_config.json", {  # the transformers 4 format: AddedToken dicts
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": {"__type": "AddedToken", "content": "<|begin|>"},
      "eos_token": {"__type": "AddedToken", "content": "<|end|>", "lstrip": False, "rstrip": False,
                    "normalized": False, "single_word": False}, "chat_template": [
          {"name": "tool_use", "template": "{{ tools }}"}, {"name": "default", "template": "{{ messages }}"}]})
  write_json(d / "special_tokens_map.json", {"pad_token": "<|pad|>"})
  return d


def gpt2_dir(d):
  write_gpt2_files(d)
  write_json(d / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                                           "eos_token": "<|endoftext|>", "add_prefix_space": False})
  return d


def spm_dir(d, tokenizer_class="LlamaTokenizer"):
  """A Llama-like SentencePiece model: BPE, byte fallback, identity normalisation, digits split."""
  import sentencepiece as spm
  d.mkdir(parents=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SPM_LINES), model_prefix=str(d / "tokenizer"), vocab_size=400, model_type="bpe",
      byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
      character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
  os.remove(d / "tokenizer.vocab")
  write_json(d / "tokenizer_config.json", {"tokenizer_class": tokenizer_class, "bos_token": "<s>",
                                           "eos_token": "</s>", "add_bos_token": True, "legacy": True})
  (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
  return d


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  root = tmp_path_factory.mktemp("layouts")
  return {"tokenizer.json": tokenizer_json_dir(root / "json"), "gpt2": gpt2_dir(root / "gpt2"),
          "spm": spm_dir(root / "spm")}


@pytest.mark.parametrize("layout", ["tokenizer.json", "gpt2", "spm"])
def test_layout_encodes_as_transformers_does(layouts, layout):
  directory = layouts[layout]
  ours, hf = HFTokenizer(str(directory)), auto(directory)
  texts = TEXTS
  if layout == "spm":  # transformers 5's LlamaTokenizer puts no "▁" before a leading space; SentencePiece does
    texts = [t for t in TEXTS if not t[:1].isspace()]
  assert_parity(ours, hf, texts)
  assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.eos_token_id)
  assert ours.pad_id == (hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id)
  assert ours.add_bos == (hf.encode("a")[:1] == [hf.bos_token_id]) == (layout != "gpt2")
  assert ours.vocab_size == len(hf)
  # special-token text in a document is ordinary text (transformers: split_special_tokens=True)
  special = "a <|endoftext|> b <|end|> c </s> <s>"
  assert ours.encode(special) == hf.encode(special, add_special_tokens=False, split_special_tokens=True)
  assert ours.eos_id not in ours.encode(special)
  # decode drops special and out-of-range ids
  assert ours.decode([ours.bos_id, *ours.encode("the cat"), ours.eos_id, ours.vocab_size + 3, -1]) == "the cat"
  again = pickle.loads(pickle.dumps(ours))  # for data-loader workers: reloads from the files
  assert again.encode(TEXTS[2]) == ours.encode(TEXTS[2]) and again.fingerprint == ours.fingerprint


@pytest.mark.parametrize("layout", ["tokenizer.json", "gpt2", "spm"])
def test_a_directory_transformers_5_saved(layouts, tmp_path, layout):
  """save_pretrained writes the v5 format: string tokens, tokenizer.json, chat_template.jinja."""
  auto(layouts[layout]).save_pretrained(str(tmp_path / "saved"))
  ours, hf = HFTokenizer(str(tmp_path / "saved")), auto(tmp_path / "saved")
  # every text: LlamaTokenizer's pipeline is in the tokenizer.json now, and loses a leading space
  assert_parity(ours, hf, round_trip=lambda text: layout != "spm" or not text[:1].isspace())
  assert ours.add_bos == (hf.encode("a")[:1] == [hf.bos_token_id]) == (layout != "gpt2")
  assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.eos_token_id)
  assert ours.chat_template == HFTokenizer(str(layouts[layout])).chat_template


def test_spm_layout_matches_sentencepiece_backend_on_every_text(tmp_path):
  directory = spm_dir(tmp_path / "spm", tokenizer_class="SentencePieceBackend")  # runs sentencepiece itself
  assert_parity(HFTokenizer(str(directory)), auto(directory))


def test_special_tokens_chat_template_and_fingerprint(layouts, tmp_path):
  json_tok = HFTokenizer(str(layouts["tokenizer.json"]))
  assert json_tok.pad_id == json_tok._backend.token_id("<|pad|>")  # from special_tokens_map.json
  assert json_tok.chat_template == "{{ messages }}"  # the default of the named templates
  assert HFTokenizer(str(layouts["spm"])).chat_template.startswith("{% for m in messages %}")
  assert HFTokenizer(str(layouts["gpt2"])).chat_template is None
  assert len(json_tok.encode("the cat sat on the mat " * 20)) > 8  # the file's truncation is off

  fingerprints = {HFTokenizer(str(d)).fingerprint for d in layouts.values()}
  assert len(fingerprints) == 3 and all(f.startswith("hf-") for f in fingerprints)
  copy = tmp_path / "copy"
  copy_hf_tokenizer_files(layouts["tokenizer.json"], copy)
  assert HFTokenizer(str(copy)).fingerprint == json_tok.fingerprint  # contents, not paths
  write_json(copy / "tokenizer_config.json", {"eos_token": "<|end|>", "chat_template": "{{ other }}"})
  edited = HFTokenizer(str(copy))
  assert edited.fingerprint != json_tok.fingerprint and edited.chat_template == "{{ other }}"
  assert edited.add_bos and edited.bos_id == json_tok.bos_id  # no bos_token named: what the post-processor puts first


def test_missing_and_bad_directories(layouts, tmp_path):
  def fails(directory, message):
    with pytest.raises(DataError, match=message) as e:
      HFTokenizer(str(directory))
    assert "\n" not in str(e.value)

  fails(tmp_path / "nope", r"data.tokenizer_dir=.*nope: no such directory .*tokenizer.json, vocab.json \+ merges.txt")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "vocab.json").write_text("{}")
  fails(tmp_path / "empty", r"empty: no tokenizer file there; looked for tokenizer.json, vocab.json \+ merges.txt, "
                            r"or tokenizer.model")
  d = tmp_path / "d"
  copy_hf_tokenizer_files(layouts["tokenizer.json"], d)
  os.remove(d / "special_tokens_map.json")
  write_json(d / "tokenizer_config.json", {"bos_token": "<|begin|>"})
  fails(d, r"d/tokenizer_config.json: no eos_token .*; the EOS token ends every document")
  write_json(d / "tokenizer_config.json", {"eos_token": "<|nope|>"})
  fails(d, r"d/tokenizer.json: eos_token '<\|nope\|>' is not in the vocabulary")
  write_json(d / "tokenizer_config.json", {"eos_token": 7})
  fails(d, r"d/tokenizer_config.json: eos_token=7 is neither a string nor")
  (d / "tokenizer_config.json").write_text("{")
  fails(d, r"d/tokenizer_config.json: not valid JSON")
  write_json(d / "tokenizer_config.json", {"eos_token": "<|end|>"})
  (d / "tokenizer.json").write_text("{}")
  fails(d, r"d/tokenizer.json: not a tokenizers file")
  g = tmp_path / "g"
  copy_hf_tokenizer_files(layouts["gpt2"], g)
  write_json(g / "tokenizer_config.json", {"add_prefix_space": True})
  fails(g, r"g/tokenizer_config.json: add_prefix_space=true is not supported")


def test_config_and_make_tokenizer(layouts, tmp_path):
  from research.config import ConfigError, base_config, validate_config
  from research.data.tokenizers import make_tokenizer
  cfg = base_config()
  cfg.data.path, cfg.data.tokenizer = "x.txt", "hf"
  with pytest.raises(ConfigError, match=r"^data.tokenizer=hf needs data.tokenizer_dir"):
    validate_config(cfg, num_devices=1, processes=1)
  cfg.data.tokenizer_dir = str(layouts["gpt2"])
  validate_config(cfg, num_devices=1, processes=1)
  assert make_tokenizer(cfg.data, [], str(tmp_path)).fingerprint == HFTokenizer(str(layouts["gpt2"])).fingerprint
  cfg.data.tokenizer = "wordpiece"
  with pytest.raises(DataError, match=r"not one of byte, sentencepiece, bpe, tiktoken, hf"):
    make_tokenizer(cfg.data, [], str(tmp_path))


# ------------------------------------------------------------------- save / load every kind

def trained_spm(tmp_path, model_type="unigram", cache="spm"):
  texts = SPM_LINES + [f"the war of {i} kings and {i * 7} queens" for i in range(40)]
  return SentencePieceTokenizer.train_or_load(texts, "fp", str(tmp_path / cache), 370, model_type,
                                              log=lambda *a: None)


@pytest.fixture
def every_kind(tmp_path, layouts):
  return {"byte": ByteTokenizer(), "sentencepiece": trained_spm(tmp_path),
          "bpe": GPT2BPETokenizer(*write_gpt2_files(tmp_path / "bpe")),
          "tiktoken": TiktokenTokenizer(write_tiktoken_file(tmp_path / "t.tiktoken"), pattern="gpt2"),
          "hf": HFTokenizer(str(layouts["tokenizer.json"]))}


def test_every_kind_saves_and_loads_back(every_kind, tmp_path):
  for kind, tok in every_kind.items():
    save_tokenizer(tok, tmp_path / "saved" / kind)
    back = load_tokenizer(tmp_path / "saved" / kind)
    assert (back.kind, back.fingerprint, back.vocab_size, back.eos_id, back.add_bos) == \
        (kind, tok.fingerprint, tok.vocab_size, tok.eos_id, tok.add_bos), kind
    assert [back.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS], kind
  assert sorted(os.listdir(tmp_path / "saved" / "hf")) == sorted([DESCRIPTOR, *every_kind["hf"].files])
  assert json.loads((tmp_path / "saved" / "tiktoken" / DESCRIPTOR).read_text())["settings"] == {"pattern": "gpt2"}


def test_store_errors(every_kind, tmp_path):
  with pytest.raises(DataError, match=r"nothing: no research_tokenizer.json .*data.tokenizer=hf"):
    load_tokenizer(tmp_path / "nothing")
  def drop_last_merge(path):
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
      f.write("\n".join(lines[:-1]) + "\n")

  save_tokenizer(every_kind["bpe"], tmp_path / "s")
  drop_last_merge(tmp_path / "s" / "merges.txt")
  with pytest.raises(DataError, match=r"s: the files give tokenizer fingerprint bpe-\w+, research_tokenizer.json "
                                      r"says bpe-\w+; they were edited"):
    load_tokenizer(tmp_path / "s")
  drop_last_merge(every_kind["bpe"].merges_file)  # edited after loading: refused, not saved under the old one
  with pytest.raises(DataError, match=r"the bpe tokenizer's files .* changed since it was loaded"):
    save_tokenizer(every_kind["bpe"], tmp_path / "t")
  with pytest.raises(DataError, match=r"cannot save a object tokenizer"):
    save_tokenizer(object(), tmp_path / "u")
  with pytest.raises(DataError, match=r"bpe/nope: no tokenizer files; looked for"):
    copy_hf_tokenizer_files(tmp_path / "bpe" / "nope", tmp_path / "v")


def test_save_and_load_on_a_remote_path(every_kind, tmp_path, monkeypatch):
  import fsspec
  from fsspec.implementations.memory import MemoryFileSystem

  class InMemoryGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close=False, **kwargs):  # epath passes gcsfs's option
      super().__init__(*args, **kwargs)

  saved = {k: fsspec.registry.get(k) for k in ("gs", "gcs")}
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, InMemoryGCS, clobber=True)
  try:
    for kind in ("hf", "tiktoken"):
      save_tokenizer(every_kind[kind], f"gs://bucket/run/{kind}")
      back = load_tokenizer(f"gs://bucket/run/{kind}", cache_dir=str(tmp_path / "cache"))
      assert back.fingerprint == every_kind[kind].fingerprint
      assert pickle.loads(pickle.dumps(back)).encode(TEXTS[1]) == every_kind[kind].encode(TEXTS[1])
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 2
    copy_hf_tokenizer_files(every_kind["hf"].directory, "gs://bucket/hf")
    from research.config import base_config
    from research.data.tokenizers import make_tokenizer
    cfg = base_config().data
    cfg.tokenizer, cfg.tokenizer_dir = "hf", "gs://bucket/hf"
    assert make_tokenizer(cfg, [], str(tmp_path / "cache")).fingerprint == every_kind["hf"].fingerprint
  finally:
    MemoryFileSystem.store.clear()
    for name, cls in saved.items():
      if cls is not None:
        fsspec.register_implementation(name, cls, clobber=True)


# ------------------------------------------------------------------------------- HF export

def random_texts(n, seed=0):
  rng = random.Random(seed)
  alphabet = list("abcdefghij klmn  \n\t0123456789.,!'éü日本😀\r") + ["the ", " king", "queen", "\n\n", "   ",
                                                                    "'s", "'LL", "<0x41>", "<s>"]
  return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def assert_export_parity(tok, hf, texts):
  """Plain text as transformers encodes it; special-token text ("<s>", "<|endoftext|>") as it does with
  split_special_tokens=True (ours never reads it as the special token)."""
  for text in texts:
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False, split_special_tokens=True), text
    if "<" not in text:
      assert ids == hf.encode(text, add_special_tokens=False), text


def test_hf_export_of_every_kind_encodes_identically(every_kind, tmp_path):
  texts = TEXTS + random_texts(300) + ["a <|endoftext|> b <s> </s>"]
  for kind, tok in every_kind.items():
    out = tmp_path / "export" / kind
    save_hf_tokenizer(tok, out)
    hf = auto(out)
    assert_export_parity(tok, hf, texts)
    assert (hf.eos_token_id, hf.encode("a")[:1] == [hf.bos_token_id]) == (tok.eos_id, tok.add_bos), kind
    back = HFTokenizer(str(out))  # and our own loader reads the export the same way
    assert [back.encode(t) for t in texts] == [tok.encode(t) for t in texts], kind
    assert (back.eos_id, back.vocab_size) == (tok.eos_id, tok.vocab_size), kind
  assert auto(tmp_path / "export" / "byte").encode("é", add_special_tokens=False) == [0xC3, 0xA9]


@pytest.mark.parametrize("model_type", ["bpe", "char"])
def test_hf_export_of_other_sentencepiece_models(tmp_path, model_type):
  tok = trained_spm(tmp_path, model_type)
  save_hf_tokenizer(tok, tmp_path / "out")
  assert "tokenizer.json" in os.listdir(tmp_path / "out")
  assert_export_parity(tok, auto(tmp_path / "out"), TEXTS + random_texts(300, seed=1))


def test_hf_export_of_a_sentencepiece_model_it_cannot_convert(tmp_path):
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_LINES), model_prefix=str(tmp_path / "nfkc"),
                                 vocab_size=200, hard_vocab_limit=False, minloglevel=2)  # nmt_nfkc, strips spaces
  tok = SentencePieceTokenizer(str(tmp_path / "nfkc.model"))
  save_hf_tokenizer(tok, tmp_path / "out")
  assert sorted(os.listdir(tmp_path / "out")) == ["tokenizer.model", "tokenizer_config.json"]
  assert_export_parity(tok, auto(tmp_path / "out"), ["the  king\u00a0spoke ①", "ｆｕｌｌ width", "end ", *TEXTS])


def test_hf_export_of_tiktoken_with_the_cl100k_pattern(tmp_path):
  # cl100k splits digits in threes: "12345" -> "123", "45", so "345" must not be merged here
  tok = TiktokenTokenizer(write_tiktoken_file(tmp_path / "t.tiktoken", merged=(b"th", b"the", b" the", b"34", b"345")))
  assert tok.encode("12345") == [ord("1"), ord("2"), ord("3"), ord("4"), ord("5")]
  save_hf_tokenizer(tok, tmp_path / "out")
  assert_export_parity(tok, auto(tmp_path / "out"), TEXTS + random_texts(300, seed=2) + ["12345 1234567",
                                                                                         "it'S we'LL  \n\n x"])
