"""Generated token ids -> text as it comes, with stop strings: the text of each new token, held
back while it may be the start of a stop string (or an unfinished UTF-8 character), and cut where a
stop string begins (the stop string itself is not returned)."""
from __future__ import annotations

from typing import Sequence


class TextStream:

  def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
    self.tokenizer = tokenizer
    self.stop_strings = tuple(s for s in stop_strings if s)
    self.ids: list[int] = []
    self.emitted = 0      # characters of the decoded text already returned
    self.text = ""

  def push(self, token_id: int) -> tuple[str, bool]:
    """(the new text to show, whether a stop string ended the text)."""
    self.ids.append(int(token_id))
    if self.tokenizer is None:    # ids only (benchmarks of random-weight models)
      return "", False
    self.text = self.tokenizer.decode(self.ids)
    cut = self._stop_at()
    if cut is not None:
      delta = self.text[self.emitted:cut] if cut > self.emitted else ""
      self.emitted = max(self.emitted, cut)
      self.text = self.text[:cut]
      return delta, True
    safe = len(self.text) - self._held_back()
    delta = self.text[self.emitted:safe] if safe > self.emitted else ""
    self.emitted = max(self.emitted, safe)
    return delta, False

  def flush(self) -> str:
    """What was held back, at the end of a completion that no stop string ended."""
    delta = self.text[self.emitted:]
    self.emitted = len(self.text)
    return delta

  def _stop_at(self) -> int | None:
    hits = [i for i in (self.text.find(s) for s in self.stop_strings) if i >= 0]
    return min(hits) if hits else None

  def _held_back(self) -> int:
    """Characters at the end that may still become a stop string or a whole character."""
    if self.text.endswith("\ufffd"):   # a byte-level token that ends inside a UTF-8 character
      return len(self.text) - self.text.rstrip("\ufffd").__len__()
    best = 0
    for s in self.stop_strings:
      for n in range(min(len(s) - 1, len(self.text)), best, -1):
        if self.text.endswith(s[:n]):
          best = n
          break
    return best
