"""The train and eval steps: pure functions of (state, batch), jitted by the program.

The batch is whatever the task's batch spec says (research/tasks); the task's loss gives summed
statistics, so the gradient is an exact mean over the global batch however it is split into
microbatches, devices or hosts. Parameters the partition freezes get no gradient and no update.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.sharding import constrain
from research.train.state import TrainState
from research.train.trainable import Partition, join


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


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule, task,
                    microbatches: int = 1, partition: Partition | None = None,
                    l1_penalty: Callable | None = None) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  The gradient is the mean over all weighted tokens of the global batch, accumulated over
  `microbatches` sequential chunks (so accumulation equals one large-batch step). An update whose
  loss, gradient or resulting parameters are not finite is not applied (params and optimizer state
  stay as they were); `metrics['finite']` tells the host, which stops or counts per `train.nonfinite`
  (`metrics['update_finite']` says whether the parameters were the cause).
  `l1_penalty` (optimizer.make_l1_penalty): trainable -> (value, gradient), added after the mean, so
  the gradient is that of mean loss + l1 * sum |w|; metrics['loss'] stays the task's loss (as
  eval_loss is) and metrics['l1_penalty'] holds the penalty.
  """
  partition = partition or Partition()

  def loss_fn(trainable, frozen, batch, rng):
    loss_sum, weight_sum, _ = task.loss(nnx.merge(graphdef, join(trainable, frozen)), batch, rng)
    return loss_sum, weight_sum

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    trainable, frozen = partition.split(state.params)
    if microbatches == 1:
      (loss_sum, weight_sum), grads = grad_fn(trainable, frozen, batch, rng)
    else:
      def body(carry, xs):
        micro, index = xs
        (l, w), g = grad_fn(trainable, frozen, micro, jax.random.fold_in(rng, index))
        acc_l, acc_w, acc_g = carry
        return (acc_l + l, acc_w + w, jax.tree.map(jnp.add, acc_g, g)), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
      init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
      (loss_sum, weight_sum, grads), _ = jax.lax.scan(
          body, init, (_split_microbatches(batch, microbatches), jnp.arange(microbatches)))
    denom = jnp.maximum(weight_sum, 1.0)
    loss = loss_sum / denom
    if l1_penalty is None:
      grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, trainable)
    else:
      penalty, penalty_grads = l1_penalty(trainable)
      grads = jax.tree.map(lambda g, q, p: (g / denom + q).astype(p.dtype), grads, penalty_grads, trainable)
    grad_norm = optax.global_norm(grads)

    updates, new_opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    new_params = join(new_trainable, frozen)
    # Finite loss and gradients can still give non-finite parameters (a learning rate that overflows,
    # bfloat16 parameters past their range); such an update is skipped too.
    update_finite = all_finite(new_trainable)
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
    if l1_penalty is not None:
      metrics["l1_penalty"] = penalty
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, task) -> Callable:
  """eval_step(params, batch) -> the task's summed statistics (a dict of f32 scalars) for the batch,
  summed again over batches for exact averaging."""

  def eval_step(params, batch):
    return task.loss(nnx.merge(graphdef, params), batch, None)[2]

  return eval_step
