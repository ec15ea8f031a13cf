"""Everything jitted for a run, built once from a validated config and a mesh: the sharded state
initialiser, the train step and the eval step, with their shardings. The trainer, the tests and
the benchmark all go through `build_program`, so they run exactly the same compiled code."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from research.sharding import activation_rules, logical_to_spec
from research.train.optimizer import make_optimizer
from research.train.state import TrainState, abstract_model, make_init_fn, state_shardings
from research.train.step import make_eval_step, make_train_step


def mesh_rules(cfg) -> tuple:
  """cfg.mesh.rules as a tuple of (logical name, mesh axes) with list values made tuples."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in cfg.mesh.rules)


@dataclasses.dataclass
class TrainProgram:
  cfg: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  graphdef: Any
  abstract_params: Any
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: TrainState            # a TrainState of NamedShardings
  batch_sharding: NamedSharding    # [B, L] arrays: batch over (data, fsdp)
  replicated: NamedSharding

  def init_state(self) -> TrainState:
    init = make_init_fn(self.cfg.model, self.optimizer, self.cfg.seed)
    with activation_rules(self.mesh, self.rules):
      return jax.jit(init, out_shardings=self.shardings)()

  def abstract_batch(self, batch_size: int, seq_len: int) -> dict:
    """inputs/targets/weights, plus positions/segment_ids when data.packing is 'pack'."""
    keys = ("inputs", "targets", "weights") + (("positions", "segment_ids") if self.packed else ())
    return {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32 if k == "weights" else jnp.int32,
                                    sharding=self.batch_sharding) for k in keys}

  @property
  def packed(self) -> bool:
    return self.cfg.data.packing == "pack"

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(make_init_fn(self.cfg.model, self.optimizer, self.cfg.seed))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, self.shardings)

  def compile_train_step(self, batch_size: int | None = None, seq_len: int | None = None) -> Callable:
    """Lowers and compiles ahead of time: (state, batch) -> (state, metrics); the state is donated."""
    t = self.cfg.train
    step = jax.jit(make_train_step(self.graphdef, self.optimizer, self.schedule, t.microbatches,
                                   t.loss_chunks),
                   in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, self.replicated), donate_argnums=0)
    with activation_rules(self.mesh, self.rules):
      lowered = step.lower(self.abstract_state(), self.abstract_batch(batch_size or t.batch_size,
                                                                       seq_len or t.seq_len))
      return lowered.compile()

  def eval_step(self) -> Callable:
    """(params, batch) -> (loss sum, weight sum), jitted with the params' shardings."""
    fn = jax.jit(make_eval_step(self.graphdef, self.cfg.train.loss_chunks),
                 in_shardings=(self.shardings.params, self.batch_sharding), out_shardings=self.replicated)

    def run(params, batch):
      with activation_rules(self.mesh, self.rules):
        return fn(params, batch)

    return run

  def put_batch(self, batch: dict) -> dict:
    """This process's rows -> global arrays laid out over the mesh."""
    rows = batch["inputs"].shape[0] * jax.process_count()
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v, (rows,) + v.shape[1:])
            for k, v in batch.items()}


def build_program(cfg, mesh: jax.sharding.Mesh) -> TrainProgram:
  """`cfg` must be validated and have model.vocab_size resolved."""
  rules = mesh_rules(cfg)
  graphdef, abstract_params, names = abstract_model(cfg.model)
  optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.num_steps, abstract_params)
  return TrainProgram(
      cfg=cfg, mesh=mesh, rules=rules, graphdef=graphdef, abstract_params=abstract_params,
      optimizer=optimizer, schedule=schedule,
      shardings=state_shardings(mesh, rules, optimizer, abstract_params, names),
      batch_sharding=NamedSharding(mesh, logical_to_spec(("act_batch", None), rules, mesh)),
      replicated=NamedSharding(mesh, PartitionSpec()))
