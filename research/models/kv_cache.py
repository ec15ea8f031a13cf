"""The key/value cache of incremental decoding: every layer's keys and values of the tokens seen so
far, preallocated for S rows ("slots": one sequence each) of M positions.

A slot's token at position p sits at index p. Two ways in:
  prefill: rows (slot indices) get a new chunk of T tokens at positions 0..T-1 (right-padded prompts;
    padding is overwritten by the decode steps that follow before anything attends to it);
    attention is the training path's causal attention over the chunk itself.
  decode:  every slot gets its next token(s) at positions[s]; attention reads the slot's cache up to
    and including that position (minus the sliding window, for Mistral).

Shape legend: Ly layers, S slots, M cache length, T new tokens, K kv_heads, G = H / K, Dh head_dim.
Sharded like the activations: slots over the batch axes, kv heads over `tensor`. Stored heads before
positions ([S, K, M, Dh]), so the decode step's attention contracts the cache in place: with the
training layout ([S, M, K, Dh]) XLA CPU transposed every layer's whole cache at every step, and the
default model's decode step at batch 32 took 33 ms instead of 6 (PERFORMANCE.md).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from research.sharding import constrain

CACHE_AXES = ("layers", "act_batch", "act_kv_heads", None, None)   # [Ly, S, K, M, Dh]
F32 = jnp.float32


class KVCache(NamedTuple):
  """k, v: [Ly, S, K, M, Dh] arrays when the model's layers are scanned (model.scan_layers), else
  tuples of Ly [S, K, M, Dh] arrays (each layer updated in place: no stacked copy per step)."""
  k: jax.Array | tuple
  v: jax.Array | tuple

  @staticmethod
  def zeros(model_cfg, slots: int, length: int, dtype, sharding=None) -> "KVCache":
    """`sharding(names, shape)` -> a jax Sharding (None: the default device)."""
    kv_heads = model_cfg.num_kv_heads or model_cfg.num_heads
    head_dim = model_cfg.head_dim or model_cfg.embed_dim // model_cfg.num_heads
    layer_shape = (slots, kv_heads, length, head_dim)

    def make(shape, names):
      if sharding is None:
        return jnp.zeros(shape, dtype)
      return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding(names, shape))()

    if model_cfg.scan_layers:
      shape = (model_cfg.num_layers,) + layer_shape
      return KVCache(make(shape, CACHE_AXES), make(shape, CACHE_AXES))
    layers = lambda: tuple(make(layer_shape, CACHE_AXES[1:]) for _ in range(model_cfg.num_layers))
    return KVCache(layers(), layers())

  def names(self) -> "KVCache":
    """The logical axis names of every leaf (for shardings)."""
    if isinstance(self.k, tuple):
      return KVCache(tuple(CACHE_AXES[1:] for _ in self.k), tuple(CACHE_AXES[1:] for _ in self.v))
    return KVCache(CACHE_AXES, CACHE_AXES)

  def take_rows(self, rows_S: jax.Array) -> "KVCache":
    """Row s of the result is row rows_S[s] of this cache (beam search's reordering)."""
    axis = 0 if isinstance(self.k, tuple) else 1
    return jax.tree.map(lambda a: jnp.take(a, rows_S, axis=axis), self)

  def layer(self, i: int, rows: jax.Array | None, span: int | None = None) -> "LayerCache":
    return LayerCache(self.k[i], self.v[i], rows, span)


class LayerCache(NamedTuple):
  """One layer's cache, [S, K, M, Dh] each; `rows` ([n] slot indices) marks a prefill of n rows;
  `span` (static): a decode step attends to the first `span` positions only (every row's position is
  below it), so a short sequence in a long cache reads only its part."""
  k: jax.Array
  v: jax.Array
  rows: jax.Array | None
  span: int | None = None

  def attend(self, q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, positions_BxT, sliding_window: int):
    """Writes the new keys/values, returns (attention output [B, T, H, Dh], the updated cache)."""
    from research.models.attention_xla import causal_attention
    t = q_BxTxHxDh.shape[1]
    k_BxKxTxDh = jnp.swapaxes(k_BxTxKxDh, 1, 2).astype(self.k.dtype)
    v_BxKxTxDh = jnp.swapaxes(v_BxTxKxDh, 1, 2).astype(self.v.dtype)
    if self.rows is not None:   # prefill: the chunk starts each row at position 0
      k_cache = self.k.at[self.rows, :, :t].set(k_BxKxTxDh)
      v_cache = self.v.at[self.rows, :, :t].set(v_BxKxTxDh)
      out = causal_attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, sliding_window=sliding_window)
      return out, LayerCache(k_cache, v_cache, self.rows)
    write = jax.vmap(lambda c, x, p: jax.lax.dynamic_update_slice_in_dim(c, x, p, axis=1))
    k_cache = constrain(write(self.k, k_BxKxTxDh, positions_BxT[:, 0]), CACHE_AXES[1:])
    v_cache = constrain(write(self.v, v_BxKxTxDh, positions_BxT[:, 0]), CACHE_AXES[1:])
    span = self.span or self.k.shape[2]
    keys_M = jnp.arange(span)
    mask_BxTxM = keys_M[None, None, :] <= positions_BxT[:, :, None]
    if sliding_window:
      mask_BxTxM &= keys_M[None, None, :] > positions_BxT[:, :, None] - sliding_window
    out = _cached_attention(q_BxTxHxDh, k_cache[:, :, :span], v_cache[:, :, :span], mask_BxTxM)
    return out, LayerCache(k_cache, v_cache, None, self.span)


def _cached_attention(q_BxTxHxDh, k_BxKxMxDh, v_BxKxMxDh, mask_BxTxM) -> jax.Array:
  """softmax(q k^T / sqrt(Dh) + mask) v over the cache: scores and softmax in float32, the softmax
  normalised after the PV matmul (as the training path's forward, research/models/attention_xla.py)."""
  b, t, h, dh = q_BxTxHxDh.shape
  kh = k_BxKxMxDh.shape[1]
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, kh, h // kh, dh)
  scores = jnp.einsum("btkgd,bkmd->bkgtm", q_BxTxKxGxDh, k_BxKxMxDh, preferred_element_type=F32) * dh ** -0.5
  scores = jnp.where(mask_BxTxM[:, None, None], scores, jnp.finfo(F32).min)
  unnormalised = jnp.exp(scores - scores.max(-1, keepdims=True))
  out = jnp.einsum("bkgtm,bkmd->btkgd", unnormalised.astype(q_BxTxHxDh.dtype), v_BxKxMxDh,
                   preferred_element_type=F32)
  row_sum = jnp.moveaxis(unnormalised.sum(-1), 3, 1)[..., None]     # [B, T, K, G, 1]
  return (out / row_sum).astype(q_BxTxHxDh.dtype).reshape(b, t, h, dh)
