"""Hugging Face tokenizer directories, as models ship them: read one (HFTokenizer), write one (hf_files).

A directory holds `tokenizer.json` (run by the `tokenizers` library), else GPT-2 style `vocab.json` +
`merges.txt` (bpe_tokenizers.GPT2BPETokenizer), else a SentencePiece `tokenizer.model`; beside it
`tokenizer_config.json` / `special_tokens_map.json` name the bos/eos/pad tokens, and a chat template
may sit in `chat_template.jinja` or the config. transformers is never imported: the tests compare
with it.

- encode() adds no special tokens and reads special-token text in a document ("<|endoftext|>") as
  ordinary text, as the other kinds do, so a corpus cannot forge a document boundary
  (transformers' `split_special_tokens=True`). `add_bos` says whether the model expects BOS first:
  for tokenizer.json whether its post-processor puts bos first (what transformers 5 does), else
  `add_bos_token` in tokenizer_config.json.
- encode_with_special_tokens() reads special-token text as those tokens: a chat template's markup
  ("<|im_start|>", "</s>"), which transformers' apply_chat_template tokenizes so too.
- A tokenizer.json is read as it is; transformers 5 rebuilds some classes' pipelines itself
  (LlamaTokenizer puts no "▁" before a text that starts with a space, where the file and
  SentencePiece do), so on such texts ours follows the file.
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

from research.data.bpe_tokenizers import ENDOFTEXT, PATTERNS, _digest
from research.data.corpus import DataError

# Every file of a directory the tokenizer reads or keeps; copied verbatim and fingerprinted.
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "tokenizer.model", "chat_template.jinja")
LAYOUTS = "tokenizer.json, vocab.json + merges.txt, or tokenizer.model"
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class HFTokenizer:
  kind = "hf"

  def __init__(self, directory: str):
    if not os.path.isdir(directory):
      raise DataError(f"data.tokenizer_dir={directory}: no such directory (a Hugging Face tokenizer "
                      f"directory holds {LAYOUTS})")
    self.directory = directory
    self.files = [n for n in HF_FILES if os.path.isfile(os.path.join(directory, n))]
    path = lambda name: os.path.join(directory, name)
    config = _read_json(path("tokenizer_config.json"))
    named = _special_tokens(config, _read_json(path("special_tokens_map.json")), directory)
    self._backend = _open_backend(directory, self.files, config, named.get("eos_token"))
    named = {**self._backend.defaults, **{k: v for k, v in named.items() if v}}
    added = _added_tokens(config, directory)  # transformers gives them these ids too
    lookup = lambda token: added[token][0] if token in added else self._backend.token_id(token)
    ids = {k: lookup(named[k]) if named.get(k) else None for k in SPECIAL_KEYS}
    if ids["eos_token"] is None:
      raise DataError(f"{path(self._backend.file)}: eos_token {named['eos_token']!r} is not in the vocabulary; the "
                      "EOS token ends every document" if named.get("eos_token") else
                      f"{path('tokenizer_config.json')}: no eos_token (nor in special_tokens_map.json or "
                      f"{self._backend.file}); the EOS token ends every document")
    if self._backend.post_processor_bos is not False:  # tokenizer.json decides, as in transformers 5
      first = self._backend.post_processor_bos  # with no bos_token named, what it puts first is BOS
      ids["bos_token"] = first if ids["bos_token"] is None else ids["bos_token"]
      self.add_bos = first is not None and first == ids["bos_token"]
    else:
      self.add_bos = bool(config.get("add_bos_token", False))
      if self.add_bos and ids["bos_token"] is None:
        raise DataError(f"{path('tokenizer_config.json')}: add_bos_token is set but bos_token "
                        f"{named.get('bos_token')!r} is not in the vocabulary")
    self.eos_id = ids["eos_token"]
    self.bos_id = self.eos_id if ids["bos_token"] is None else ids["bos_token"]
    self.pad_id = self.eos_id if ids["pad_token"] is None else ids["pad_token"]
    self.vocab_size = 1 + max([self._backend.size - 1, *(i for i, _ in added.values()),
                               *(i for i in ids.values() if i is not None)])
    self._skip = {self.bos_id, self.eos_id, self.pad_id, *(i for i, special in added.values() if special)}
    self.chat_template = _chat_template(config, directory)
    self.special_tokens = {k: named.get(k) for k in SPECIAL_KEYS}  # their text: chat templates read them
    # Each special token's text -> its id: what a chat template's markup means.
    self.special_token_ids = {**{named[k]: i for k, i in ids.items() if named.get(k) and i is not None},
                              **self._backend.special_token_ids, **{t: i for t, (i, s) in added.items() if s}}
    parts = []
    for name in self.files:
      with open(path(name), "rb") as f:
        parts += [name.encode(), f.read()]
    self.fingerprint = "hf-" + _digest(*parts)

  def encode(self, text: str) -> list[int]:
    return self._backend.encode(text)

  def encode_with_special_tokens(self, text: str) -> list[int]:
    """encode(), except that the text of a special token is that token (a chat template's markup)."""
    if hasattr(self._backend, "encode_with_special_tokens"):
      return self._backend.encode_with_special_tokens(text)
    if not self.special_token_ids:
      return self.encode(text)
    ids = []  # split at special tokens (longest first), the text between encoded as ordinary text
    pattern = "|".join(re.escape(t) for t in sorted(self.special_token_ids, key=len, reverse=True))
    for i, part in enumerate(re.split(f"({pattern})", text)):
      ids += [self.special_token_ids[part]] if i % 2 else (self.encode(part) if part else [])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._backend.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._skip])

  def __getstate__(self):  # picklable for data-loader worker processes: reload from the files
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])


