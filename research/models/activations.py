"""MLP activations, computed in float32 whatever the compute dtype.

Why: XLA CPU has no bf16 vector arithmetic, so a bf16 GELU is converted around every op (about 3x
slower than in f32; measurements in PERFORMANCE.md), and f32 is the more accurate choice everywhere.

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

# Gated hidden layers, act(gate) * up, each one fused f32 loop: SwiGLU (Llama) and GeGLU with the tanh
# GELU (Gemma's gelu_pytorch_tanh).
swiglu = f32_pointwise(lambda gate, up: jax.nn.silu(gate) * up)
geglu = f32_pointwise(lambda gate, up: jax.nn.gelu(gate, approximate=True) * up)
GATED = {"swiglu": swiglu, "geglu": geglu}
