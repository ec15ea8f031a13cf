"""Published byte-level BPE vocabularies read from local files (nothing is ever downloaded).

- GPT2BPETokenizer: GPT-2 style `vocab.json` + `merges.txt`, run by Hugging Face `tokenizers`.
- TiktokenTokenizer: a `.tiktoken` file (lines "<base64 token> <rank>"), run by `tiktoken`.

Both follow the `Tokenizer` protocol of research.data.tokenizers. `<|endoftext|>` is the only
special token and serves as BOS, EOS and PAD, as in GPT-2 (hf_tokenizer.py names another one for
GPT-2 style files whose tokenizer_config.json says so). encode() treats the text
"<|endoftext|>" in a document as ordinary text, so a corpus can never forge a document boundary;
decode() drops special and out-of-range ids, as ByteTokenizer does.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Sequence

from research.data.corpus import DataError

ENDOFTEXT = "<|endoftext|>"

# Pre-tokenizer regexes, copied from tiktoken_ext/openai_public.py (r50k_base is GPT-2's pattern
# in a faster, equivalent form; cl100k_base is GPT-3.5/4's). The test checks they still match.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}


def _read_bytes(path: str, key: str) -> bytes:
  if not os.path.isfile(path):
    raise DataError(f"{key}={path}: no such file")
  with open(path, "rb") as f:
    return f.read()


def _digest(*parts: bytes) -> str:
  h = hashlib.sha256()
  for part in parts:  # length-prefixed, so moving bytes from one part to the next changes the hash
    h.update(len(part).to_bytes(8, "little") + part)
  return h.hexdigest()[:16]


class GPT2BPETokenizer:
  kind = "bpe"
  add_bos, chat_template = False, None

  def __init__(self, vocab_file: str, merges_file: str, eos_token: str = ENDOFTEXT):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab_bytes = _read_bytes(vocab_file, "data.bpe_vocab_file")
    merges_bytes = _read_bytes(merges_file, "data.bpe_merges_file")
    vocab = _parse_vocab(vocab_bytes, vocab_file)
    if eos_token not in vocab:
      raise DataError(f"{vocab_file}: no {eos_token} token, which GPT-2 vocabularies use as BOS/EOS")
    self.vocab_file, self.merges_file = vocab_file, merges_file
    # Without all 256 byte symbols, BPE (which has no unknown token here) silently drops text.
    missing = set(pre_tokenizers.ByteLevel.alphabet()) - set(vocab)
    if missing:
      raise DataError(f"{vocab_file}: lacks {len(missing)} of the 256 byte-level symbols "
                      f"(e.g. {sorted(missing)[0]!r}); is it a byte-level BPE vocabulary?")
    try:
      model = models.BPE.from_file(vocab_file, merges_file)
    except Exception as e:  # the vocab was checked above, so what is left is the merges file
      raise DataError(f"{merges_file}: {str(e).splitlines()[0]}") from None
    self._tok = Tokenizer(model)
    # use_regex=True is GPT-2's split; no prefix space, so decode(encode(s)) == s exactly.
    self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    self._tok.decoder = decoders.ByteLevel()
    # <|endoftext|> stays a plain vocab entry, not an added token: added tokens would be matched
    # in the input text. The byte-level split never lets BPE see it whole, so only we emit it.
    self.bos_id = self.eos_id = self.pad_id = vocab[eos_token]
    self.vocab_size = max(vocab.values()) + 1
    self.fingerprint = "bpe-" + _digest(vocab_bytes, merges_bytes)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    keep = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) != self.eos_id]
    return self._tok.decode(keep, skip_special_tokens=False)


def _parse_vocab(raw: bytes, vocab_file: str) -> dict[str, int]:
  try:
    vocab = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{vocab_file}: not valid JSON ({e})") from None
  if not isinstance(vocab, dict) or not vocab:
    raise DataError(f"{vocab_file}: expected a JSON object {{token: id}}, got {type(vocab).__name__}")
  for token, i in vocab.items():
    if type(i) is not int or i < 0:
      raise DataError(f"{vocab_file}: token {token!r} has id {i!r}; ids must be integers >= 0")
  if len(set(vocab.values())) != len(vocab):
    raise DataError(f"{vocab_file}: two tokens share an id")
  return vocab


class TiktokenTokenizer:
  kind = "tiktoken"
  add_bos, chat_template = False, None

  def __init__(self, path: str, pattern: str = "cl100k"):
    import tiktoken
    if pattern not in PATTERNS:
      raise DataError(f"data.tiktoken_pattern={pattern!r}: choose one of {', '.join(PATTERNS)}")
    raw = _read_bytes(path, "data.tiktoken_file")
    ranks = _parse_tiktoken(raw, path)
    self.path, self.pattern, self.ranks = path, pattern, ranks
    # Ranks 0..n-1 come first, then the special token, as in r50k_base (<|endoftext|> = 50256).
    self.bos_id = self.eos_id = self.pad_id = len(ranks)
    self.vocab_size = len(ranks) + 1
    self._enc = tiktoken.Encoding(f"local:{os.path.basename(path)}", pat_str=PATTERNS[pattern],
                                  mergeable_ranks=ranks, special_tokens={ENDOFTEXT: self.eos_id})
    self.fingerprint = "tiktoken-" + _digest(raw, PATTERNS[pattern].encode())

  def encode(self, text: str) -> list[int]:
    # Same as encode(text, disallowed_special=()): special-token text is ordinary text.
    return self._enc.encode_ordinary(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self.eos_id], errors="replace")


def _parse_tiktoken(raw: bytes, path: str) -> dict[bytes, int]:
  """The format of tiktoken.load.load_tiktoken_bpe, parsed here because that function caches a
  local file under a key made from its *path*, so an edited file would load stale."""
  ranks: dict[bytes, int] = {}
  for line_no, line in enumerate(raw.splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    try:
      if len(parts) != 2:
        raise ValueError
      token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
    except (ValueError, binascii.Error):
      raise DataError(f"{path}:{line_no}: expected '<base64 token> <rank>', got {line[:60]!r}") from None
    if not token or token in ranks:
      raise DataError(f"{path}:{line_no}: token {token!r} is empty or listed twice")
    ranks[token] = rank
  if not ranks:
    raise DataError(f"{path}: holds no tokens")
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise DataError(f"{path}: the ranks are not 0..{len(ranks) - 1}, each once")
  # tiktoken cannot encode a byte that has no token of its own (it panics), so check up front.
  missing = [b for b in range(256) if bytes([b]) not in ranks]
  if missing:
    raise DataError(f"{path}: no token for {len(missing)} of the 256 single bytes (e.g. byte {missing[0]})")
  return ranks
