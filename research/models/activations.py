"""MLP activations, computed in float32 whatever the compute dtype.

XLA CPU has no bf16 vector arithmetic: a bf16 GELU is converted element by element around every op,
and its autodiff backward again. On the default model's [4096, 1024] hidden layer `jax.nn.gelu` in
bf16 took 5.2 ms forward and 10.1 ms forward+backward; the same GELU in f32 (inputs and output in
bf16) 1.8 and 2.1 ms (PERFORMANCE.md). On GPU and TPU this elementwise work is memory-bound, so f32
math costs little there, and it is the more accurate choice everywhere.

`f32_pointwise` saves only the (compute-dtype) inputs for the backward pass and recomputes the
function there inside one fused loop, rather than keeping autodiff's f32 intermediates (a [B, L, F]
f32 tanh per layer for GELU).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

F32 = jnp.float32


def f32_pointwise(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """fn(*xs) evaluated in float32; the result has xs[0]'s dtype, each gradient its input's dtype."""

  @jax.custom_vjp
  def apply(*xs):
    return fn(*(x.astype(F32) for x in xs)).astype(xs[0].dtype)

  def apply_fwd(*xs):
    return apply(*xs), xs

  def apply_bwd(xs, dy):
    # The barrier keeps XLA from merging this recomputation with the forward pass's (CSE), which
    # would keep the forward's f32 intermediates (GELU's tanh: [B, L, F] f32) alive until here.
    xs = jax.lax.optimization_barrier(xs)
    _, vjp = jax.vjp(fn, *(x.astype(F32) for x in xs))
    return tuple(g.astype(x.dtype) for g, x in zip(vjp(dy.astype(F32)), xs))

  apply.defvjp(apply_fwd, apply_bwd)
  return apply


ACTIVATIONS = {
    "gelu_tanh": f32_pointwise(lambda x: jax.nn.gelu(x, approximate=True)),
    "gelu": f32_pointwise(lambda x: jax.nn.gelu(x, approximate=False)),
    "relu": jax.nn.relu,   # exact in any dtype: no conversion needed
}

# SwiGLU's hidden layer: silu(gate) * up, one fused f32 loop.
swiglu = f32_pointwise(lambda gate, up: jax.nn.silu(gate) * up)
