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


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None,
              dcn_shape: Sequence[int] | None = None) -> jax.sharding.Mesh:
  """Builds the mesh over `devices` (default: all devices of all processes).

  `shape` is the global mesh. `dcn_shape` (config `mesh.dcn_shape`; default all 1) splits each axis
  across granules joined by the data-centre network: TPU slices (multi-slice) or, when the devices
  are all in one slice (GPU nodes, CPU processes), processes. Each granule then holds a contiguous
  block of shape[i] / dcn_shape[i] along every axis, so collectives over the other axes stay on the
  fast interconnect (MaxText's ici/dcn split; usually dcn_shape = (slices, 1, 1): data parallel
  across slices).

  Axis types are Auto, deliberately: shardings come from our logical-axis rules on parameters,
  inputs and a few activation constraints, and XLA's sharding propagation fills in the rest
  (as MaxText does). Explicit axes would make every einsum carry an out_sharding.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  dcn = tuple(dcn_shape or (1,) * len(MESH_AXES))
  if math.prod(dcn) > 1 or len(dcn) != len(MESH_AXES):
    return jax.sharding.Mesh(hybrid_device_grid(shape, dcn, devices), MESH_AXES, axis_types=axis_types)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def check_dcn_shape(shape: Sequence[int], dcn: Sequence) -> None:
  """Raises ValueError (naming `mesh.dcn_shape`) unless `dcn` has one positive int per axis, each
  dividing the resolved global `shape`'s entry."""
  dcn = tuple(dcn)
  if len(dcn) != len(MESH_AXES) or any(not isinstance(d, int) or d < 1 for d in dcn):
    raise ValueError(f"mesh.dcn_shape={dcn}: needs {len(MESH_AXES)} positive integers, one per axis {MESH_AXES}")
  if any(s % d for s, d in zip(shape, dcn)):
    raise ValueError(f"mesh.dcn_shape={dcn} must divide mesh.shape={tuple(shape)} axis by axis (it says how "
                     f"many slices / processes each axis spans)")


def hybrid_device_grid(shape: tuple[int, ...], dcn: tuple[int, ...], devices: list) -> np.ndarray:
  """Devices arranged as `shape` with each granule (slice, else process) a block of shape / dcn."""
  check_dcn_shape(shape, dcn)
  # Slices when the devices span several (TPU multi-slice); else processes (GPU nodes, CPU processes,
  # whose devices report no slice index or all the same one).
  by_slice = len({getattr(d, "slice_index", None) for d in devices}) > 1
  granules = {d.slice_index if by_slice else d.process_index for d in devices}
  if len(granules) != math.prod(dcn):
    kind = "slices" if by_slice else "processes"
    raise ValueError(f"mesh.dcn_shape={dcn} spans {math.prod(dcn)} granules, but the devices come from "
                     f"{len(granules)} {kind}; make the product of mesh.dcn_shape {len(granules)}")
  from jax.experimental import mesh_utils
  ici = tuple(s // d for s, d in zip(shape, dcn))
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)