def _open_backend(directory: str, files: list[str], config: dict, eos_token: str | None):
  path = lambda name: os.path.join(directory, name)
  if "tokenizer.json" in files:
    return _TokenizerJson(path("tokenizer.json"))
  if "vocab.json" in files and "merges.txt" in files:
    if config.get("add_prefix_space"):
      raise DataError(f"{path('tokenizer_config.json')}: add_prefix_space=true is not supported (decode would "
                      "not give the text back); only GPT-2's add_prefix_space=false")
    return _GPT2Files(path("vocab.json"), path("merges.txt"), eos_token or ENDOFTEXT)
  if "tokenizer.model" in files:
    return _SentencePieceModel(path("tokenizer.model"))
  raise DataError(f"data.tokenizer_dir={directory}: no tokenizer file there; looked for {LAYOUTS}")


class _TokenizerJson:
  file = "tokenizer.json"

  def __init__(self, path: str):
    from tokenizers import Tokenizer
    try:
      self._tok = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises its own exception type
      raise DataError(f"{path}: not a tokenizers file ({str(e).splitlines()[0]})") from None
    self._tok.no_truncation()  # a file may ship truncation/padding for its model's context
    self._tok.no_padding()
    self._markup = Tokenizer.from_str(self._tok.to_str())  # the same, reading special-token text as the token
    self._tok.encode_special_tokens = True  # special-token text is ordinary text
    self.size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
    self.defaults = {}
    self.special_token_ids = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    # The id the post-processor puts before a text (None: none; False: there is no post-processor).
    self.post_processor_bos = False
    if self._tok.post_processor is not None:
      with_special = self._tok.encode("a", add_special_tokens=True).ids
      plain = self._tok.encode("a", add_special_tokens=False).ids
      self.post_processor_bos = with_special[0] if with_special[1:len(plain) + 1] == plain else None

  def token_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_with_special_tokens(self, text: str) -> list[int]:
    return self._markup.encode(text, add_special_tokens=False).ids

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode([i for i in ids if i < self.size], skip_special_tokens=True)


class _GPT2Files:
  post_processor_bos = False
  file = "vocab.json"
  special_token_ids: dict = {}

  def __init__(self, vocab_file: str, merges_file: str, eos_token: str):
    from research.data.bpe_tokenizers import GPT2BPETokenizer
    self._tok = GPT2BPETokenizer(vocab_file, merges_file, eos_token=eos_token)
    self.size = self._tok.vocab_size
    self.defaults = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}

  def token_id(self, token: str) -> int | None:
    return self._tok._tok.token_to_id(token)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids)


class _SentencePieceModel:
  post_processor_bos = False
  file = "tokenizer.model"

  def __init__(self, path: str):
    import sentencepiece as spm
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      raise DataError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
    self.size = self._sp.get_piece_size()
    ids = {"bos_token": self._sp.bos_id(), "eos_token": self._sp.eos_id(), "pad_token": self._sp.pad_id(),
           "unk_token": self._sp.unk_id()}
    self.defaults = {k: self._sp.id_to_piece(i) for k, i in ids.items() if i >= 0}
    self.special_token_ids = {self._sp.id_to_piece(i): i for i in range(self.size)
                              if self._sp.is_control(i) or self._sp.is_unknown(i)}

  def token_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)  # the unknown id for a piece it lacks
    return i if self._sp.id_to_piece(i) == token else None

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode([i for i in ids if i < self.size])


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
  return value


