"""Parameters with logical axis names, and the small layers built from them.

Shape legend: B batch, L length, D embed_dim, F mlp_dim, V vocab, H heads, K kv_heads, Dh head_dim.
Every parameter is an `nnx.Param` with metadata `logical_axes` (one name per dimension), which
`research.sharding` maps to mesh axes.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], init: str | float,
          dtype: jnp.dtype) -> nnx.Param:
  """A parameter initialised as 'zeros', 'ones', or normal with the given std (a float)."""
  shape = tuple(shape)
  if init == "zeros":
    value = jnp.zeros(shape, dtype)
  elif init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    value = (float(init) * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


def matmul(equation: str, x: jax.Array, w: jax.Array, dtype: jnp.dtype, out_dtype=None,
           bias: jax.Array | None = None) -> jax.Array:
  """The one place every weight matmul goes through: inputs in `dtype`, f32 accumulation, plus
  `bias` (broadcast over the output's leading axes) in f32, output in `out_dtype` (default `dtype`;
  the output head asks for f32 logits).

  `equation` is 'x...,w->y' with x's leading axes kept ('...abc' style, as Dense builds) or the tied
  head's 'bld,vd->blv'. Every dtype goes through `_matmul_2d`, whose backward pass is written out
  (see there). The output is named 'matmul' for the remat policies.
  """
  return checkpoint_name(_matmul(equation, x, w, dtype, out_dtype or dtype, bias), "matmul")


def _matmul(equation: str, x: jax.Array, w: jax.Array, dtype: jnp.dtype, out_dtype, bias) -> jax.Array:
  if equation == "bld,vd->blv":
    lead, k = x.shape[:-1], x.shape[-1]
    out = _matmul_2d(x.reshape(-1, k), w, None if bias is None else bias.reshape(-1), True, jnp.dtype(dtype))
    return out.reshape(lead + (w.shape[0],)).astype(out_dtype)
  n_in = len(equation.split(",")[0]) - 3       # x's contracted letters, after '...'
  lead, k = x.shape[:x.ndim - n_in], int(np.prod(x.shape[x.ndim - n_in:]))
  out_shape = w.shape[n_in:]
  out = _matmul_2d(x.reshape(-1, k), w.reshape(k, -1), None if bias is None else bias.reshape(-1), False,
                   jnp.dtype(dtype))
  return out.reshape(lead + out_shape).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _matmul_2d(x_NxK, w, b_M, transposed: bool, dtype) -> jax.Array:
  """[N, K] @ w ([K, M], or [M, K] when `transposed`) (+ b_M) -> [N, M] float32, inputs cast to `dtype`.

  The bias is added to the f32 accumulator here (one rounding fewer than a bf16 add after the
  convert), and its gradient is summed from the f32 cotangent in the same backward. Speed-neutral on
  XLA CPU for the default model (PERFORMANCE.md).
  """
  dims = (((1,), (1,)), ((), ())) if transposed else (((1,), (0,)), ((), ()))
  y = jax.lax.dot_general(x_NxK.astype(dtype), w.astype(dtype), dims, preferred_element_type=jnp.float32)
  return y if b_M is None else y + b_M.astype(jnp.float32)


def _matmul_2d_fwd(x_NxK, w, b_M, transposed, dtype):
  return _matmul_2d(x_NxK, w, b_M, transposed, dtype), (x_NxK, w, b_M)


def _matmul_2d_bwd(transposed, dtype, residuals, dy_NxM):
  # Both gradients run in `dtype` with f32 accumulation, like the forward pass. Written as these
  # einsums (not autodiff's transposes), XLA CPU picks fast layouts: autodiff's own transposes of an
  # f32 einsum made it copy dy transposed and run the weight gradient 2.5x slower (PERFORMANCE.md).
  x_NxK, w, b_M = residuals
  w_lp, dy_lp = w.astype(dtype), dy_NxM.astype(dtype)
  if transposed:   # w is [M, K]
    dx = jax.lax.dot_general(dy_lp, w_lp, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  else:            # w is [K, M]
    dx = jax.lax.dot_general(dy_lp, w_lp, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  dw = _weight_grad(x_NxK, dy_lp, dtype, transposed)
  # The bias gradient sums the f32 cotangent: a long bf16 reduction became reduce-windows on XLA CPU
  # that took ~25 ms each in the default step.
  db = None if b_M is None else dy_NxM.astype(jnp.float32).sum(0).astype(b_M.dtype)
  return dx.astype(x_NxK.dtype), dw.astype(w.dtype), db


def _weight_grad(x_NxK: jax.Array, dy_NxM: jax.Array, dtype, transposed: bool) -> jax.Array:
  """x^T @ dy: [K, M] (or [M, K] when `transposed`) float32, inputs cast to `dtype`.

  Why split N (the token axis) into two contracted axes: for bf16, XLA CPU runs a contraction over
  the first axis of both operands at a quarter of its forward-layout rate; with the split it copies
  the smaller operand transposed and runs the forward-layout kernel, while GPU/TPU merge the two axes
  back into one plain matmul. f32 keeps the plain form. Measurements in PERFORMANCE.md.
  """
  x, dy = x_NxK.astype(dtype), dy_NxM.astype(dtype)
  n, k, m = x.shape[0], x.shape[1], dy.shape[1]
  if jnp.dtype(dtype) == jnp.float32 or n % 2:
    return jnp.einsum("nk,nm->mk" if transposed else "nk,nm->km", x, dy, preferred_element_type=jnp.float32)
  split = lambda a: a.reshape(2, n // 2, a.shape[1])
  if k <= m:
    out, out_is_mk = jnp.einsum("cnk,cnm->km", split(x), split(dy), preferred_element_type=jnp.float32), False
  else:
    out, out_is_mk = jnp.einsum("cnm,cnk->mk", split(dy), split(x), preferred_element_type=jnp.float32), True
  if out_is_mk != transposed:
    # XLA CPU folds a plain `.T` into the dot, which then fails for bf16 ("Unsupported element type
    # for DotThunk"); the barrier keeps the transpose of the small [K, M] result a separate copy.
    out = jax.lax.optimization_barrier(out).T
  return out


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when `rng` is None (evaluation) or rate is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Norm(nnx.Module):
  """LayerNorm (with bias, GPT-2) or RMSNorm (Llama) over the last axis, computed in float32.

  With `scale_offset` the output is multiplied by (offset + scale) and scales start at 0, so the norm
  starts as it would with scales of 1 (Gemma's RMSNorm: 1 + w)."""

  def __init__(self, dim: int, kind: str, eps: float, use_bias: bool, param_dtype, rngs: nnx.Rngs,
               scale_offset: float = 0.0):
    self.kind, self.eps, self.scale_offset = kind, eps, float(scale_offset)
    self.scale = param(rngs, (dim,), ("norm",), "zeros" if self.scale_offset else "ones", param_dtype)
    self.bias = param(rngs, (dim,), ("norm",), "zeros", param_dtype) if use_bias and kind == "layernorm" else None

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    if self.kind == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    y = y * (scale + self.scale_offset if self.scale_offset else scale)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x_BxLxD.dtype)


