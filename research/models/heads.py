"""Heads a task puts on a backbone's hidden states: `ClassifierHead` (pool the text's tokens, dropout,
one Dense layer to the class logits).

The head is added to a built backbone as one attribute (`model.cls_head`, see
`research.tasks.classify`), so its parameters sit under one top-level name ('cls_head/...') beside
the backbone's unchanged paths: a language-model checkpoint loads into the backbone and the head
starts fresh; a run that freezes or adapts the backbone names the head with one pattern.

Shape legend: B batch, L length, D embed_dim, C classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.layers import DTYPES, Dense, dropout, param

POOLINGS = ("last", "mean", "attention", "cls")
HEAD_NAME = "cls_head"       # the attribute (and top-level parameter name) of the head on the model


def pool(x_BxLxD: jax.Array, mask_BxL: jax.Array, pooling: str, scores_BxL: jax.Array | None = None) -> jax.Array:
  """[B, D] float32 from the hidden states of the text tokens (mask 1; padding 0).

  last: the last text token (padding is on the right); mean: the text tokens' average; cls: the
  first token; attention: the text tokens weighted by softmax(scores_BxL) over the text tokens.
  A row without text tokens (the zero rows that pad the last eval batch) pools to finite values.
  """
  x = x_BxLxD.astype(jnp.float32)
  mask = mask_BxL.astype(jnp.float32)
  if pooling == "cls":
    return x[:, 0]
  if pooling == "last":
    last_B = jnp.maximum(mask.sum(-1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x, last_B[:, None, None], axis=1)[:, 0]
  if pooling == "mean":
    return (x * mask[..., None]).sum(1) / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
  if pooling == "attention":
    scores = jnp.where(mask > 0, scores_BxL.astype(jnp.float32), -1e30)
    weights_BxL = jax.nn.softmax(scores, axis=-1) * mask  # a row of padding only: all weights 0
    return jnp.einsum("bl,bld->bd", weights_BxL, x)
  raise ValueError(f"classify.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")


class ClassifierHead(nnx.Module):
  """head(x_BxLxD, mask_BxL, dropout_rng) -> logits_BxC (float32).

  attention pooling scores each token additively against a learned query:
  score_t = query . tanh(x_t W + b) (Bahdanau-style, the query folded into the bias), so the head
  learns which tokens speak for the label.
  """

  def __init__(self, embed_dim: int, num_classes: int, pooling: str, rate: float, init_std: float,
               dtype: str, param_dtype: str, rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f"classify.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    self.pooling, self.rate = pooling, rate
    compute, storage = DTYPES[dtype], DTYPES[param_dtype]
    if pooling == "attention":
      self.attn = Dense((embed_dim,), (embed_dim,), ("embed",), ("embed_out",), use_bias=True,
                        init_std=init_std, dtype=jnp.float32, param_dtype=storage, rngs=rngs)
      self.query = param(rngs, (embed_dim,), ("embed_out",), init_std, storage)
    else:
      self.attn, self.query = None, None
    # The logits leave in float32 whatever the compute dtype (the loss and softmax want them exact).
    self.out = Dense((embed_dim,), (num_classes,), ("embed",), ("classes",), use_bias=True,
                     init_std=init_std, dtype=compute, param_dtype=storage, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    scores_BxL = None
    if self.attn is not None:
      h_BxLxD = jnp.tanh(self.attn(x_BxLxD.astype(jnp.float32), out_dtype=jnp.float32))
      scores_BxL = h_BxLxD @ self.query[...].astype(jnp.float32)
    pooled_BxD = pool(x_BxLxD, mask_BxL, self.pooling, scores_BxL)
    pooled_BxD = dropout(pooled_BxD, self.rate, dropout_rng)
    return self.out(pooled_BxD, out_dtype=jnp.float32)


def head_params(embed_dim: int, num_classes: int, pooling: str) -> int:
  """The head's parameter count (exact; the trainer checks it against the built model)."""
  attention = embed_dim * embed_dim + 2 * embed_dim if pooling == "attention" else 0
  return attention + embed_dim * num_classes + num_classes


def head_flops_per_example(embed_dim: int, num_classes: int, pooling: str, seq_len: int) -> float:
  """Training FLOPs (forward + backward, 6 per multiply-add of a matmul) of the head for one row."""
  attention = seq_len * (embed_dim * embed_dim + embed_dim) if pooling == "attention" else 0
  return 6.0 * (attention + embed_dim * num_classes)
