"""Convert parameters between the per-layer layout ('blocks/<i>/...', model.scan_layers=False) and
the stacked layout ('blocks/...' with a leading [num_layers] axis, model.scan_layers=True), so a
checkpoint trained one way loads into a model built the other way."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np


def stack_layers(params: dict) -> dict:
  """{'blocks': {0: tree, 1: tree, ...}, ...} -> {'blocks': tree of [num_layers, ...] arrays, ...}."""
  blocks = params["blocks"]
  layers = [blocks[i] for i in sorted(blocks, key=int)]
  xp = _array_module(layers[0])
  return {**params, "blocks": jax.tree.map(lambda *xs: xp.stack(xs), *layers)}


def unstack_layers(params: dict) -> dict:
  """The inverse of `stack_layers`."""
  blocks = params["blocks"]
  n = jax.tree.leaves(blocks)[0].shape[0]
  return {**params, "blocks": {i: jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n)}}


def is_stacked(params: dict) -> bool:
  return not all(isinstance(k, int) or str(k).isdigit() for k in params["blocks"])


def to_layout(params: dict, scan_layers: bool) -> dict:
  """`params` in the layout a model with model.scan_layers=`scan_layers` expects."""
  if is_stacked(params) == scan_layers:
    return params
  return stack_layers(params) if scan_layers else unstack_layers(params)


def _array_module(tree: Any):
  leaf = jax.tree.leaves(tree)[0]
  return np if isinstance(leaf, np.ndarray) else jax.numpy
