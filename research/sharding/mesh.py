"""The physical device mesh over the axes (data, fsdp, tensor)."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Returns `shape` with at most one -1 replaced by the devices the other axes leave.

  Raises ValueError (naming `mesh.shape`) when the shape cannot cover `num_devices` exactly.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh.shape={shape}: needs {len(MESH_AXES)} entries, one per axis {MESH_AXES}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh.shape={shape}: entries must be positive, or -1 for 'the rest'")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape={shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"mesh.shape={shape}: the fixed axes use {known} devices, which does not divide the "
          f"{num_devices} available")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"mesh.shape={shape} uses {math.prod(shape)} devices but {num_devices} are available; "
        f"choose a shape whose product is {num_devices} (one entry may be -1)")
  return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the mesh over `devices` (default: all devices of all processes).

  Axis types are Auto, deliberately: shardings come from our logical-axis rules on parameters,
  inputs and a few activation constraints, and XLA's sharding propagation fills in the rest
  (as MaxText does). Explicit axes would make every einsum carry an out_sharding.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)
