"""Text <-> token ids for the server: prompts, the pieces logprobs show, and the tokenizer endpoints
lm-evaluation-harness' `tokenizer_backend=remote` calls (vLLM's schemas: GET /tokenizer_info, POST
/tokenize, POST /detokenize), so an evaluation needs no tokenizer files of its own.

Special-token text ("</s>", "<|endoftext|>") reads as that token, as a Hugging Face tokenizer reads
it: lm-eval learns the EOS id by tokenizing the `eos_token` text /tokenizer_info gives. The names
are the tokenizer's own (a Hugging Face tokenizer's), or those its Hugging Face export writes
(hf_tokenizer.hf_files: "<eos>" for bytes, SentencePiece's pieces), so every kind has one.
"""
from __future__ import annotations

import re
from typing import Sequence

from research.data.corpus import DataError
from research.serve.protocol import Fields, RequestError

WINDOW = 4   # tokens decoded before one to find its text: a SentencePiece word start, a split character

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token")


def _special_names(tokenizer) -> dict[str, str | None]:
  named = getattr(tokenizer, "special_tokens", None)
  if named is None:
    import json
    from research.data.hf_tokenizer import hf_files
    try:
      named = json.loads(hf_files(tokenizer)["tokenizer_config.json"])
    except (DataError, KeyError):   # a kind without an export: its specials have no text
      named = {}
  return {k: named.get(k) for k in SPECIAL_KEYS}


class TokenText:
  """The tokenizer as the server uses it: encode with special-token text, decode, token pieces."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.names = _special_names(tokenizer)
    self.specials: dict[str, int] = {}
    for key, id_ in (("pad_token", tokenizer.pad_id), ("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
      if self.names[key]:
        self.specials[self.names[key]] = int(id_)    # EOS last: it wins where kinds share one text
    self.specials.update(getattr(tokenizer, "special_token_ids", None) or {})
    self.labels = {i: t for t, i in self.specials.items()}
    self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")") \
        if self.specials else None

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, special-token text as those tokens; no BOS added."""
    encode_marked = getattr(self.tokenizer, "encode_with_special_tokens", None)
    if encode_marked is not None:
      return list(encode_marked(text))
    if self._split is None:
      return list(self.tokenizer.encode(text))
    ids = []
    for i, part in enumerate(self._split.split(text)):
      ids += [self.specials[part]] if i % 2 else (list(self.tokenizer.encode(part)) if part else [])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def decode_marked(self, ids: Sequence[int]) -> str:
    """Text with special tokens as their text ("</s>"): what encode() reads back as the same ids
    (each run between specials decoded on its own, as encode encodes it)."""
    out, run = [], []
    for i in ids:
      if int(i) in self.labels:
        out += [self.decode(run), self.labels[int(i)]]
        run = []
      else:
        run.append(int(i))
    return "".join(out) + self.decode(run)

  def document_start(self) -> list[int]:
    """What precedes a document in training (EOS ends the one before; BOS when the model expects it):
    the prompt an empty prompt stands for."""
    return [self.tokenizer.eos_id] + ([self.tokenizer.bos_id] if self.tokenizer.add_bos else [])

  def piece(self, context: Sequence[int], token: int) -> str:
    """The text `token` adds after `context` (a SentencePiece word's leading space included)."""
    window = [int(i) for i in context[-WINDOW:]]
    before, after = self.decode(window), self.decode(window + [int(token)])
    keep = before.rstrip("\ufffd")        # an unfinished character the token may complete
    return after[len(keep):] if after.startswith(keep) else after

  def pieces(self, ids: Sequence[int], context: Sequence[int] = ()) -> list[str]:
    ids, context = [int(i) for i in ids], [int(i) for i in context]
    full = context + ids
    return [self.piece(full[:len(context) + k], t) for k, t in enumerate(ids)]

  def label(self, token: int, piece: str) -> str:
    """How logprobs show a token: its piece, or a special token's name (it decodes to nothing)."""
    return self.labels.get(int(token), piece)


# -- the tokenizer endpoints (vLLM's schemas, which lm-eval's RemoteTokenizer reads) --------------------

def tokenizer_info(text: TokenText, max_len: int, chat_template: str | None) -> dict:
  tok = text.tokenizer
  return {
      "tokenizer_class": type(tok).__name__,
      "eos_token": text.names["eos_token"],
      # Only a model that expects BOS has one: lm-eval puts bos_token (else eos_token) before an
      # empty context, and our models without add_bos saw EOS there in training.
      "bos_token": text.names["bos_token"] if tok.add_bos else None,
      "pad_token": text.names["pad_token"],
      "eos_token_id": int(tok.eos_id), "bos_token_id": int(tok.bos_id) if tok.add_bos else None,
      "pad_token_id": int(tok.pad_id), "add_bos_token": bool(tok.add_bos),
      "vocab_size": int(tok.vocab_size), "model_max_length": int(max_len),
      "chat_template": chat_template,
  }


def tokenize(body: dict, text: TokenText, max_len: int, chat_prompt) -> dict:
  """{"prompt": str, "add_special_tokens": true} or {"messages": [...], "add_generation_prompt": true}
  -> {"count", "max_model_len", "tokens", "token_strs"}. `chat_prompt(body)` renders messages."""
  fields = Fields(body)
  return_strs = fields.boolean("return_token_strs", False)
  if fields.has("messages"):
    ids = chat_prompt(body)
  else:
    prompt = fields.string("prompt")
    if prompt is None:
      raise RequestError("give prompt (a string) or messages", "prompt", code="missing")
    ids = text.encode(prompt)
    if fields.boolean("add_special_tokens", True) and text.tokenizer.add_bos:
      ids = [text.tokenizer.bos_id] + ids
  out = {"count": len(ids), "max_model_len": max_len, "tokens": ids, "token_strs": None}
  if return_strs:
    out["token_strs"] = [text.label(t, p) for t, p in zip(ids, text.pieces(ids))]
  return out


def detokenize(body: dict, text: TokenText) -> dict:
  """{"tokens": [ids]} -> {"prompt": text}, special tokens written as their text: lm-eval's
  tokenized_requests=False sends this text back as the prompt (an empty context's EOS prefix)."""
  fields = Fields(body)
  if not fields.has("tokens"):
    raise RequestError("give tokens (an array of token ids)", "tokens", code="missing")
  return {"prompt": text.decode_marked(fields.token_ids("tokens", text.vocab_size))}
