"""One jitted function of (params, host batch) -> host arrays, placed on one device or on a run's mesh.

The scoring code (scoring.py, classify.py) never knows where it runs: scripts/eval.py gives it a
model loaded on one device (`Runner.local`), training gives it the run's sharded parameters and mesh
(`Runner.on_mesh`: the parameters' own shardings, the batch split over the batch axes as the eval
step's is, the outputs replicated so that every process reads them whole). Every process calls it
with the same host batch: in a multi-process run the call is collective, and the result is the same
on every process.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


class Runner:
  """runner(batch) -> fn(params, batch) as numpy arrays; fn is jitted once and compiles once per
  batch shape (callers keep shapes fixed: [B, L] with L one of a few buckets)."""

  def __init__(self, fn: Callable, params: Any, param_shardings: Any = None, mesh=None, rules=None):
    self.params, self.mesh, self.rules = params, mesh, rules
    if mesh is None:
      self._fn = jax.jit(fn)
      self._batch_sharding = None
    else:
      from research.sharding import logical_to_spec
      self._batch_sharding = lambda ndim: NamedSharding(
          mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules, mesh))
      self._fn = jax.jit(fn, in_shardings=(param_shardings, None), out_shardings=NamedSharding(mesh, PartitionSpec()))

  @classmethod
  def local(cls, fn: Callable, params: Any) -> "Runner":
    """On the default device (a model from research.load_model)."""
    return cls(fn, params)

  @classmethod
  def on_mesh(cls, fn: Callable, params: Any, param_shardings: Any, mesh, rules) -> "Runner":
    """On a run's mesh, with its (sharded, possibly multi-process) parameters."""
    return cls(fn, params, param_shardings, mesh, rules)

  def with_params(self, params: Any) -> "Runner":
    """The same compiled function on other parameters of the same structure (training's latest)."""
    other = object.__new__(Runner)
    other.__dict__.update(self.__dict__, params=params)
    return other

  def __call__(self, batch: dict[str, np.ndarray]) -> Any:
    return self.fetch(self.dispatch(batch))

  def dispatch(self, batch: dict[str, np.ndarray]) -> Any:
    """Starts the computation and returns its (device) outputs without waiting for them."""
    if self.mesh is None:
      return self._fn(self.params, {k: jax.numpy.asarray(v) for k, v in batch.items()})
    from research.sharding import activation_rules
    # Every process holds the whole batch; each device takes its rows from it (callback), so no
    # process needs to know which rows the others hold.
    placed = {k: jax.make_array_from_callback(v.shape, self._batch_sharding(v.ndim), lambda i, v=v: v[i])
              for k, v in batch.items()}
    with activation_rules(self.mesh, self.rules):
      return self._fn(self.params, placed)

  @staticmethod
  def fetch(outputs: Any) -> Any:
    """Device outputs -> numpy (replicated on a mesh: every process reads them whole)."""
    return jax.tree.map(np.asarray, outputs)
