"""Logical axis names -> mesh axes.

Every parameter carries a tuple of logical names (one per dimension), e.g. ('embed', 'mlp');
main activations carry 'act_*' names. An ordered list of rules (logical name -> mesh axis, tuple
of mesh axes, or None) turns them into PartitionSpecs. Parameters and activations use separate
names so that, e.g., 'embed' can be FSDP-sharded in weights while activations are batch-sharded
over the same mesh axis.

A mesh axis is used at most once per array, and an axis (or group of axes) that does not divide
the dimension is dropped for that array (it stays replicated there) rather than failing.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

# Ordered: the first rule for a name wins. Mesh axes are ('data', 'fsdp', 'tensor').
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),          # the stacked-blocks axis of model.scan_layers
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def config_rules(cfg) -> Rules:
  """cfg.mesh.rules as a tuple of (logical name, mesh axes), list values made tuples."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in cfg.mesh.rules)


def _as_axes(value: Any) -> tuple[str, ...]:
  if value is None:
    return ()
  if isinstance(value, str):
    return (value,)
  return tuple(value)


def logical_to_spec(names: Sequence[str | None], rules: Rules, mesh: jax.sharding.Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical names to a PartitionSpec.

  With `mesh` and `shape`, mesh axes that do not divide their dimension are dropped.
  """
  table: dict[str, tuple[str, ...]] = {}
  for name, axes in rules:
    table.setdefault(name, _as_axes(axes))
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(names):
    axes = tuple(a for a in table.get(name, ()) if a not in used) if name else ()
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None and axes:
        size = 1
        for a in axes:
          size *= mesh.shape[a]
        if shape[dim] % size:
          axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: jax.sharding.Mesh, names: Sequence[str | None], rules: Rules,
                   shape: Sequence[int] | None = None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape))


def tree_shardings(mesh: jax.sharding.Mesh, names_tree: Any, shapes_tree: Any, rules: Rules) -> Any:
  """NamedShardings for a pytree, given matching pytrees of logical names and of arrays/shapes."""
  is_names = lambda x: isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)
  return jax.tree.map(lambda n, a: named_sharding(mesh, n, rules, a.shape), names_tree, shapes_tree,
                      is_leaf=is_names)


# Activation constraints -------------------------------------------------------------------------
# The model calls `constrain(x, names)` on its main activations. It is a no-op unless a trainer has
# entered `activation_rules(mesh, rules)` around tracing, so models stay usable outside a mesh.
_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules: Rules) -> Iterator[None]:
  previous = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = (mesh, tuple(rules))
  try:
    yield
  finally:
    _ACTIVE.value = previous


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, rules, x.shape))