def _content(token, key: str, directory: str) -> str | None:
  """A token as tokenizer_config.json writes it: a string, {"content": ...} (AddedToken), or null."""
  if token is None or isinstance(token, str):
    return token
  if isinstance(token, dict) and isinstance(token.get("content"), str):
    return token["content"]
  raise DataError(f"{os.path.join(directory, 'tokenizer_config.json')}: {key}={token!r} is neither a string "
                  "nor {\"content\": ...}")


def _added_tokens(config: dict, directory: str) -> dict[str, tuple[int, bool]]:
  """tokenizer_config.json's added_tokens_decoder, {"id": {"content": ..., "special": ...}}, as
  {content: (id, special)}."""
  added = {}
  for i, token in (config.get("added_tokens_decoder") or {}).items():
    content = _content(token, f"added_tokens_decoder[{i!r}]", directory)
    if not str(i).isdigit() or content is None:
      raise DataError(f"{os.path.join(directory, 'tokenizer_config.json')}: added_tokens_decoder[{i!r}]={token!r} "
                      "is not an id with a token")
    added[content] = (int(i), isinstance(token, dict) and bool(token.get("special")))
  return added


def _special_tokens(config: dict, special_map: dict, directory: str) -> dict[str, str | None]:
  """bos/eos/pad/unk token strings: tokenizer_config.json's, else special_tokens_map.json's."""
  return {k: _content(config.get(k), k, directory) or _content(special_map.get(k), k, directory)
          for k in SPECIAL_KEYS}


def _chat_template(config: dict, directory: str) -> str | None:
  """chat_template.jinja beside the config wins (transformers 5 writes it); else the config's string,
  or from its list of named templates the one named "default"."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):
    template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                    None)
  elif isinstance(template, dict):
    template = template.get("default")
  return template if isinstance(template, str) else None


# ------------------------------------------------------------------------------------------- export

def hf_files(tokenizer) -> dict[str, bytes]:
  """Files that transformers' AutoTokenizer.from_pretrained loads without remote code and that encode
  as `tokenizer` does (add_special_tokens=False; special-token text aside, see the module docstring):
  hf: its files verbatim; bpe: vocab.json + merges.txt (GPT2Tokenizer); byte, tiktoken and
  sentencepiece: a tokenizer.json built with `tokenizers` (sentencepiece also keeps tokenizer.model, and
  a model outside what the conversion reproduces exactly ships only that, for transformers 5's
  SentencePieceBackend, which runs sentencepiece itself)."""
  kind = tokenizer.kind
  if kind == "hf":
    return {n: _read(os.path.join(tokenizer.directory, n)) for n in tokenizer.files}
  if kind == "bpe":
    eos = tokenizer._tok.id_to_token(tokenizer.eos_id)
    return {"vocab.json": _read(tokenizer.vocab_file), "merges.txt": _read(tokenizer.merges_file),
            **_config("GPT2Tokenizer", eos, eos, eos, eos, add_prefix_space=False, errors="replace")}
  if kind == "byte":
    names = {"<bos>": tokenizer.bos_id, "<eos>": tokenizer.eos_id, "<pad>": tokenizer.pad_id}
    tok = _byte_level({bytes([b]): b for b in range(256)}, [], names, pattern=None)
    return {"tokenizer.json": tok.to_str().encode(), **_config("PreTrainedTokenizerFast", *names, None)}
  if kind == "tiktoken":
    merges = [_split(tokenizer.ranks, token, rank) for token, rank in sorted(tokenizer.ranks.items(),
                                                                            key=lambda kv: kv[1]) if len(token) > 1]
    tok = _byte_level(tokenizer.ranks, merges, {ENDOFTEXT: tokenizer.eos_id}, pattern=PATTERNS[tokenizer.pattern])
    return {"tokenizer.json": tok.to_str().encode(),
            **_config("PreTrainedTokenizerFast", ENDOFTEXT, ENDOFTEXT, ENDOFTEXT, ENDOFTEXT)}
  if kind == "sentencepiece":
    return _sentencepiece_files(tokenizer)
  raise DataError(f"data.tokenizer={kind!r}: no Hugging Face export; one of byte, sentencepiece, bpe, tiktoken, hf")


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _config(cls: str, bos, eos, pad, unk, **extra) -> dict[str, bytes]:
  config = {"tokenizer_class": cls, "bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk,
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False, **extra}
  config = {k: v for k, v in config.items() if v is not None}
  return {"tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()}


def _byte_chars() -> dict[int, str]:
  """GPT-2's bytes_to_unicode: each byte as a printable character (byte-level BPE's alphabet)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _split(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
  """The two tokens tiktoken merges into `token`: its byte-pair merge run with the ranks below it."""
  parts = [bytes([b]) for b in token]
  while len(parts) > 2:
    pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
    i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
    if pair_ranks[i] >= rank:
      break
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
  if len(parts) != 2:
    raise DataError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens; "
                    "no tokenizer.json export for data.tokenizer=tiktoken")
  return parts[0], parts[1]


