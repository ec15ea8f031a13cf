"""One HTTP request's engine requests (one per choice) and their events, on the event loop.

The engine calls `on_event` from its decode thread; each call is handed to the loop with
call_soon_threadsafe into this request's asyncio.Queue, so no handler ever blocks the loop waiting
for tokens and the events of a choice arrive in the order the engine made them. The request's
deadline is the engine's (it ends running requests there) and the loop's too: a request still
waiting in the engine's queue at its deadline is cancelled here and ends with "timeout".
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator

from research.infer.engine import Event, QueueFull, SamplingParams
from research.serve.protocol import RequestError, Sampling, sample_seed

DISCONNECT_POLL_S = 0.5


@dataclasses.dataclass
class Choice:
  """A choice's events joined: what a non-streamed response reports."""
  token_ids: list[int] = dataclasses.field(default_factory=list)
  text: str = ""
  logprobs: list[float] = dataclasses.field(default_factory=list)
  top_logprobs: list[dict[int, float]] = dataclasses.field(default_factory=list)
  finish_reason: str | None = None

  def add(self, event: Event) -> None:
    self.token_ids += event.token_ids
    self.text += event.text
    self.logprobs += event.logprobs
    self.top_logprobs += event.top_logprobs
    self.finish_reason = event.finish_reason or self.finish_reason


def engine_params(sampling: Sampling, max_new_tokens: int, logprobs: int | None, sample: int) -> SamplingParams:
  """The engine's settings for a request's sample-th choice of a prompt."""
  return SamplingParams(max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                        top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                        stop_token_ids=sampling.stop_token_ids, stop_strings=sampling.stop,
                        seed=sample_seed(sampling.seed, sample), logprobs=logprobs or 0,
                        ignore_eos=sampling.ignore_eos)


def check_finished(choice_index: int, finish_reason: str | None) -> None:
  """An engine failure is the server's (500), not a finish reason to hand the client."""
  if finish_reason == "error":
    raise RequestError(f"choice {choice_index}: the engine's decode step failed (the server log has why)",
                       code="internal_error", status=500, type="server_error")


class Generation:

  def __init__(self, engine, deadline: float):
    self.engine, self.deadline = engine, deadline        # deadline: time.monotonic(), as the engine's
    self.loop = asyncio.get_running_loop()
    self.queue: asyncio.Queue = asyncio.Queue()
    self.handles, self.running = [], set()

  def submit(self, index: int, prompt: list[int], params) -> None:
    """Queues choice `index` in the engine; a full queue cancels the ones already queued (503)."""
    def on_event(event: Event) -> None:   # the engine's thread
      try:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
      except RuntimeError:   # the loop has closed: the server is shutting down
        pass
    try:
      self.handles.append(self.engine.submit(prompt, params, on_event, deadline=self.deadline))
    except QueueFull as e:
      self.cancel()
      raise RequestError(f"the server is busy ({e}); retry later", code="queue_full", status=503,
                         type="server_error") from None
    except ValueError as e:      # the protocol checks come first; this is the engine's last word
      self.cancel()
      raise RequestError(str(e), "prompt") from None
    self.running.add(index)

  def cancel(self) -> None:
    for handle in self.handles:
      handle.cancel()

  async def events(self) -> AsyncIterator[tuple[int, Event]]:
    """(choice index, event) until every choice has finished. At the deadline the unfinished ones
    are cancelled and end with a "timeout" event (their text so far stays theirs)."""
    while self.running:
      try:
        index, event = await asyncio.wait_for(self.queue.get(), max(0.0, self.deadline - time.monotonic()))
      except TimeoutError:
        self.cancel()
        for index in sorted(self.running):
          yield index, Event([], "", [], [], "timeout")
        self.running.clear()
        return
      if index in self.running:
        if event.finish_reason is not None:
          self.running.discard(index)
        yield index, event

  async def collect(self, request, num_choices: int) -> list[Choice]:
    """Every choice joined, for a non-streamed response; a client that disconnects cancels them."""
    watcher = asyncio.create_task(self._cancel_on_disconnect(request))
    choices = [Choice() for _ in range(num_choices)]
    try:
      async for index, event in self.events():
        choices[index].add(event)
    finally:
      watcher.cancel()
      self.cancel()    # finished requests ignore it; unfinished ones (an error here) stop
    return choices

  async def _cancel_on_disconnect(self, request) -> None:
    while not await request.is_disconnected():
      await asyncio.sleep(DISCONNECT_POLL_S)
    self.cancel()
