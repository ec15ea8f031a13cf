"""Everything jitted for a run, built once from a completed config, its task and a mesh: the sharded
state initialiser, the train step and the eval step, with their shardings. The trainer, the tests,
the planner and the benchmark all go through `build_program`, so they run exactly the same compiled
code."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from research.models import abstract_model
from research.tasks import model_extensions
from research.sharding import activation_rules, config_rules, logical_to_spec
from research.train.optimizer import make_l1_penalty, make_optimizer
from research.train.state import TrainState, make_init_fn, state_shardings
from research.train.step import make_eval_step, make_train_step
from research.train.trainable import Partition, lora_own, run_partition


@dataclasses.dataclass
class TrainProgram:
  cfg: Any
  task: Any                        # research.tasks.Task: batch spec, loss
  mesh: jax.sharding.Mesh
  rules: tuple
  graphdef: Any
  abstract_params: Any
  partition: Partition             # trainable / frozen parameters
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  l1_penalty: Callable | None      # optimizer.l1's penalty on the trainable parameters (None: off)
  shardings: TrainState            # a TrainState of NamedShardings
  batch_shardings: dict            # batch key -> NamedSharding, from the task's logical axes
  replicated: NamedSharding

  def init_state(self) -> TrainState:
    with activation_rules(self.mesh, self.rules):
      return jax.jit(self._init_fn(), out_shardings=self.shardings)()

  def _init_fn(self):
    return make_init_fn(self.cfg.model, self.optimizer, self.cfg.seed, self.partition,
                        model_extensions(self.cfg))

  def abstract_batch(self, batch_size: int, seq_len: int) -> dict:
    """The task's batch spec as sharded ShapeDtypeStructs."""
    return {k: jax.ShapeDtypeStruct(f.shape(batch_size, seq_len), f.dtype, sharding=self.batch_shardings[k])
            for k, f in self.task.batch_spec().items()}

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(self._init_fn())
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, self.shardings)

  def checkpoint_view(self, state: TrainState) -> TrainState:
    """What a checkpoint holds of `state` (real or abstract): all of it, but for a LoRA run only its
    own parameters (adapters, finetune.init_new's): the frozen base is read again from its path."""
    if self.cfg.lora.rank == 0:
      return state
    return state.replace(params=lora_own(self.cfg).split(state.params)[0])

  def compile_train_step(self, batch_size: int | None = None, seq_len: int | None = None) -> Callable:
    """Lowers and compiles ahead of time: (state, batch) -> (state, metrics); the state is donated."""
    t = self.cfg.train
    step = jax.jit(make_train_step(self.graphdef, self.optimizer, self.schedule, self.task, t.microbatches,
                                   self.partition, self.l1_penalty),
                   in_shardings=(self.shardings, self.batch_shardings),
                   out_shardings=(self.shardings, self.replicated), donate_argnums=0)
    with activation_rules(self.mesh, self.rules):
      lowered = step.lower(self.abstract_state(), self.abstract_batch(batch_size or t.batch_size,
                                                                       seq_len or t.seq_len))
      return lowered.compile()

  def eval_step(self) -> Callable:
    """(params, batch) -> the task's summed statistics, jitted with the params' shardings."""
    fn = jax.jit(make_eval_step(self.graphdef, self.task),
                 in_shardings=(self.shardings.params, self.batch_shardings), out_shardings=self.replicated)

    def run(params, batch):
      with activation_rules(self.mesh, self.rules):
        return fn(params, batch)

    return run

  def put_batch(self, batch: dict) -> dict:
    """This process's rows -> global arrays laid out over the mesh."""
    rows = next(iter(batch.values())).shape[0] * jax.process_count()
    return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v, (rows,) + v.shape[1:])
            for k, v in batch.items()}

  def synthetic_batch(self, seed: int = 0):
    """A function () -> a global batch of random rows (this process's share), for benchmarks."""
    t, rng = self.cfg.train, np.random.default_rng(seed)
    rows = t.batch_size // jax.process_count()
    return lambda: self.put_batch(self.task.synthetic_batch(rows, t.seq_len, rng))


def build_program(cfg, mesh: jax.sharding.Mesh, task=None) -> TrainProgram:
  """`cfg` must be completed (research.train.setup.complete_config: validated, vocabulary resolved);
  `task` defaults to the one task.name names."""
  if task is None:
    from research.tasks import get_task
    task = get_task(cfg)
  rules = config_rules(cfg)
  graphdef, abstract_params, names = abstract_model(cfg.model, model_extensions(cfg))
  partition = run_partition(cfg)
  partition.check(abstract_params)
  trainable, _ = partition.split(abstract_params)
  optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.num_steps, trainable)
  l1_penalty = make_l1_penalty(cfg.optimizer, trainable)
  batch_shardings = {k: NamedSharding(mesh, logical_to_spec(f.axes, rules, mesh))
                     for k, f in task.batch_spec().items()}
  return TrainProgram(
      cfg=cfg, task=task, mesh=mesh, rules=rules, graphdef=graphdef, abstract_params=abstract_params,
      partition=partition, optimizer=optimizer, schedule=schedule, l1_penalty=l1_penalty,
      shardings=state_shardings(mesh, rules, optimizer, abstract_params, names, partition),
      batch_shardings=batch_shardings, replicated=NamedSharding(mesh, PartitionSpec()))
