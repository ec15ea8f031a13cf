"""The train and eval steps: pure functions of (state, batch), jitted by the trainer.

A batch is a dict of [B, L] arrays: `inputs`, `targets` (int32), `weights` (float32, 0 on padding),
and optionally `positions` and `segment_ids` for packed rows.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.sharding import constrain
from research.train.head_loss import head_cross_entropy
from research.train.state import TrainState

MODEL_INPUTS = ("positions", "segment_ids")


def loss_sums(graphdef, params, batch, dropout_rng, loss_chunks: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted token cross-entropies, sum of weights), both float32.

  `loss_chunks` >= 1 runs the output head fused with the cross-entropy in that many chunks along the
  sequence (`head_loss.head_cross_entropy`: no [B, L, V] logits kept for the backward); 0 computes
  the full f32 logits and optax's cross-entropy (the plain reference path).
  """
  model = nnx.merge(graphdef, params)
  extra = {k: batch[k] for k in MODEL_INPUTS if k in batch}
  weights_BxL = batch["weights"].astype(jnp.float32)
  if loss_chunks == 0:
    logits_BxLxV = model(batch["inputs"], dropout_rng=dropout_rng, **extra)
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()
  x_BxLxD = model.hidden_states(batch["inputs"], dropout_rng=dropout_rng, **extra)
  head, transposed = model.head_weight()
  loss_sum = head_cross_entropy(x_BxLxD, head, batch["targets"], weights_BxL, transposed=transposed,
                                dtype=model.dtype, chunks=loss_chunks)
  return loss_sum, weights_BxL.sum()


def all_finite(tree) -> jax.Array:
  """One bool: every element of every leaf is finite (one pass over the leaves; not a sum of squares,
  which overflows to Inf for large but finite values)."""
  return jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]).all()


def _split_microbatches(batch, num: int):
  """[B, ...] -> [num, B/num, ...], microbatch i taking rows i, i+num, ... so every device's local
  rows feed every microbatch (no data movement across the batch-sharded axis)."""

  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    return constrain(x, (None, "act_batch") + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    microbatches: int = 1, loss_chunks: int = 0) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  The gradient is the mean over all weighted tokens of the global batch, accumulated over
  `microbatches` sequential chunks (so accumulation equals one large-batch step). An update whose
  loss, gradient or resulting parameters are not finite is not applied (params and optimizer state
  stay as they were); `metrics['finite']` tells the host, which stops or counts per `train.nonfinite`
  (`metrics['update_finite']` says whether the parameters were the cause).
  """
  grad_fn = jax.value_and_grad(lambda p, b, r: loss_sums(graphdef, p, b, r, loss_chunks), has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if microbatches == 1:
      (loss_sum, weight_sum), grads = grad_fn(state.params, batch, rng)
    else:
      def body(carry, xs):
        micro, index = xs
        (l, w), g = grad_fn(state.params, micro, jax.random.fold_in(rng, index))
        acc_l, acc_w, acc_g = carry
        return (acc_l + l, acc_w + w, jax.tree.map(jnp.add, acc_g, g)), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
      (loss_sum, weight_sum, grads), _ = jax.lax.scan(
          body, init, (_split_microbatches(batch, microbatches), jnp.arange(microbatches)))
    denom = jnp.maximum(weight_sum, 1.0)
    loss = loss_sum / denom
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    grad_norm = optax.global_norm(grads)

    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # Finite loss and gradients can still give non-finite parameters (a learning rate that overflows,
    # bfloat16 parameters past their range); such an update is skipped too.
    update_finite = all_finite(new_params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & update_finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    applied = state.step - state.skipped_steps  # optimizer updates so far = the schedule's count
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        skipped_steps=state.skipped_steps + (1 - finite.astype(jnp.int32)),
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(applied),
               "finite": finite, "update_finite": update_finite, "skipped_steps": new_state.skipped_steps, "tokens": weight_sum}
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, loss_chunks: int = 0) -> Callable:
  """eval_step(params, batch) -> (loss sum, weight sum), summed over the batch for exact averaging."""

  def eval_step(params, batch):
    return loss_sums(graphdef, params, batch, None, loss_chunks)

  return eval_step
