"""The sweep's pruner: Optuna's median or successive-halving (ASHA) pruner on the metric reported at
each evaluation, comparing a trial with the other trials only."""
from __future__ import annotations

import optuna

from research.sweeps.space import Sweep

# Trial roles (study.py sets them): a popped copy of a point already held elsewhere, a trial popped
# after the fixed design ran out, and an attempt whose worker died (its point resumes in a new trial).
NOT_A_POINT = ("duplicate", "stray")
LOST = "lost"


def make_pruner(sweep: Sweep):
  options = dict(sweep.pruner_options)
  if sweep.pruner == "median":
    return _AttemptsThatCount(optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 0, **options}))
  if sweep.pruner == "successive_halving":   # ASHA: asynchronous, so it suits many workers
    return _AttemptsThatCount(optuna.pruners.SuccessiveHalvingPruner(**options))
  return optuna.pruners.NopPruner()


class _AttemptsThatCount(optuna.pruners.BasePruner):
  """A pruner that compares a trial with the other trials only: a resumed trial's earlier, lost
  attempt (and duplicates) would otherwise compete with it at every rung it already passed."""

  def __init__(self, inner):
    self.inner = inner

  def prune(self, study, trial) -> bool:
    return self.inner.prune(_StudyView(study), trial)


class _StudyView:
  def __init__(self, study):
    self._study = study

  def __getattr__(self, name):
    return getattr(self._study, name)

  def get_trials(self, deepcopy: bool = True, states=None):
    return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
            if t.user_attrs.get("role") not in NOT_A_POINT + (LOST,)]
