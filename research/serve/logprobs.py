"""Log-probabilities in the two formats OpenAI returns them: completions' {tokens, token_logprobs,
top_logprobs, text_offset} and chat's {content: [{token, logprob, bytes, top_logprobs}]}.

A token is shown as the text it adds after the tokens before it (TokenText.piece), a special token
by its name; alternatives likewise, after the same context. `Tokens` keeps a choice's context and
text offset across the chunks of a stream, so streamed and whole responses show the same entries.
"""
from __future__ import annotations

from typing import Sequence

from research.serve.tokens import TokenText


class Tokens:
  """One choice's tokens as they come: context (the ids before) and the text offset reached."""

  def __init__(self, text: TokenText, context: Sequence[int] = (), offset: int = 0):
    self.text, self.context, self.offset = text, [int(i) for i in context], offset

  def completion(self, ids: Sequence[int], logprobs: Sequence[float | None],
                 tops: Sequence[dict[int, float] | None]) -> dict:
    """Completions' logprobs of `ids` (then part of the context); `tops` may be shorter (none asked)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for k, token in enumerate(ids):
      piece = self.text.piece(self.context, token)
      top = tops[k] if k < len(tops) else {}
      out["tokens"].append(self.text.label(token, piece))
      out["token_logprobs"].append(logprobs[k])
      out["top_logprobs"].append(None if top is None else self._alternatives(top))
      out["text_offset"].append(self.offset)
      self.offset += len(piece)
      self.context.append(int(token))
    return out

  def chat(self, ids: Sequence[int], logprobs: Sequence[float], tops: Sequence[dict[int, float]]) -> list[dict]:
    """Chat's logprobs content entries of `ids`."""
    out = []
    for k, token in enumerate(ids):
      piece = self.text.piece(self.context, token)
      label = self.text.label(token, piece)
      alternatives = self._alternatives(tops[k] if k < len(tops) else {})
      out.append({**_entry(label, logprobs[k]),
                  "top_logprobs": [_entry(t, lp) for t, lp in sorted(alternatives.items(), key=lambda x: -x[1])]})
      self.offset += len(piece)
      self.context.append(int(token))
    return out

  def _alternatives(self, top: dict[int, float]) -> dict[str, float]:
    out = {}   # two ids with one text (rare) keep the likelier's log-probability
    for alt, lp in top.items():
      label = self.text.label(alt, self.text.piece(self.context, alt))
      out[label] = max(lp, out.get(label, lp))
    return out


def _entry(token: str, logprob: float) -> dict:
  return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def merge(parts: list[dict]) -> dict | None:
  """Completions' logprobs of consecutive parts (the echoed prompt, then what was generated) as one."""
  if not parts:
    return None
  return {key: [x for part in parts for x in part[key]] for key in parts[0]}
