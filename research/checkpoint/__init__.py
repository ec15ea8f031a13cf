"""Checkpoints with Orbax: the train state, the data iterator's state and run metadata, per step.

Owns: the CheckpointManager (async saves, save and retention policies), restoring onto any mesh
(targets carry shardings, so each device reads only its shards), the fallback past unreadable
step directories, readable errors for checkpoints that do not fit the model, and preemption.
Must not import the trainer.
"""
from research.checkpoint.manager import (
    CheckpointError,
    Checkpointer,
    check_compatible,
)
from research.checkpoint.preemption import PreemptionWatcher

__all__ = ["CheckpointError", "Checkpointer", "check_compatible", "PreemptionWatcher"]
