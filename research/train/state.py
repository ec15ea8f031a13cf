"""The train state (a pytree of arrays), its logical sharding, and its sharded initialisation."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.models import build_model
from research.sharding import tree_shardings
from research.train.trainable import Partition


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32: train steps taken (batches consumed)
  params: Any                # every parameter (trainable and frozen), a pure dict as nnx.split gives
  opt_state: Any             # optimizer state of the trainable parameters only
  rng: jax.Array             # uint32[2]: dropout key; each step folds in its step number
  skipped_steps: jax.Array   # int32: updates skipped because the loss or gradient was not finite


def state_shardings(mesh, rules, optimizer: optax.GradientTransformation, abstract_params, param_names,
                    partition: Partition):
  """NamedShardings for every leaf of TrainState: params by their logical names, optimizer moments
  like the parameter they track, scalars replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_sh = tree_shardings(mesh, param_names, abstract_params, rules)
  trainable_sh, _ = partition.split(param_sh)
  trainable, _ = partition.split(abstract_params)
  abstract_opt = jax.eval_shape(optimizer.init, trainable)
  # optax states hold copies of the trainable tree (mu, nu) and scalars (count): match by structure.
  treedef = jax.tree.structure(trainable)

  def opt_leaf_shardings(node):
    if jax.tree.structure(node) == treedef:
      return trainable_sh
    return jax.tree.map(lambda _: replicated, node)

  opt_sh = jax.tree.map(opt_leaf_shardings, abstract_opt, is_leaf=lambda n: jax.tree.structure(n) == treedef)
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                    skipped_steps=replicated)


def make_init_fn(model_cfg, optimizer, seed: int, partition: Partition, extensions=()):
  """A function () -> TrainState, to be jitted with out_shardings so each device makes only its shards."""

  def init() -> TrainState:
    params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    model = build_model(model_cfg, nnx.Rngs(params=params_key), extensions)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    trainable, _ = partition.split(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(trainable),
                      rng=dropout_key, skipped_steps=jnp.zeros((), jnp.int32))

  return init
