"""The train state (a pytree of arrays), its logical sharding, and its sharded initialisation."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.models import DecoderLM
from research.sharding import tree_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32: train steps taken (batches consumed)
  params: Any                # pure dict of arrays, as nnx.split(model, nnx.Param) gives
  opt_state: Any
  rng: jax.Array             # uint32[2]: dropout key; each step folds in its step number
  skipped_steps: jax.Array   # int32: updates skipped because the loss or gradient was not finite


def abstract_model(model_cfg) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, abstract params as a pure dict, logical axis names as a matching pure dict)."""
  model = nnx.eval_shape(lambda: DecoderLM(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  names: dict = {}
  for path, variable in nnx.to_flat_state(params):
    node = names
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = variable.get_metadata()["logical_axes"]
  return graphdef, nnx.to_pure_dict(params), names


def state_shardings(mesh, rules, optimizer: optax.GradientTransformation, abstract_params, param_names):
  """NamedShardings for every leaf of TrainState: params by their logical names, optimizer moments
  like the parameter they track, scalars replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_sh = tree_shardings(mesh, param_names, abstract_params, rules)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  # optax states hold copies of the params tree (mu, nu) and scalars (count): match by tree structure.
  params_treedef = jax.tree.structure(abstract_params)

  def opt_leaf_shardings(node):
    if jax.tree.structure(node) == params_treedef:
      return param_sh
    return jax.tree.map(lambda _: replicated, node)

  opt_sh = jax.tree.map(opt_leaf_shardings, abstract_opt,
                        is_leaf=lambda n: jax.tree.structure(n) == params_treedef)
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                    skipped_steps=replicated)


def make_init_fn(model_cfg, optimizer, seed: int):
  """A function () -> TrainState, to be jitted with out_shardings so each device makes only its shards."""

  def init() -> TrainState:
    params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    model = DecoderLM(model_cfg, rngs=nnx.Rngs(params=params_key))
    params = _pure_params(model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=dropout_key, skipped_steps=jnp.zeros((), jnp.int32))

  return init


def _pure_params(model) -> Any:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))
