"""The output head fused with the cross-entropy: final hidden states -> summed weighted token losses,
without keeping the [B, L, V] logits for the backward pass.

Under `jax.grad`, the forward pass computes each chunk's logits, its log-sum-exp and the logits'
gradient (softmax - one_hot) * weight in the compute dtype, and right away that chunk's input
gradient d @ W and its share of the head's weight gradient x^T @ d; the backward pass only scales
those by the loss's cotangent. Only the gradients ([B, L, D] and the head's shape) outlive the
forward pass. Forward-only use (evaluation) runs the primal: chunked logits and log-sum-exp.

Why: on any backend it frees the f32 logits (B*L*V*4 bytes per device), as "vocab tiling" / fused
linear cross-entropy implementations do; on XLA CPU a chunk's logits are small enough for the logits
matmul and the memory-bound passes over them to run faster (measurements: PERFORMANCE.md, "The
output head fused with the cross-entropy").

Numerics equal the unfused path's: bf16 (compute dtype) matmul inputs with f32 accumulation, the
softmax in f32, the logits' gradient rounded to the compute dtype before its two matmuls (as
`layers._matmul_2d`'s backward rounds its cotangent).

Chunks split the sequence axis (each chunk is [B, L / chunks]), so a batch-sharded x stays sharded
the same way. With several chunks on a multi-device mesh the head's weight gradient is reduced across
the batch shards once per chunk; one chunk reduces it once, as the unfused path does. One chunk can
take more memory than the unfused path (the compute-dtype gradient of the whole chunk's logits is
materialised for its two matmuls, which libtpu otherwise fuses into them; TPU numbers in
PERFORMANCE.md), so `train.loss_chunks` defaults to 0 (unfused).

Shape legend: B batch, L length, C chunks, N = B * L / C tokens per chunk, D embed_dim, V vocab.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from research.models.layers import _weight_grad
from research.sharding import constrain

F32 = jnp.float32
# The head's f32 weight gradient accumulates sharded like the head's weight ([D, V]: FSDP x tensor).
_DW_AXES = ("embed", "vocab")


def head_cross_entropy(x_BxLxD: jax.Array, w: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                       *, transposed: bool, dtype, chunks: int = 1) -> jax.Array:
  """sum over tokens of weights * cross_entropy(x @ head, targets): a float32 scalar.

  `w` is the head's weight: [V, D] when `transposed` (the tied embedding table), else [D, V];
  `dtype` is the matmuls' input dtype; `chunks` must divide L.
  """
  l = x_BxLxD.shape[1]
  if chunks < 1 or l % chunks:
    raise ValueError(f"train.loss_chunks={chunks} must be >= 1 and divide the sequence length {l}")
  static = (bool(transposed), jnp.dtype(dtype), int(chunks), x_BxLxD.dtype, w.dtype)
  return _head_ce(x_BxLxD, w, targets_BxL, weights_BxL.astype(F32), static)


def _to_chunks(arrays_BxL, chunks: int) -> tuple:
  """Each [B, L, ...] -> [C, B * L/C, ...]: chunk c holds positions [c L/C, (c+1) L/C) of every row."""

  def split(a):
    b, l = a.shape[:2]
    a = a.reshape((b, chunks, l // chunks) + a.shape[2:])
    return jnp.moveaxis(a, 1, 0).reshape((chunks, b * (l // chunks)) + a.shape[3:])

  return tuple(split(a) for a in arrays_BxL)


def _from_chunks(a_CxNx, b: int):
  """Inverse of _to_chunks: [C, B * L/C, ...] -> [B, L, ...]."""
  c, n = a_CxNx.shape[:2]
  a = a_CxNx.reshape((c, b, n // b) + a_CxNx.shape[2:])
  return jnp.moveaxis(a, 0, 1).reshape((b, c * (n // b)) + a_CxNx.shape[2:])


def _chunk_logits(x_NxD, w, transposed: bool, dtype):
  """[N, V] float32 logits of one chunk, the vocab axis sharded like the head."""
  contract = 1 if transposed else 0
  x_NxD = constrain(x_NxD, ("act_batch", None))
  logits = jax.lax.dot_general(x_NxD.astype(dtype), w.astype(dtype), (((1,), (contract,)), ((), ())),
                               preferred_element_type=F32)
  return constrain(logits, ("act_batch", "act_vocab"))


def _softmax_terms(logits_NxV, targets_N):
  """(exp(logits - max) [N, V], its row sums [N, 1], log-sum-exp [N], target logit [N]), all f32."""
  is_target = jnp.arange(logits_NxV.shape[1])[None, :] == targets_N[:, None]
  row_max = jax.lax.stop_gradient(logits_NxV.max(-1, keepdims=True))
  unnormalised = jnp.exp(logits_NxV - row_max)
  row_sum = unnormalised.sum(-1, keepdims=True)
  log_sum_exp = (jnp.log(row_sum) + row_max)[:, 0]
  target_logit = jnp.where(is_target, logits_NxV, 0.0).sum(-1)
  return unnormalised, row_sum, log_sum_exp, target_logit, is_target


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_ce(x_BxLxD, w, targets_BxL, weights_BxL, static):
  """Forward only: the loss sum, chunk by chunk. `static` = (transposed, dtype, chunks, x dtype,
  w dtype)."""
  transposed, dtype, chunks, _, _ = static

  def body(total, inputs):
    x_NxD, targets_N, weights_N = inputs
    _, _, lse, target_logit, _ = _softmax_terms(_chunk_logits(x_NxD, w, transposed, dtype), targets_N)
    return total + ((lse - target_logit) * weights_N).sum(), None

  chunked = _to_chunks((x_BxLxD, targets_BxL, weights_BxL), chunks)
  total, _ = jax.lax.scan(body, jnp.zeros((), F32), chunked)
  return total


def _head_ce_fwd(x_BxLxD, w, targets_BxL, weights_BxL, static):
  transposed, dtype, chunks, _, _ = static
  b = x_BxLxD.shape[0]

  def body(carry, inputs):
    total, dw_DxV = carry
    x_NxD, targets_N, weights_N = inputs
    logits = _chunk_logits(x_NxD, w, transposed, dtype)
    unnormalised, row_sum, lse, target_logit, is_target = _softmax_terms(logits, targets_N)
    total = total + ((lse - target_logit) * weights_N).sum()
    # d loss / d logits = (softmax - one_hot) * weight, one fused pass over the chunk's logits.
    scaled = unnormalised * (weights_N[:, None] / row_sum)
    d_NxV = jnp.where(is_target, scaled - weights_N[:, None], scaled).astype(dtype)
    contract = 0 if transposed else 1
    dx_NxD = jax.lax.dot_general(d_NxV, w.astype(dtype), (((1,), (contract,)), ((), ())),
                                 preferred_element_type=F32)
    # Accumulated as [D, V] (x^T d, the fast layout on XLA CPU); transposed once after the loop.
    dw_DxV = constrain(dw_DxV + _weight_grad(x_NxD, d_NxV, dtype, False), _DW_AXES)
    return (total, dw_DxV), dx_NxD

  d, v = x_BxLxD.shape[-1], w.shape[0] if transposed else w.shape[1]
  dw_init = constrain(jnp.zeros((d, v), F32), _DW_AXES)
  chunked = _to_chunks((x_BxLxD, targets_BxL, weights_BxL), chunks)
  (total, dw_DxV), dx_CxNxD = jax.lax.scan(body, (jnp.zeros((), F32), dw_init), chunked)
  # The barrier keeps the transpose a copy of the small result: folded into the dot, XLA CPU's bf16
  # kernel rejects the layout (as in layers._weight_grad).
  dw = jax.lax.optimization_barrier(dw_DxV).T if transposed else dw_DxV
  return total, (_from_chunks(dx_CxNxD, b), dw)


def _head_ce_bwd(static, residuals, d_total):
  x_dtype, w_dtype = static[3:]
  dx_BxLxD, dw = residuals
  return (dx_BxLxD * d_total).astype(x_dtype), (dw * d_total).astype(w_dtype), None, None


_head_ce.defvjp(_head_ce_fwd, _head_ce_bwd)
