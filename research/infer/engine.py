"""`Engine`: continuous batching over a SlotDecoder. Requests wait in a bounded queue; at every
step the free slots take the oldest waiting requests (one prefill for all of them), then every
running request gets its next token from one decode step; a finished request leaves its slot at
once. A background thread runs the loop for the server; `generate` runs the same loop in the
caller's thread for offline use (scripts/generate.py, the samples at the end of training).

Each token reaches the request's `on_event` as an Event (token id, text delta, log-probability,
top alternatives; the last carries finish_reason): "stop" (EOS, a stop token or a stop string),
"length" (max_new_tokens, max_length or the context), "timeout" (its deadline), "cancelled", or
"error" (the device step failed: every running request ends so, and the engine keeps serving).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Sequence

import numpy as np

from research.infer.decoder import SlotDecoder
from research.infer.sampling import RowSampling
from research.infer.text_stream import TextStream

log = logging.getLogger(__name__)


class QueueFull(Exception):
  """The engine's queue of waiting requests is full (the server answers 503)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  max_new_tokens: int = 16
  temperature: float = 1.0          # 0: greedy
  top_k: int = 0                    # 0: off
  top_p: float = 1.0                # 1: off
  repetition_penalty: float = 1.0   # 1: off
  stop_token_ids: tuple[int, ...] = ()   # besides the tokenizer's EOS (unless ignore_eos)
  stop_strings: tuple[str, ...] = ()
  seed: int | None = None           # None: a fresh random seed
  logprobs: int = 0                 # top alternatives reported per token (0: only the chosen one's)
  ignore_eos: bool = False
  max_length: int | None = None     # prompt + generated tokens, at most the context

  def check(self) -> None:
    """Raises ValueError naming the field of a setting out of range."""
    checks = [("max_new_tokens", self.max_new_tokens >= 0, ">= 0"), ("temperature", self.temperature >= 0, ">= 0"),
              ("top_k", self.top_k >= 0, ">= 0"), ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
              ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
              ("logprobs", 0 <= self.logprobs <= 20, "in 0..20"),
              ("max_length", self.max_length is None or self.max_length >= 1, ">= 1")]
    for name, ok, rule in checks:
      if not ok:
        raise ValueError(f"{name}={getattr(self, name)!r} must be {rule}")


@dataclasses.dataclass
class Event:
  token_ids: list[int]
  text: str
  logprobs: list[float]
  top_logprobs: list[dict[int, float]]
  finish_reason: str | None = None


@dataclasses.dataclass
class Completion:
  token_ids: list[int]
  text: str
  logprobs: list[float]
  top_logprobs: list[dict[int, float]]
  finish_reason: str


class Handle:
  def __init__(self):
    self.cancelled = False

  def cancel(self) -> None:
    self.cancelled = True


@dataclasses.dataclass
class _Request:
  prompt: list[int]
  params: SamplingParams
  on_event: Callable[[Event], None]
  deadline: float | None
  handle: Handle
  seed: int
  stream: TextStream
  stop_ids: frozenset
  limit: int                         # total tokens (prompt + generated) it may reach
  generated: list[int] = dataclasses.field(default_factory=list)


