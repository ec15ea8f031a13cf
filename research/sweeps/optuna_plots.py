"""Optuna's own charts of a finished sweep (parallel coordinates, parameter importances) drawn from
its trial table: an in-memory study rebuilt from the rows, with distributions from sweep.json's
space, so that a report needs neither the study's storage nor a worker.

Importances use PED-ANOVA (Optuna's default since 4.x, numpy and scipy only): fANOVA and
mean-decrease-impurity need scikit-learn, which is not a dependency of this code."""
from __future__ import annotations

import math
import warnings

from research.sweeps import figures
from research.sweeps.table import param_names, value_of

_STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def _plain(value):
  """A param as Optuna stores it (None, bool, int, float, str): anything else as its text."""
  return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _declared(spec: dict):
  from research.sweeps.space import Param
  return Param(kind=spec["kind"], low=spec.get("low"), high=spec.get("high"),
               values=tuple(spec["values"]) if spec.get("values") is not None else None,
               log=bool(spec.get("log")), step=int(spec.get("step") or 1)).distribution()


def _inferred(values: list):
  """A distribution that holds every value seen, for a key the space does not declare (or one
  whose values fall outside its declaration)."""
  import optuna.distributions as d
  numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
  if len(numbers) != len(values) or len(set(values)) < 3:
    return d.CategoricalDistribution(sorted(set(values), key=str))
  low, high = min(numbers), max(numbers)
  if all(isinstance(v, int) for v in numbers):
    return d.IntDistribution(int(low), int(high), log=low > 0 and high / low >= 100)
  return d.FloatDistribution(float(low), float(high), log=low > 0 and high / low >= 100)


def _holds(dist, values) -> bool:
  try:
    return all(dist._contains(dist.to_internal_repr(v)) for v in values)
  except (ValueError, TypeError):
    return False


def distributions(sweep: dict, rows: list[dict]) -> dict:
  """key -> an Optuna distribution for every param a trial carries."""
  out = {}
  for name in param_names(sweep, rows):
    values = [_plain(r["params"][name]) for r in rows if name in r["params"]]
    if not values:
      continue
    dist = None
    if name in sweep["space"]:
      try:
        dist = _declared(sweep["space"][name])
      except (KeyError, TypeError, ValueError):
        dist = None
    out[name] = dist if dist is not None and _holds(dist, values) else _inferred(values)
  return out


def rebuild_study(sweep: dict, rows: list[dict]):
  """An in-memory Optuna study with one finished trial per row (running and unreadable ones left out)."""
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  dists = distributions(sweep, rows)
  study = optuna.create_study(direction=sweep["direction"], study_name=sweep["name"])
  for row in rows:
    state = _STATES.get(row["status"])
    value = value_of(row) if state == "COMPLETE" else None
    if state is None or (state == "COMPLETE" and value is None):
      continue
    params = {k: _plain(v) for k, v in row["params"].items() if k in dists}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: dists[k] for k in params}, value=value,
        state=getattr(optuna.trial.TrialState, state)))
  return study


def _varied(study) -> list[str]:
  """Params that take more than one value among the completed trials."""
  import optuna
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  names = sorted({k for t in complete for k in t.params})
  return [k for k in names if len({repr(t.params.get(k)) for t in complete}) > 1]


def _draw(plot, path: str):
  import matplotlib.pyplot as plt
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")     # Optuna marks its matplotlib plots experimental
    ax = plot()
  fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
  fig.set_size_inches(max(6.4, fig.get_size_inches()[0]), 4.8)
  try:
    return figures.save(fig, path)
  finally:
    plt.close(fig)


def parallel_coordinates(sweep: dict, rows: list[dict], path: str, study=None) -> str:
  """PATH; raises ValueError (the reason) when it cannot be drawn."""
  import optuna
  study = study or rebuild_study(sweep, rows)
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if not complete:
    raise ValueError("no completed trial with a value")
  params = _varied(study) or sorted({k for t in complete for k in t.params})
  if not params:
    raise ValueError("no swept parameter")
  from optuna.visualization.matplotlib import plot_parallel_coordinate
  return _draw(lambda: plot_parallel_coordinate(study, params=params, target_name=sweep["metric"]), path)


def importances(sweep: dict, rows: list[dict], path: str, study=None) -> str:
  """PATH; raises ValueError (the reason) when there is not enough to compare."""
  import optuna
  study = study or rebuild_study(sweep, rows)
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  params = _varied(study)
  if len(complete) < 2:
    raise ValueError(f"needs 2 or more completed trials, has {len(complete)}")
  if len(params) < 2:
    raise ValueError(f"needs 2 or more parameters that vary over completed trials, has {len(params)}")
  if not all(math.isfinite(t.value) for t in complete):
    raise ValueError("a completed trial's value is not finite")
  from optuna.importance import PedAnovaImportanceEvaluator
  from optuna.visualization.matplotlib import plot_param_importances
  return _draw(lambda: plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), params=params,
                                              target_name=sweep["metric"]), path)