def _byte_level(ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]], specials: dict[str, int],
                pattern: str | None):
  """A byte-level BPE: `ranks` are the ids; tiktoken's rule that a piece in the vocabulary is one token
  is `ignore_merges`. Oniguruma (tokenizers' regex engine) reads `{1,3}+` as a repeat, not possessive,
  so that one is written as the atomic group it means."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
  chars = _byte_chars()
  text = lambda token: "".join(chars[b] for b in token)
  tok = Tokenizer(models.BPE({text(t): i for t, i in ranks.items()}, [(text(a), text(b)) for a, b in merges],
                             ignore_merges=True))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pattern is None)
  if pattern is None:
    tok.pre_tokenizer = byte_level
  else:
    split = pre_tokenizers.Split(Regex(pattern.replace(r"\p{N}{1,3}+", r"(?>\p{N}{1,3})")), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
  tok.decoder = decoders.ByteLevel()
  for name, i in sorted(specials.items(), key=lambda kv: kv[1]):
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    assert tok.token_to_id(name) == i, (name, i, tok.token_to_id(name))
  return tok


def _sentencepiece_files(tokenizer) -> dict[str, bytes]:
  from sentencepiece import sentencepiece_model_pb2
  raw = _read(tokenizer.model_file)
  proto = sentencepiece_model_pb2.ModelProto.FromString(raw)
  piece = lambda i: proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None
  names = [piece(tokenizer.bos_id), piece(tokenizer.eos_id), piece(tokenizer.pad_id), piece(proto.trainer_spec.unk_id)]
  files = {"tokenizer.model": raw}
  tok = _sentencepiece_json(proto)
  if tok is None:
    return {**files, **_config("SentencePieceBackend", *names)}
  return {**files, "tokenizer.json": tok.to_str().encode(), **_config("PreTrainedTokenizerFast", *names)}


def _sentencepiece_json(proto):
  """SentencePiece's encoding as a tokenizers pipeline, or None for a model it does not reproduce exactly.

  The dummy "▁" is a Prepend normalizer, not Metaspace (which adds none before a leading space); the
  "\\n" user symbol stays a plain piece (as an added token it would split the text, and each part would
  get its own "▁"); BPE merges are ordered by the merged piece's score, as transformers converts them.
  Reproduced: identity normalisation without removing whitespace, unigram / bpe / char models,
  single-character user symbols; the tests compare on random text."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
  NORMAL, CONTROL_OR_UNKNOWN, USER, UNUSED = 1, (2, 3), 4, 5
  spec, norm = proto.trainer_spec, proto.normalizer_spec
  if (spec.model_type not in (1, 2, 4) or norm.name != "identity" or norm.remove_extra_whitespaces
      or not norm.escape_whitespaces or spec.treat_whitespace_as_suffix
      or any(p.type == UNUSED or p.type == USER and len(p.piece) != 1 for p in proto.pieces)):
    return None
  pieces = [(p.piece, p.score) for p in proto.pieces]
  if spec.model_type == 2:  # BPE
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    normal = {p.piece for p in proto.pieces if p.type == NORMAL}
    merges = []
    for p, score in pieces:
      if p in normal:
        pairs = [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal]
        merges += [(a, b, score) for a, b in sorted(pairs, key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    model = models.BPE(vocab, [(a, b) for a, b, _ in merges], unk_token=spec.unk_piece, fuse_unk=True,
                       byte_fallback=spec.byte_fallback)
  else:  # unigram; a char model is a unigram one whose pieces are single characters
    # SentencePiece never matches byte (<0x41>) or control (<s>) pieces in the text; scored below any
    # path of normal pieces over the same characters, Viterbi does not choose them either.
    low = min(p.score for p in proto.pieces if p.type == NORMAL)
    pieces = [(p.piece, p.score if p.type in (NORMAL, USER) else low * (len(p.piece) + 1) - 100)
              for p in proto.pieces]
    model = models.Unigram(pieces, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
  tok = Tokenizer(model)
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁")] * norm.add_dummy_prefix
                                        + [normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                  + [decoders.Strip(" ", 1, 0)] * norm.add_dummy_prefix)
  tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                          for p in proto.pieces if p.type in CONTROL_OR_UNKNOWN])
  return tok