class Engine:

  def __init__(self, model, cfg, tokenizer, *, num_slots: int = 8, max_queue: int = 64,
               max_len: int | None = None, mesh=None, model_name: str = "model"):
    self.cfg, self.tokenizer, self.model_name = cfg, tokenizer, model_name
    self.decoder = SlotDecoder(model, cfg.model, num_slots, max_len, mesh)
    self.max_len, self.num_slots = self.decoder.max_len, int(num_slots)
    self.max_queue = int(max_queue)
    self._slots: list[_Request | None] = [None] * num_slots
    self._queue: collections.deque[_Request] = collections.deque()
    self._cond = threading.Condition()
    self.device = threading.Lock()    # the decode loop, score() and beam search take turns on the device
    self._thread: threading.Thread | None = None
    self._stopping = False

  @classmethod
  def from_checkpoint(cls, path: str, **kwargs) -> "Engine":
    """A workdir or step directory: its model (LoRA adapters merged), config and tokenizer."""
    import research
    model, cfg = research.load_model(path, merge=True)
    kwargs.setdefault("model_name", os.path.basename(os.path.normpath(path)))
    return cls(model, cfg, research.load_tokenizer(path), **kwargs)

  # -- requests -------------------------------------------------------------------------------------
  def submit(self, prompt_ids: Sequence[int], params: SamplingParams, on_event: Callable[[Event], None],
             deadline: float | None = None, _bounded: bool = True) -> Handle:
    """Queues a request (thread-safe). QueueFull when max_queue requests wait already; ValueError
    for a prompt that leaves no room for a token, or a setting out of range."""
    params.check()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
      raise ValueError("the prompt is empty (give at least one token)")
    if len(prompt) + 1 > self.max_len:
      raise ValueError(f"the prompt is {len(prompt)} tokens; with one new token it must fit the context "
                       f"of {self.max_len}")
    if any(not 0 <= t < self.decoder.vocab_size for t in prompt):
      raise ValueError(f"prompt token ids must be in 0..{self.decoder.vocab_size - 1}")
    stop_ids = set(params.stop_token_ids)
    if not params.ignore_eos and getattr(self.tokenizer, "eos_id", None) is not None:
      stop_ids.add(int(self.tokenizer.eos_id))
    limit = min(self.max_len, params.max_length or self.max_len)
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
    request = _Request(prompt, params, on_event, deadline, Handle(), seed & 0xFFFFFFFF,
                       TextStream(self.tokenizer, params.stop_strings), frozenset(stop_ids), limit)
    with self._cond:
      self._drop_ended(time.monotonic())
      if _bounded and len(self._queue) >= self.max_queue:
        raise QueueFull(f"{len(self._queue)} requests are waiting (--max_queue={self.max_queue})")
      self._queue.append(request)
      self._cond.notify()
    return request.handle

  def score(self, token_ids: Sequence[int], top_n: int = 0):
    """(logprobs, top): each token's log-probability given those before it (logprobs[0] is None) and
    its top_n alternatives {id: logprob} (None at 0). Blocking; thread-safe."""
    with self.device:
      lp, top_ids, top_lp = self.decoder.score(list(token_ids), top_n)
    logprobs = [None] + [float(x) for x in lp[1:]]
    top = [None] + [{int(i): float(p) for i, p in zip(ids, lps)} for ids, lps in zip(top_ids, top_lp)]
    return logprobs, top

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
               on_event: Callable[[int, Event], None] | None = None) -> list[Completion]:
    """Offline: every prompt through the continuous-batching loop in this thread (no queue bound).
    `on_event(index, event)` sees the tokens as they come (streaming to a terminal)."""
    params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    parts: list[list[Event]] = [[] for _ in prompts]
    for i, (prompt, p) in enumerate(zip(prompts, params)):
      def collect(event, i=i):
        parts[i].append(event)
        if on_event is not None:
          on_event(i, event)
      self.submit(prompt, p, collect, _bounded=False)
    while any(not events or events[-1].finish_reason is None for events in parts):
      self._tick()
    return [Completion([t for e in events for t in e.token_ids], "".join(e.text for e in events),
                       [x for e in events for x in e.logprobs], [x for e in events for x in e.top_logprobs],
                       events[-1].finish_reason) for events in parts]

  # -- the loop -------------------------------------------------------------------------------------
  def start(self) -> None:
    self._thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
    self._thread.start()

  def shutdown(self) -> None:
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join()

  def pending(self) -> int:
    """Requests waiting or running."""
    with self._cond:
      return len(self._queue) + sum(r is not None for r in self._slots)

  def _run(self) -> None:
    while True:
      with self._cond:
        while not self._stopping and not self._queue and all(r is None for r in self._slots):
          self._cond.wait()
        if self._stopping:
          return
      self._tick()

  def _tick(self) -> None:
    """Admit waiting requests into free slots, then one decode step for all running ones."""
    try:
      with self.device:
        self._admit()
        if any(r is not None for r in self._slots):
          self._step()
    except Exception as e:   # a failed device call ends the running requests, not the engine
      log.exception("decode step failed")
      for slot, request in enumerate(self._slots):
        if request is not None:
          self._finish(slot, request, "error", f"{type(e).__name__}: {e}")

  def _drop_ended(self, now: float) -> None:
    """Waiting requests cancelled or past their deadline leave the queue (and free its places) now.
    Called with self._cond held."""
    if not any(self._ended(r, now) for r in self._queue):
      return
    waiting = collections.deque()
    for request in self._queue:
      ended = self._ended(request, now)
      if ended:
        self._emit(request, Event([], "", [], [], ended))
      else:
        waiting.append(request)
    self._queue = waiting

  def _admit(self) -> None:
    now = time.monotonic()
    rows, requests = [], []
    with self._cond:
      self._drop_ended(now)
      free = [s for s, r in enumerate(self._slots) if r is None]
      while self._queue and len(rows) < len(free):
        request = self._queue.popleft()
        ended = self._ended(request, now)
        if ended or request.params.max_new_tokens == 0 or len(request.prompt) >= request.limit:
          self._emit(request, Event([], request.stream.flush(), [], [], ended or "length"))
          continue
        slot = free[len(rows)]
        self._slots[slot] = request
        rows.append(slot)
        requests.append(request)
    if not rows:
      return
    sampling = self._sampling(requests)
    choice = self.decoder.prefill(rows, [r.prompt for r in requests], sampling, self._filtered(requests))
    self._accept(rows, requests, choice)

  def _step(self) -> None:
    now = time.monotonic()
    for slot, request in enumerate(self._slots):
      if request is not None and (ended := self._ended(request, now)):
        self._finish(slot, request, ended)
    active = [(s, r) for s, r in enumerate(self._slots) if r is not None]
    if not active:
      return
    n = len(self._slots)
    tokens, positions = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for s, r in active:
      tokens[s], positions[s] = r.generated[-1], len(r.prompt) + len(r.generated) - 1
    by_slot = [r for r in self._slots]
    sampling = self._sampling(by_slot)
    running = [r for _, r in active]
    choice = self.decoder.step(tokens, positions, sampling, self._filtered(running),
                               any(r.params.repetition_penalty != 1 for r in running))
    self._accept([s for s, _ in active], [r for _, r in active], choice, indexed_by_slot=True)

  def _accept(self, rows, requests, choice, indexed_by_slot: bool = False) -> None:
    tokens, logprobs = np.asarray(choice.tokens), np.asarray(choice.logprobs)
    top_ids, top_lp = np.asarray(choice.top_ids), np.asarray(choice.top_logprobs)
    for i, (slot, r) in enumerate(zip(rows, requests)):
      j = slot if indexed_by_slot else i
      token = int(tokens[j])
      r.generated.append(token)
      n_top = r.params.logprobs
      top = {int(a): float(b) for a, b in zip(top_ids[j, :n_top], top_lp[j, :n_top])} if n_top else {}
      if token in r.stop_ids:
        text, finish = r.stream.flush(), "stop"
      else:
        text, stopped = r.stream.push(token)
        finish = "stop" if stopped else None
      if finish is None and (len(r.generated) >= r.params.max_new_tokens or
                             len(r.prompt) + len(r.generated) >= r.limit):
        text, finish = text + r.stream.flush(), "length"
      self._emit(r, Event([token], text, [float(logprobs[j])], [top] if n_top else [], finish))
      if finish is not None:
        self._slots[slot] = None

  def _finish(self, slot: int, request: _Request, reason: str, detail: str = "") -> None:
    self._slots[slot] = None
    if detail:
      log.warning("request ended (%s): %s", reason, detail)
    self._emit(request, Event([], request.stream.flush() if reason != "error" else "", [], [], reason))

  @staticmethod
  def _ended(request: _Request, now: float) -> str | None:
    if request.handle.cancelled:
      return "cancelled"
    if request.deadline is not None and now > request.deadline:
      return "timeout"
    return None

  @staticmethod
  def _emit(request: _Request, event: Event) -> None:
    try:
      request.on_event(event)
    except Exception:   # a client's callback must not stop the loop
      log.exception("on_event failed")

  def _sampling(self, requests: Sequence[_Request | None]) -> RowSampling:
    def column(get, dtype, idle):
      return np.asarray([idle if r is None else get(r) for r in requests], dtype)
    return RowSampling(column(lambda r: r.params.temperature, np.float32, 0.0),
                       column(lambda r: r.params.top_k, np.int32, 0),
                       column(lambda r: r.params.top_p, np.float32, 1.0),
                       column(lambda r: r.params.repetition_penalty, np.float32, 1.0),
                       column(lambda r: r.seed, np.uint32, 0),
                       column(lambda r: len(r.generated), np.int32, 0))

  @staticmethod
  def _filtered(requests) -> bool:
    return any(r.params.temperature > 0 and (r.params.top_k > 0 or r.params.top_p < 1) for r in requests)
