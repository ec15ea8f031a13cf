"""The key/value cache of incremental decoding: every layer's keys and values of the tokens seen so
far, preallocated for S rows ("slots": one sequence each) of M positions.

A slot's token at position p sits at index p. Two ways in:
  prefill: rows (slot indices) get a new chunk of T tokens at positions 0..T-1 (right-padded prompts;
    padding is overwritten by the decode steps that follow before anything attends to it);
    attention is the training path's causal attention over the chunk itself.
  decode:  every slot gets its next token(s) at positions[s]; attention reads the slot's cache up to
    and including that position (minus the sliding window, for Mistral).

Shape legend: Ly layers, S slots, M cache length, T new tokens, K kv_heads, Dh head_dim, H heads.
Sharded like the activations: slots over the batch axes, kv heads over `tensor`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from research.sharding import constrain

CACHE_AXES = ("layers", "act_batch", None, "act_kv_heads", None)   # [Ly, S, M, K, Dh]


class KVCache(NamedTuple):
  """k, v: [Ly, S, M, K, Dh] arrays when the model's layers are scanned (model.scan_layers), else
  tuples of Ly [S, M, K, Dh] arrays (each layer updated in place: no stacked copy per step)."""
  k: jax.Array | tuple
  v: jax.Array | tuple

  @staticmethod
  def zeros(model_cfg, slots: int, length: int, dtype, sharding=None) -> "KVCache":
    """`sharding(names, shape)` -> a jax Sharding (None: the default device)."""
    kv_heads = model_cfg.num_kv_heads or model_cfg.num_heads
    head_dim = model_cfg.head_dim or model_cfg.embed_dim // model_cfg.num_heads
    layer_shape = (slots, length, kv_heads, head_dim)

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

  def layer(self, i: int, rows: jax.Array | None) -> "LayerCache":
    return LayerCache(self.k[i], self.v[i], rows)


class LayerCache(NamedTuple):
  """One layer's cache, [S, M, K, Dh] each; `rows` ([n] slot indices) marks a prefill of n rows."""
  k: jax.Array
  v: jax.Array
  rows: jax.Array | None

  def attend(self, q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, positions_BxT, sliding_window: int):
    """Writes the new keys/values, returns (attention output [B, T, H, Dh], the updated cache)."""
    from research.models.attention_xla import causal_attention, masked_attention
    k_new, v_new = k_BxTxKxDh.astype(self.k.dtype), v_BxTxKxDh.astype(self.v.dtype)
    t = q_BxTxHxDh.shape[1]
    if self.rows is not None:   # prefill: the chunk starts each row at position 0
      k_cache = self.k.at[self.rows, :t].set(k_new)
      v_cache = self.v.at[self.rows, :t].set(v_new)
      out = causal_attention(q_BxTxHxDh, k_new, v_new, sliding_window=sliding_window)
    else:
      write = jax.vmap(lambda c, x, p: jax.lax.dynamic_update_slice_in_dim(c, x, p, axis=0))
      k_cache = write(self.k, k_new, positions_BxT[:, 0])
      v_cache = write(self.v, v_new, positions_BxT[:, 0])
      k_cache = constrain(k_cache, CACHE_AXES[1:])
      v_cache = constrain(v_cache, CACHE_AXES[1:])
      keys_M = jnp.arange(self.k.shape[1])
      mask_BxTxM = keys_M[None, None, :] <= positions_BxT[:, :, None]
      if sliding_window:
        mask_BxTxM &= keys_M[None, None, :] > positions_BxT[:, :, None] - sliding_window
      out = masked_attention(q_BxTxHxDh, k_cache, v_cache, mask_BxTxM)
    return out, LayerCache(k_cache, v_cache, self.rows)
