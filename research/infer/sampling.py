"""Choosing the next token from logits, per row, on the device: repetition penalty, temperature,
top-k, top-p, greedy at temperature 0; and the log-probabilities reported with it.

Each row is sampled with its own key, fold_in(key(seed), i) for its i-th generated token, so a
row's tokens depend only on its own logits and seed: not on the other rows of the batch, nor on
when a request joined a running decode. The processors run in transformers' order (repetition
penalty, temperature, top-k, top-p) with its definitions: a seen token's logit is divided by the
penalty when positive and multiplied by it when negative; top-p keeps the smallest set of most
likely tokens whose mass reaches p (at least one).

Reported log-probabilities are those of the model's own distribution (log_softmax of the raw
logits), as OpenAI's API and vLLM report them, whatever the sampling settings.

Shape legend: S rows (slots), V vocab, N top alternatives reported.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TOP_N = 20   # alternatives computed per token (OpenAI's chat API allows up to 20 top_logprobs)


class RowSampling(NamedTuple):
  """Per-row settings, each [S]."""
  temperature: jax.Array   # float32; 0 = greedy
  top_k: jax.Array         # int32; 0 = off
  top_p: jax.Array         # float32; 1 = off
  repetition_penalty: jax.Array   # float32; 1 = off
  seed: jax.Array          # uint32
  counter: jax.Array       # int32: the index of the token being chosen (0 for the first)

  @staticmethod
  def greedy(n: int) -> "RowSampling":
    """n rows of greedy settings (a prefill whose choice is not used, benchmarks)."""
    import numpy as np
    z = lambda v, d: np.full(n, v, d)
    return RowSampling(z(0, np.float32), z(0, np.int32), z(1, np.float32), z(1, np.float32), z(0, np.uint32),
                       z(0, np.int32))


class Choice(NamedTuple):
  tokens: jax.Array        # [S] int32
  logprobs: jax.Array      # [S] float32, under the model's distribution
  top_ids: jax.Array       # [S, N] int32, most likely first
  top_logprobs: jax.Array  # [S, N] float32


def penalise(logits_SxV: jax.Array, seen_SxV: jax.Array, penalty_S: jax.Array) -> jax.Array:
  p = penalty_S[:, None]
  penalised = jnp.where(logits_SxV > 0, logits_SxV / p, logits_SxV * p)
  return jnp.where(seen_SxV, penalised, logits_SxV)


def _filter_row(x_V: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Logits outside top-k, then outside the top-p mass, set to -inf."""
  v = x_V.shape[0]
  sorted_V = -jnp.sort(-x_V)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  in_k = jnp.arange(v) < k
  x_V = jnp.where(x_V < sorted_V[k - 1], -jnp.inf, x_V)
  probs_V = jax.nn.softmax(jnp.where(in_k, sorted_V, -jnp.inf))
  mass_before_V = jnp.cumsum(probs_V) - probs_V
  keep = jnp.maximum(jnp.sum((mass_before_V < top_p) & in_k), 1)
  return jnp.where(x_V < sorted_V[keep - 1], -jnp.inf, x_V)


def choose(logits_SxV: jax.Array, seen_SxV: jax.Array | None, rows: RowSampling, filtered: bool) -> Choice:
  """The next token of every row. `filtered` (static): some row uses top-k or top-p (a sort of V);
  seen_SxV None: no row uses the repetition penalty."""
  logits_SxV = logits_SxV.astype(jnp.float32)
  model_lp_SxV = jax.nn.log_softmax(logits_SxV, axis=-1)
  x_SxV = logits_SxV if seen_SxV is None else penalise(logits_SxV, seen_SxV, rows.repetition_penalty)
  greedy_S = jnp.argmax(x_SxV, axis=-1).astype(jnp.int32)
  x_SxV = x_SxV / jnp.maximum(rows.temperature, 1e-6)[:, None]
  if filtered:
    x_SxV = jax.vmap(_filter_row)(x_SxV, rows.top_k, rows.top_p)
  keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(rows.seed, rows.counter)
  sampled_S = jax.vmap(jax.random.categorical)(keys, x_SxV).astype(jnp.int32)
  tokens_S = jnp.where(rows.temperature == 0, greedy_S, sampled_S)
  top_lp, top_ids = jax.lax.top_k(model_lp_SxV, min(TOP_N, logits_SxV.shape[-1]))
  return Choice(tokens_S, jnp.take_along_axis(model_lp_SxV, tokens_S[:, None], 1)[:, 0],
                top_ids.astype(jnp.int32), top_lp)


def beam_candidates(logits_SxV: jax.Array, seen_SxV: jax.Array, penalty_S: jax.Array, n: int):
  """(log-probabilities [S, n], token ids [S, n]): each row's n best continuations for beam search.
  The repetition penalty applies to the log-probabilities, as transformers' beam search applies its
  processors after the log_softmax."""
  lp_SxV = penalise(jax.nn.log_softmax(logits_SxV.astype(jnp.float32), axis=-1), seen_SxV, penalty_S)
  return jax.lax.top_k(lp_SxV, n)