class Embedding(nnx.Module):
  """A [rows, D] table; `embedding` is looked up by index (and reused as the tied output head)."""

  def __init__(self, rows: int, dim: int, row_axis: str, init_std: float, param_dtype, rngs: nnx.Rngs):
    self.embedding = param(rngs, (rows, dim), (row_axis, "embed"), init_std, param_dtype)


class Dense(nnx.Module):
  """y = x @ kernel (+ bias), with the contraction over x's last `len(in_shape)` axes.

  `lora` (None, or an adapter research/models/lora.py attaches after the model is built) adds its
  low-rank update; `rng` is that adapter's dropout key (None: evaluation, or no adapter)."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_axes: Sequence[str],
               out_axes: Sequence[str], *, use_bias: bool, init_std: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    self.dtype = dtype
    self.kernel = param(rngs, in_shape + out_shape, tuple(in_axes) + tuple(out_axes), init_std, param_dtype)
    self.bias = param(rngs, out_shape, out_axes, "zeros", param_dtype) if use_bias else None
    letters = "abcdefgh"
    ins, outs = letters[:len(in_shape)], letters[len(in_shape):len(in_shape) + len(out_shape)]
    self.equation = f"...{ins},{ins}{outs}->...{outs}"
    self.in_ndim, self.out_ndim = len(in_shape), len(out_shape)   # the kernel's [*in, *out] split
    self.lora = None

  def __call__(self, x: jax.Array, out_dtype=None, rng: jax.Array | None = None) -> jax.Array:
    bias = None if self.bias is None else self.bias[...]
    if self.lora is None:
      return matmul(self.equation, x, self.kernel[...], self.dtype, out_dtype, bias)
    # The base output and the update meet in float32, rounded once to the output dtype.
    y = matmul(self.equation, x, self.kernel[...], self.dtype, jnp.float32, bias)
    return (y + self.lora(x, self.dtype, rng)).astype(out_dtype or self.dtype)
