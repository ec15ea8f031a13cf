"""Planning a run for hardware we do not have: compile the real train step ahead of time for a TPU
topology on this machine (libtpu describes the target's chips), report memory per chip against its
HBM, FLOPs and collectives, search layouts that fit (autofit), and estimate GPU memory analytically.

Exit codes of `scripts/train.py --dry_run --target=...` (`PlanError.code`):
  0 fits, 3 does not fit, 4 the mesh does not divide the target's chips, 5 libtpu is missing,
  6 unknown topology name.
"""
from research.plan.targets import PlanError

__all__ = ["PlanError"]
