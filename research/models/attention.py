"""Causal self-attention with grouped-query heads, optional RoPE and document (segment) masking.

Shape legend: B batch, L length, D embed_dim, H heads, K kv_heads, Dh head_dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.attention_xla import causal_attention  # noqa: F401  (the 'xla' impl)
from research.models.layers import Dense
from research.sharding import constrain


def rope(x_BxLxNxDh: jax.Array, positions_BxL: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, 'rotate half' convention (as Hugging Face Llama), computed in float32."""
  half = x_BxLxNxDh.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLxHalf = positions_BxL[..., None].astype(jnp.float32) * freqs
  sin = jnp.sin(angles_BxLxHalf)[:, :, None, :]
  cos = jnp.cos(angles_BxLxHalf)[:, :, None, :]
  x = x_BxLxNxDh.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxDh.dtype)


class CausalSelfAttention(nnx.Module):

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs):
    d, h, k = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    dh = cfg.head_dim or d // h
    common = dict(use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Dense((d,), (h, dh), ("embed",), ("heads", "head_dim"), init_std=cfg.init_std, **common)
    self.k = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), init_std=cfg.init_std, **common)
    self.v = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), init_std=cfg.init_std, **common)
    # Residual projections start smaller so the residual stream's variance does not grow with depth.
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    self.o = Dense((h, dh), (d,), ("heads", "head_dim"), ("embed",), init_std=out_std, **common)
    self.use_rope, self.rope_theta = cfg.position == "rope", cfg.rope_theta
    self.impl = cfg.attention_impl

  def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array,
               segment_ids_BxL: jax.Array | None) -> jax.Array:
    q_BxLxHxDh = constrain(self.q(x_BxLxD), ("act_batch", "act_length", "act_heads", None))
    k_BxLxKxDh = constrain(self.k(x_BxLxD), ("act_batch", "act_length", "act_kv_heads", None))
    v_BxLxKxDh = constrain(self.v(x_BxLxD), ("act_batch", "act_length", "act_kv_heads", None))
    if self.use_rope:
      q_BxLxHxDh = rope(q_BxLxHxDh, positions_BxL, self.rope_theta)
      k_BxLxKxDh = rope(k_BxLxKxDh, positions_BxL, self.rope_theta)
    if self.impl == "xla":
      out_BxLxHxDh = causal_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL)
    else:  # cudnn (GPU): jax's fused kernel, logits and softmax in float32 for bf16 inputs
      mask = None
      if segment_ids_BxL is not None:
        mask = (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, mask=mask, is_causal=True, implementation=self.impl)
    out_BxLxHxDh = constrain(out_BxLxHxDh, ("act_batch", "act_length", "act_heads", None))
    return self.o(out_BxLxHxDh)
