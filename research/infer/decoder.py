"""`SlotDecoder`: a model with a preallocated KV cache of S slots, compiled once per shape.

  prefill(rows, prompts)  writes each prompt into its slot (prompts of different lengths in one call,
                          right-padded to a length bucket) and chooses each one's first new token;
  step()                  gives every slot its next token at once (continuous batching: slots are
                          independent, a slot can be refilled while the others run);
  score(ids)              log-probabilities of a sequence's own tokens (no cache).

The device holds the cache, the set of tokens each slot has seen (the repetition penalty) and the
parameters, sharded by the model's logical axes over `mesh` (slots over the batch axes, heads over
`tensor`) when one is given. The host keeps each slot's position and sampling settings. Compiled
programs are kept per (rows bucket, length bucket): powers of two, so a server compiles a handful.

Shape legend: S slots, M cache length, n rows of a prefill, T prompt length bucket, V vocab.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.infer.sampling import TOP_N, Choice, RowSampling, beam_candidates, choose
from research.models.kv_cache import KVCache
from research.sharding import DEFAULT_RULES, activation_rules, named_sharding

MIN_BUCKET = 16


def bucket(n: int, cap: int, floor: int = MIN_BUCKET) -> int:
  """The smallest power of two >= n (at least `floor`), at most `cap`."""
  return min(cap, max(floor, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def cache_dtype(model_cfg):
  """The model's compute dtype, except on CPU: there the cache is float32, because XLA CPU ran the
  decode step's batched attention over a bf16 cache 3.3x slower than over an f32 one (batch 32:
  4.8 vs 1.5 ms per layer, PERFORMANCE.md). Keys and values are computed in the compute dtype
  either way; an f32 cache holds them exactly."""
  if jax.default_backend() == "cpu":
    return jnp.float32
  return jnp.dtype(model_cfg.dtype)


class SlotDecoder:

  def __init__(self, model: nnx.Module, model_cfg, num_slots: int, max_len: int | None = None,
               mesh: jax.sharding.Mesh | None = None, rules=DEFAULT_RULES):
    """max_len: the cache length in tokens (prompt + generated), at most model.max_seq_len."""
    self.model_cfg, self.num_slots = model_cfg, int(num_slots)
    self.max_len = min(int(max_len or model_cfg.max_seq_len), model_cfg.max_seq_len)
    self.vocab_size = model_cfg.vocab_size
    self.mesh, self.rules = mesh, tuple(rules)
    self.graphdef, params = nnx.split(model, nnx.Param)
    state = nnx.to_pure_dict(params)
    self.state = jax.device_put(state, self._state_shardings(params)) if mesh is not None else state
    self.cache = KVCache.zeros(model_cfg, self.num_slots, self.max_len, cache_dtype(model_cfg),
                               None if mesh is None else self._sharding)
    self.seen = self._zeros((self.num_slots, self.vocab_size), jnp.bool_, ("act_batch", None))
    self._compiled: dict = {}

  # -- shardings ------------------------------------------------------------------------------------
  def _sharding(self, names, shape):
    return named_sharding(self.mesh, names, self.rules, shape)

  def _zeros(self, shape, dtype, names):
    if self.mesh is None:
      return jnp.zeros(shape, dtype)
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=self._sharding(names, shape))()

  def _state_shardings(self, params: nnx.State):
    """The parameters' shardings by their logical axes (a pure dict, as the state is held)."""
    out: dict = {}
    for path, variable in nnx.to_flat_state(params):
      node = out
      for key in path[:-1]:
        node = node.setdefault(key, {})
      shape = np.shape(variable[...])
      names = variable.get_metadata().get("logical_axes") or (None,) * len(shape)
      node[path[-1]] = self._sharding(names, shape)
    return out

  def _jit(self, key, fn, donate=()):
    if key not in self._compiled:
      rules = None if self.mesh is None else (self.mesh, self.rules)

      def traced(*args):
        if rules is None:
          return fn(*args)
        with activation_rules(*rules):
          return fn(*args)

      self._compiled[key] = jax.jit(traced, donate_argnums=donate)
    return self._compiled[key]

  # -- the programs ---------------------------------------------------------------------------------
  def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], sampling: RowSampling,
              filtered: bool) -> Choice:
    """Writes prompts[i] into slot rows[i] (positions 0..len-1) and chooses its next token (a
    Choice of len(rows) entries, on the device). Each prompt must be shorter than max_len."""
    n = len(rows)
    longest = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) < 1 or longest >= self.max_len:
      raise ValueError(f"prompt lengths must be 1..{self.max_len - 1} tokens, got {longest}")
    nb, tb = bucket(n, self.num_slots, 1), bucket(longest, self.max_len)
    tokens = np.zeros((nb, tb), np.int32)
    lengths = np.ones((nb,), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)], lengths[i] = p, len(p)
    # Padding rows repeat row 0 (same slot, same values): their writes are row 0's own.
    tokens[n:], lengths[n:] = tokens[0], lengths[0]
    slots = np.asarray(list(rows) + [rows[0]] * (nb - n), np.int32)
    sampling = RowSampling(*(np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[:1], nb - n)])
                             for a in sampling))
    fn = self._jit(("prefill", nb, tb, filtered), self._prefill_fn(filtered), donate=(1, 2))
    self.cache, self.seen, choice = fn(self.state, self.cache, self.seen, tokens, lengths, slots, sampling)
    return Choice(*(a[:n] for a in choice))

  def step(self, tokens_S: np.ndarray, positions_S: np.ndarray, sampling: RowSampling,
           filtered: bool, penalised: bool = True) -> Choice:
    """Every slot's token tokens_S[s] at position positions_S[s]: writes it, chooses the next.
    penalised=False: no running row uses the repetition penalty (its seen tokens are not kept: a row
    that does gets them from its prefill). Attention reads the cache up to a power-of-two bucket of
    the furthest position, so compiled programs are per (filtered, penalised, span)."""
    span = bucket(int(np.max(positions_S)) + 1, self.max_len)
    fn = self._jit(("step", filtered, penalised, span), self._step_fn(filtered, penalised, span), donate=(1, 2))
    self.cache, self.seen, choice = fn(self.state, self.cache, self.seen, np.asarray(tokens_S, np.int32),
                                       np.asarray(positions_S, np.int32), sampling)
    return choice

  def beam_step(self, tokens_S, positions_S, penalty_S, n: int):
    """As step, but returns each slot's n best continuations (log-probabilities, ids) for beam search."""
    fn = self._jit(("beam", n), self._beam_fn(n), donate=(1, 2))
    self.cache, self.seen, out = fn(self.state, self.cache, self.seen, np.asarray(tokens_S, np.int32),
                                    np.asarray(positions_S, np.int32), np.asarray(penalty_S, np.float32))
    return out

  def forget(self, rows: Sequence[int]) -> None:
    """The slots' seen tokens cleared (a slot that starts from its first token, without a prefill)."""
    fn = self._jit(("forget",), lambda seen, rows: seen.at[rows].set(False), donate=(0,))
    self.seen = fn(self.seen, np.asarray(rows, np.int32))

  def reorder(self, rows_S: Sequence[int]) -> None:
    """Slot s takes the cache (and seen tokens) of slot rows_S[s] (beam search keeps its best beams)."""
    fn = self._jit(("reorder",), lambda cache, seen, rows: (cache.take_rows(rows), jnp.take(seen, rows, 0)),
                   donate=(0, 1))
    self.cache, self.seen = fn(self.cache, self.seen, np.asarray(rows_S, np.int32))

  def score(self, ids: Sequence[int], top_n: int = 0):
    """(logprobs [L] with logprobs[0] = nan, top ids [L, N], top logprobs [L, N]) as numpy: each
    token's log-probability given the tokens before it, by a full forward pass."""
    length = len(ids)
    if not 1 <= length <= self.model_cfg.max_seq_len:
      raise ValueError(f"a scored sequence must be 1..{self.model_cfg.max_seq_len} tokens, got {length}")
    tb = bucket(length, self.model_cfg.max_seq_len)
    tokens = np.zeros((1, tb), np.int32)
    tokens[0, :length] = ids
    n = max(1, min(top_n, self.vocab_size))
    fn = self._jit(("score", tb, bucket(n, TOP_N, 1)), self._score_fn(bucket(n, TOP_N, 1)))
    lp, top_lp, top_ids = (np.asarray(a)[0] for a in fn(self.state, tokens))
    lp = np.concatenate([[np.nan], lp[:length - 1]])
    return lp, top_ids[:length - 1, :top_n], top_lp[:length - 1, :top_n]

  # -- traced bodies --------------------------------------------------------------------------------
  def _model(self, state):
    return nnx.merge(self.graphdef, state)

  def _prefill_fn(self, filtered):
    def fn(state, cache, seen, tokens_nxT, lengths_n, slots_n, sampling):
      model = self._model(state)
      n, t = tokens_nxT.shape
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t))
      x_nxTxD, cache = model.cached_hidden_states(tokens_nxT, positions, cache, rows=slots_n)
      last_nx1xD = jnp.take_along_axis(x_nxTxD, (lengths_n - 1)[:, None, None], axis=1)
      logits_nxV = model.logits(last_nx1xD)[:, 0]
      valid_nxT = jnp.arange(t)[None] < lengths_n[:, None]
      prompt_seen_nxV = jnp.zeros((n, self.vocab_size), jnp.int32).at[
          jnp.arange(n)[:, None], tokens_nxT].max(valid_nxT.astype(jnp.int32)) > 0
      seen = seen.at[slots_n].set(prompt_seen_nxV)
      return cache, seen, choose(logits_nxV, prompt_seen_nxV, sampling, filtered)
    return fn

  def _step_logits(self, state, cache, tokens_S, positions_S, span=None):
    model = self._model(state)
    x_Sx1xD, cache = model.cached_hidden_states(tokens_S[:, None], positions_S[:, None], cache, span=span)
    return model.logits(x_Sx1xD)[:, 0], cache

  def _step_fn(self, filtered, penalised, span):
    def fn(state, cache, seen, tokens_S, positions_S, sampling):
      if penalised:   # a token is seen (for the repetition penalty) once it is in the context: as it is fed in
        seen = seen.at[jnp.arange(seen.shape[0]), tokens_S].set(True)
      logits_SxV, cache = self._step_logits(state, cache, tokens_S, positions_S, span)
      return cache, seen, choose(logits_SxV, seen if penalised else None, sampling, filtered)
    return fn

  def _beam_fn(self, n):
    def fn(state, cache, seen, tokens_S, positions_S, penalty_S):
      seen = seen.at[jnp.arange(seen.shape[0]), tokens_S].set(True)
      logits_SxV, cache = self._step_logits(state, cache, tokens_S, positions_S)
      return cache, seen, beam_candidates(logits_SxV, seen, penalty_S, n)
    return fn

  def _score_fn(self, n):
    def fn(state, tokens_1xT):
      logits = self._model(state)(tokens_1xT)[:, :-1].astype(jnp.float32)
      lp_1xTxV = jax.nn.log_softmax(logits, axis=-1)
      lp = jnp.take_along_axis(lp_1xTxV, tokens_1xT[:, 1:, None], -1)[..., 0]
      top_lp, top_ids = jax.lax.top_k(lp_1xTxV, n)
      return lp, top_lp, top_ids
    return fn
