"""What every route shares: the engine, the served model's name, its tokenizer's text, the chat
prompts and the time limit of a request."""
from __future__ import annotations

import dataclasses
import time
import uuid

from research.serve.generation import Generation
from research.serve.protocol import RequestError
from research.serve.tokens import TokenText


@dataclasses.dataclass
class Served:
  engine: object                 # research.infer.engine.Engine (or a stand-in with its interface)
  model_name: str
  text: TokenText
  chat: object | None            # research.serve.chat.ChatPrompts; None: no chat template
  request_timeout_s: float

  @property
  def max_len(self) -> int:
    return self.engine.max_len

  def generation(self) -> Generation:
    return Generation(self.engine, time.monotonic() + self.request_timeout_s)

  def check_fits(self, ids: list[int], new_tokens: int, param: str) -> None:
    """A prompt must leave room for one new token (none when only scored)."""
    need = 1 if new_tokens > 0 else 0
    if not ids:
      raise RequestError(f"{param} is empty", param)
    if len(ids) + need > self.max_len:
      fit = "with one new token it must fit" if need else "it must fit"
      raise RequestError(f"{param} is {len(ids)} tokens; {fit} the model's context of {self.max_len} tokens",
                         param, code="context_length_exceeded")


  def check_choices(self, count: int, param: str) -> None:
    """A request whose choices outnumber the engine's queue could never be queued whole: a 400, not
    a 503 that retrying cannot cure."""
    limit = self.engine.max_queue
    if count > limit:
      raise RequestError(f"{param}: the request asks for {count} choices (prompts x n); this server queues at "
                         f"most {limit} (--max_queue); split it", param)


def response_id(prefix: str) -> str:
  return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}
