"""Device mesh and logical-axis sharding rules.

Owns: building the (data, fsdp, tensor) mesh from config, turning logical axis names
(batch, embed, mlp, ...) into PartitionSpecs, and sharding constraints on activations.
Must not know about models, optimizers or data formats: it maps names to mesh axes, nothing more.
"""
from research.sharding.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from research.sharding.rules import (
    DEFAULT_RULES,
    activation_rules,
    config_rules,
    constrain,
    logical_to_spec,
    named_sharding,
    tree_shardings,
)

__all__ = [
    "MESH_AXES", "make_mesh", "resolve_mesh_shape", "DEFAULT_RULES", "activation_rules", "config_rules",
    "constrain", "logical_to_spec", "named_sharding", "tree_shardings",
]
