"""Causal self-attention with grouped-query heads, optional RoPE and document (segment) masking.

Shape legend: B batch, L length, D embed_dim, H heads, K kv_heads, Dh head_dim.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.attention_xla import causal_attention  # noqa: F401  (the 'xla' impl)
from research.models.kv_cache import LayerCache
from research.models.layers import Dense
from research.models.lora import lora_rng
from research.sharding import constrain


def rope(x_BxLxNxDh: jax.Array, positions_BxL: jax.Array, theta: float,
         inv_freq: Sequence[float] | None = None) -> jax.Array:
  """Rotary embedding, 'rotate half' convention (as Hugging Face Llama), computed in float32.
  `inv_freq` ([Dh / 2]) replaces theta's frequencies (scaled RoPE, see `llama3_inv_freq`)."""
  half = x_BxLxNxDh.shape[-1] // 2
  if inv_freq is None:
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  else:
    freqs = jnp.asarray(inv_freq, jnp.float32)
  angles_BxLxHalf = positions_BxL[..., None].astype(jnp.float32) * freqs
  sin = jnp.sin(angles_BxLxHalf)[:, :, None, :]
  cos = jnp.cos(angles_BxLxHalf)[:, :, None, :]
  x = x_BxLxNxDh.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxDh.dtype)


def llama3_inv_freq(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_len: int) -> np.ndarray:
  """Llama 3.1's RoPE frequencies ([Dh / 2] float32), the arithmetic of transformers'
  `_compute_llama3_parameters`: wavelengths longer than original_max_len / low_freq_factor are
  divided by `factor`, shorter than original_max_len / high_freq_factor kept, and blended between."""
  f32 = np.float32
  inv_freq = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)))
  low_wavelen, high_wavelen = original_max_len / low_freq_factor, original_max_len / high_freq_factor
  wavelen = f32(2 * np.pi) / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / f32(factor), inv_freq)
  smooth = (f32(original_max_len) / wavelen - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
  smoothed = (1 - smooth) * scaled / f32(factor) + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(f32)


def rope_inv_freq(cfg) -> np.ndarray | None:
  """The scaled frequencies model.rope_scaling asks for; None for plain RoPE (theta's)."""
  kind = cfg.get("rope_scaling", "none")
  if kind == "none":
    return None
  if kind != "llama3":
    raise ValueError(f"model.rope_scaling={kind!r} is not one of none, llama3")
  return llama3_inv_freq(cfg.head_dim or cfg.embed_dim // cfg.num_heads, cfg.rope_theta,
                         cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                         cfg.rope_original_max_len)


class CausalSelfAttention(nnx.Module):

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs):
    d, h, k = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    dh = cfg.head_dim or d // h
    common = dict(use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    qkv = dict(common, use_bias=cfg.use_bias or cfg.get("qkv_bias", False))
    self.q = Dense((d,), (h, dh), ("embed",), ("heads", "head_dim"), init_std=cfg.init_std, **qkv)
    self.k = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), init_std=cfg.init_std, **qkv)
    self.v = Dense((d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), init_std=cfg.init_std, **qkv)
    # Residual projections start smaller so the residual stream's variance does not grow with depth.
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    self.o = Dense((h, dh), (d,), ("heads", "head_dim"), ("embed",), init_std=out_std, **common)
    self.use_rope, self.rope_theta = cfg.position == "rope", cfg.rope_theta
    inv_freq = rope_inv_freq(cfg) if self.use_rope else None
    self.inv_freq = None if inv_freq is None else tuple(float(f) for f in inv_freq)  # static, not state
    self.sliding_window = cfg.get("sliding_window", 0)
    self.impl = cfg.attention_impl

  def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array,
               segment_ids_BxL: jax.Array | None, adapter_rng: jax.Array | None = None,
               cache: LayerCache | None = None):
    """adapter_rng: the key of the projections' LoRA dropout (None: evaluation, or no adapters).
    With `cache` (decoding, research/models/kv_cache.py) this token's keys and values are written
    into it and (output, the updated cache) is returned."""
    q_BxLxHxDh = constrain(self.q(x_BxLxD, rng=lora_rng(adapter_rng, 0)),
                           ("act_batch", "act_length", "act_heads", None))
    k_BxLxKxDh = constrain(self.k(x_BxLxD, rng=lora_rng(adapter_rng, 1)),
                           ("act_batch", "act_length", "act_kv_heads", None))
    v_BxLxKxDh = constrain(self.v(x_BxLxD, rng=lora_rng(adapter_rng, 2)),
                           ("act_batch", "act_length", "act_kv_heads", None))
    if self.use_rope:
      q_BxLxHxDh = rope(q_BxLxHxDh, positions_BxL, self.rope_theta, self.inv_freq)
      k_BxLxKxDh = rope(k_BxLxKxDh, positions_BxL, self.rope_theta, self.inv_freq)
    if cache is not None:
      out_BxLxHxDh, cache = cache.attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, positions_BxL, self.sliding_window)
    elif self.impl == "xla":
      out_BxLxHxDh = causal_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL,
                                      sliding_window=self.sliding_window)
    else:  # cudnn (GPU): jax's fused kernel, logits and softmax in float32 for bf16 inputs
      mask = None
      if segment_ids_BxL is not None:
        mask = (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])
      window = (self.sliding_window - 1, 0) if self.sliding_window else None
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, mask=mask, is_causal=True, implementation=self.impl,
          local_window_size=window)
    out_BxLxHxDh = constrain(out_BxLxHxDh, ("act_batch", "act_length", "act_heads", None))
    out_BxLxD = self.o(out_BxLxHxDh, rng=lora_rng(adapter_rng, 3))
    return out_BxLxD if cache is None else (out_BxLxD, cache)
