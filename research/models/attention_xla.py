"""Causal attention as plain einsums (the 'xla' implementation), with a written-out backward pass.

softmax(q k^T / sqrt(Dh) + causal/document mask) v; scores and softmax in float32, matmul inputs in
the compute dtype with float32 accumulation, forward and backward.

Why not `jax.nn.dot_product_attention(implementation='xla')` or autodiff: for the default model on XLA
CPU, autodiff's backward ran the [B, H, L, L] matmuls in f32 (the cotangent is f32), some through a
slow generic kernel; this backward runs them in the compute dtype: the attention core's
forward+backward 40 -> 22 ms per layer (PERFORMANCE.md). The residuals are q, k, v, the output and
the probabilities in the compute dtype (not the f32 scores; masked probabilities are 0, so the
backward needs no mask).

Shape legend: B batch, L length (queries), M length (keys), H heads, K kv_heads, G = H / K query
heads per KV head, Dh head_dim. Queries are grouped as [B, L, K, G, Dh]; with G = 1 the size-1 axis is
dropped from the einsums (XLA CPU ran that form ~10% slower in the whole step).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def causal_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL=None,
                     sliding_window: int = 0) -> jax.Array:
  """[B, L, H, Dh] queries, [B, L, K, Dh] keys/values -> [B, L, H, Dh]; `segment_ids_BxL` (packed
  rows) keeps attention inside each document; `sliding_window` > 0 limits each query to that many
  keys, itself included (Mistral's window: key > query - window)."""
  l = q_BxLxHxDh.shape[1]
  pos = jnp.arange(l)
  mask_BxLxL = (pos[:, None] >= pos[None, :])[None]
  if sliding_window:
    mask_BxLxL = mask_BxLxL & (pos[:, None] - pos[None, :] < sliding_window)[None]
  if segment_ids_BxL is not None:
    mask_BxLxL = mask_BxLxL & (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])
  return masked_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, mask_BxLxL)


def masked_attention(q_BxLxHxDh, k_BxMxKxDh, v_BxMxKxDh, mask_BxLxM) -> jax.Array:
  """[B, L, H, Dh] queries over [B, M, K, Dh] keys/values where mask_BxLxM is True -> [B, L, H, Dh]
  (decoding attends L new queries to a cache of M keys through it)."""
  b, l, h, dh = q_BxLxHxDh.shape
  k = k_BxMxKxDh.shape[2]
  q = q_BxLxHxDh if k == h else q_BxLxHxDh.reshape(b, l, k, h // k, dh)
  out = _attend(q, k_BxMxKxDh, v_BxMxKxDh, mask_BxLxM)
  return out.reshape(b, l, h, dh)


def _equations(grouped: bool) -> dict:
  """einsum strings for q [B, L, K, (G,) Dh] and scores [B, K, (G,) L, M]."""
  q, s = ("blkgd", "bkglm") if grouped else ("blkd", "bklm")
  return dict(scores=f"{q},bmkd->{s}", out=f"{s},bmkd->{q}", kv_grad=f"{s},{q}->bmkd",
              row_dot=f"{q},{q}->{s[:-1]}")


def _mask(mask_BxLxL, grouped: bool):
  return mask_BxLxL[:, None, None] if grouped else mask_BxLxL[:, None]


def _masked_scores(q, k_BxMxKxDh, mask_BxLxL, eq):
  scores = jnp.einsum(eq["scores"], q, k_BxMxKxDh, preferred_element_type=F32) * q.shape[-1] ** -0.5
  return jnp.where(_mask(mask_BxLxL, q.ndim == 5), scores, jnp.finfo(F32).min)


@jax.custom_vjp
def _attend(q, k_BxMxKxDh, v_BxMxKxDh, mask_BxLxL):
  """Forward only (evaluation, sampling): the softmax is normalised after the PV matmul, as flash
  attention does. With the normalised probabilities as its input, XLA CPU fused the whole softmax
  into the PV matmul's YNN kernel, which then ran 3x slower (default model: 26 -> 8 ms per layer).
  Training goes through _attend_fwd, which keeps the normalised probabilities for the backward."""
  eq = _equations(q.ndim == 5)
  scores = _masked_scores(q, k_BxMxKxDh, mask_BxLxL, eq)
  unnormalised = jnp.exp(scores - scores.max(-1, keepdims=True))
  out = jnp.einsum(eq["out"], unnormalised.astype(q.dtype), v_BxMxKxDh, preferred_element_type=F32)
  row_sum = jnp.moveaxis(unnormalised.sum(-1), -1, 1)[..., None]    # [B, L, K, (G,) 1]
  return (out / row_sum).astype(q.dtype)


def _attend_fwd(q, k_BxMxKxDh, v_BxMxKxDh, mask_BxLxL):
  eq = _equations(q.ndim == 5)
  scores = _masked_scores(q, k_BxMxKxDh, mask_BxLxL, eq)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum(eq["out"], probs, v_BxMxKxDh, preferred_element_type=F32).astype(q.dtype)
  return out, (q, k_BxMxKxDh, v_BxMxKxDh, probs, out)


def _attend_bwd(residuals, d_out):
  q, k, v, probs, out = residuals
  eq = _equations(q.ndim == 5)
  scale = q.shape[-1] ** -0.5
  # softmax backward: dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O) (as flash
  # attention computes it): from [B, L, H, Dh] tensors, so dS is an elementwise epilogue of the dP
  # matmul and the f32 [B, H, L, L] dP need not be kept. Masked entries have P = 0.
  delta = jnp.einsum(eq["row_dot"], d_out.astype(F32), out.astype(F32))[..., None]
  # The barrier pins d_out to a row-major layout. Without it, when d_out came from an elementwise op
  # (e.g. a loss on the attention output), XLA CPU laid it out transposed for the dP matmul, which
  # then fell back to a dot kernel without bf16 ("Unsupported element type for DotThunk").
  d_out = jax.lax.optimization_barrier(d_out.astype(q.dtype))
  dv = jnp.einsum(eq["kv_grad"], probs, d_out, preferred_element_type=F32)
  d_probs = jnp.einsum(eq["scores"], d_out, v, preferred_element_type=F32)
  d_scores = (probs.astype(F32) * (d_probs - delta) * scale).astype(q.dtype)
  dq = jnp.einsum(eq["out"], d_scores, k, preferred_element_type=F32)
  dk = jnp.einsum(eq["kv_grad"], d_scores, q, preferred_element_type=F32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)
