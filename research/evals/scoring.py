"""Per-token log-probabilities of token sequences: the one scoring path of every likelihood task.

A `TokenRequest` is a token sequence and how many of its last targets to score: row inputs are
tokens[:-1], targets tokens[1:], and the last `num_scored` targets come back, each as
log p(target | every earlier token of the request) in float32, with whether it was the argmax.
Requests are laid into [B, L] rows, one per row or packed several to a row (packing: first-fit
decreasing by length, each request its own segment id with positions from 0, so attention never
crosses requests: exactly how training packs documents), and scored by one jitted function of
the fixed shape [B, L]. L is a bucket (a power of two from 16, or the context itself) holding the
longest row of the batch, so a few shapes compile, once each. Sums are taken on the host in
float64, in request order: a request's result does not depend on the batch size, the packing, or
its neighbours (up to float32 rounding of the forward pass: ~1e-6).

Shape legend: B batch (rows), L row length, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.evals.runner import Runner

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class TokenRequest:
  tokens: tuple[int, ...]   # inputs then the last target: 2 <= len <= context + 1
  num_scored: int           # the last num_scored targets are scored (1 <= num_scored <= len - 1)

  def __post_init__(self):
    if len(self.tokens) < 2 or not 1 <= self.num_scored <= len(self.tokens) - 1:
      raise ValueError(f"a request of {len(self.tokens)} tokens cannot score its last {self.num_scored} targets")

  @property
  def length(self) -> int:
    """Row positions it takes: its inputs."""
    return len(self.tokens) - 1


@dataclasses.dataclass(frozen=True)
class TokenScores:
  logprobs: np.ndarray   # [num_scored] float32: log p(target | the request's earlier tokens)
  greedy: np.ndarray     # [num_scored] bool: the target was the model's argmax

  @property
  def total(self) -> float:
    """The summed log-likelihood, in float64."""
    return float(self.logprobs.astype(np.float64).sum())

  @property
  def is_greedy(self) -> bool:
    return bool(self.greedy.all())


def make_logprob_fn(graphdef) -> Callable:
  """(params, batch of [B, L] int32 inputs/targets/positions/segment_ids) -> (logprobs_BxL float32,
  greedy_BxL bool): log_softmax of the model's float32 logits at each target."""

  def fn(params, batch):
    model = nnx.merge(graphdef, params)
    logits_BxLxV = model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    targets_BxL = batch["targets"]
    logprobs_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return logprobs_BxL, jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL

  return fn


def buckets(context: int) -> tuple[int, ...]:
  """Row lengths: powers of two from MIN_BUCKET below `context`, then `context`."""
  out, n = [], MIN_BUCKET
  while n < context:
    out.append(n)
    n *= 2
  return tuple(out) + (context,)


def layout_rows(lengths: Sequence[int], context: int, packing: bool) -> list[list[int]]:
  """Request indices per row. Unpacked: one each; packed: first-fit decreasing into rows of
  `context` positions. Rows come longest first, ties in request order (deterministic)."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  if not packing:
    return [[i] for i in order]
  rows, free = [], []
  for i in order:
    for r, room in enumerate(free):
      if lengths[i] <= room:
        rows[r].append(i)
        free[r] -= lengths[i]
        break
    else:
      rows.append([i])
      free.append(context - lengths[i])
  return rows


class Scorer:
  """score(requests) -> [TokenScores] in request order, through `runner` (a jitted make_logprob_fn)
  on [batch_size, L] rows, L from `row_lengths` (default: buckets(context))."""

  def __init__(self, runner: Runner, context: int, batch_size: int = 32, packing: bool = True,
               row_lengths: Sequence[int] | None = None):
    self.runner, self.context, self.batch_size, self.packing = runner, context, batch_size, packing
    self.row_lengths = tuple(sorted(row_lengths or buckets(context)))
    if self.row_lengths[-1] < context:
      raise ValueError(f"row lengths {self.row_lengths} do not hold a context of {context} tokens")

  @classmethod
  def from_model(cls, model, context: int, batch_size: int = 32, packing: bool = True) -> "Scorer":
    """A Scorer of a model on this process's default device (research.load_model's)."""
    graphdef, params = nnx.split(model)
    return cls(Runner.local(make_logprob_fn(graphdef), params), context, batch_size, packing)

  def with_params(self, params) -> "Scorer":
    """The same compiled scoring on other parameters of the same structure (training's latest)."""
    return Scorer(self.runner.with_params(params), self.context, self.batch_size, self.packing, self.row_lengths)

  def score(self, requests: Sequence[TokenRequest]) -> list[TokenScores]:
    too_long = [r.length for r in requests if r.length > self.context]
    if too_long:
      raise ValueError(f"a request of {too_long[0]} input tokens is longer than the context of {self.context}")
    rows = layout_rows([r.length for r in requests], self.context, self.packing)
    out: list[TokenScores | None] = [None] * len(requests)

    def collect(pending):
      (logprobs_BxL, greedy_BxL), where = self.runner.fetch(pending[0]), pending[1]
      for i, (b, end) in where.items():
        n = requests[i].num_scored
        out[i] = TokenScores(np.asarray(logprobs_BxL[b, end - n:end], np.float32),
                             np.asarray(greedy_BxL[b, end - n:end], bool))

    pending = None
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      fill = max(sum(requests[i].length for i in row) for row in chunk)
      width = next(n for n in self.row_lengths if n >= fill)
      batch, where = self._batch(requests, chunk, width)
      running = (self.runner.dispatch(batch), where)
      if pending is not None:  # fetched one batch behind, so the device never waits for the host
        collect(pending)
      pending = running
    if pending is not None:
      collect(pending)
    return out

  def _batch(self, requests, chunk, width) -> tuple[dict, dict]:
    """[batch_size, width] arrays (rows past the chunk empty: segment 0, never read) and, per
    request, (row, end of its segment)."""
    shape = (self.batch_size, width)
    batch = {k: np.zeros(shape, np.int32) for k in ("inputs", "targets", "positions", "segment_ids")}
    where = {}
    for b, row in enumerate(chunk):
      at = 0
      for segment, i in enumerate(row, 1):
        tokens = np.asarray(requests[i].tokens, np.int32)
        n = len(tokens) - 1
        batch["inputs"][b, at:at + n] = tokens[:-1]
        batch["targets"][b, at:at + n] = tokens[1:]
        batch["positions"][b, at:at + n] = np.arange(n)
        batch["segment_ids"][b, at:at + n] = segment
        at += n
        where[i] = (b, at)
    return batch, where
