"""What a sweep declares: the search space over config keys, the sampler, the metric, the budget.

An experiment file (or a file under experiments/sweeps/) defines `get_sweep() -> Sweep`:

    Sweep(base="experiments/default.py",
          space={"optimizer.learning_rate": loguniform(3e-4, 3e-2, grid=(1e-3, 3e-3, 1e-2)),
                 "model.embed_dim": choice(64, 128),
                 "model.num_kv_heads": choice(1, 2, when={"model.arch": ("llama",)})},
          sampler="grid", metric="eval_loss", num_steps=300)

Keys are config keys; a key that is not one (a free name such as "flops_budget") is allowed when
`derive(params) -> {config key: value}` turns it into config values. A parameter with
`when={key: values}` is sampled only where an earlier parameter took one of those values.

`grid` and `random` are fixed designs, expanded here up front (the same seed gives the same
trials, whatever the number of workers); `tpe` asks Optuna's sampler one trial at a time. Every
point runs once per seed in `seeds` (tpe: one seed). A trial's id is a hash of its parameters and
seed: the same point is never run twice, and a trial's workdir is DIR/trials/<id>.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
from typing import Any, Callable

import ml_collections

from research.config import ConfigError

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "successive_halving")
KINDS = ("loguniform", "uniform", "int", "choice")


@dataclasses.dataclass(frozen=True)
class Param:
  kind: str                            # one of KINDS
  low: float | None = None
  high: float | None = None
  values: tuple | None = None          # choice: its values; other kinds: the grid's points (sampler=grid)
  log: bool = False                    # int: sampled on a log scale
  step: int = 1                        # int
  when: dict | None = None             # {earlier key: allowed values}: sampled only there

  def suggest(self, trial, name: str):
    """The value of `name` for an Optuna trial (an enqueued trial's fixed value, else sampled)."""
    if self.kind == "choice":
      return trial.suggest_categorical(name, list(self.values))
    if self.kind == "int":
      return trial.suggest_int(name, int(self.low), int(self.high), step=self.step, log=self.log)
    return trial.suggest_float(name, self.low, self.high, log=self.kind == "loguniform")

  def distribution(self):
    import optuna
    d = optuna.distributions
    if self.kind == "choice":
      return d.CategoricalDistribution(list(self.values))
    if self.kind == "int":
      return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step)
    return d.FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

  def applies(self, params: dict) -> bool:
    return all(params.get(key, _MISSING) in tuple(values) for key, values in (self.when or {}).items())

  def as_dict(self) -> dict:
    return {"kind": self.kind, "low": self.low, "high": self.high,
            "values": list(self.values) if self.values is not None else None, "log": self.log, "step": self.step,
            "when": {k: list(v) for k, v in self.when.items()} if self.when else None}


_MISSING = object()


def loguniform(low: float, high: float, grid=None, when=None) -> Param:
  return Param("loguniform", float(low), float(high), _tuple(grid), when=_when(when))


def uniform(low: float, high: float, grid=None, when=None) -> Param:
  return Param("uniform", float(low), float(high), _tuple(grid), when=_when(when))


def integer(low: int, high: int, log: bool = False, step: int = 1, grid=None, when=None) -> Param:
  return Param("int", int(low), int(high), _tuple(grid), log=log, step=step, when=_when(when))


def choice(*values, when=None) -> Param:
  return Param("choice", values=tuple(values), when=_when(when))


def _tuple(values):
  return None if values is None else tuple(values)


def _when(when):
  return None if not when else {k: tuple(v) if isinstance(v, (tuple, list)) else (v,) for k, v in when.items()}


@dataclasses.dataclass
class Sweep:
  base: Any                            # "experiments/x.py[:variant]", or a ConfigDict
  space: dict                          # config key (or free name) -> Param, in sampling order
  metric: str = "eval_loss"            # an eval_<name> the run logs, or a (dotted) key of summary.json
  direction: str = "minimize"
  sampler: str = "tpe"
  num_trials: int | None = None        # grid: defaults to the grid's size x seeds
  num_steps: int | None = None         # each trial's train.num_steps (None: the base config's)
  pruner: str | None = None            # None, "median" or "successive_halving" (ASHA)
  pruner_options: dict = dataclasses.field(default_factory=dict)   # keyword arguments of Optuna's pruner
  seeds: tuple = (0,)                  # config.seed of each point's trials
  overrides: dict = dataclasses.field(default_factory=dict)        # config values every trial sets
  derive: Callable[[dict], dict] | None = None                     # params -> more config values
  name: str = ""                       # the study's name (default: the sweep file's name)
  sampler_seed: int = 0                # random's design, tpe's sampler

  def validate(self, where: str) -> "Sweep":
    def fail(msg):
      raise ConfigError(f"{where}: {msg}")
    if self.sampler not in SAMPLERS:
      fail(f"sampler={self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if self.direction not in ("minimize", "maximize"):
      fail(f"direction={self.direction!r}; choose minimize or maximize")
    if self.pruner is not None and self.pruner not in PRUNERS:
      fail(f"pruner={self.pruner!r}; choose one of {', '.join(PRUNERS)} or None")
    if self.pruner and not self.metric.startswith("eval_"):
      fail(f"pruning needs a metric reported at each evaluation (an eval_<name> key); got metric={self.metric!r}")
    if not self.space:
      fail("the space is empty; give at least one key")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      fail(f"seeds={tuple(self.seeds)} must be distinct and at least one")
    if self.sampler == "tpe" and len(self.seeds) != 1:
      fail("tpe runs each suggestion once: give one seed (grid and random run every point per seed)")
    if self.sampler != "grid" and not self.num_trials:
      fail(f"sampler={self.sampler} needs num_trials")
    if self.num_trials is not None and self.num_trials < 1:
      fail(f"num_trials={self.num_trials} must be at least 1")
    names = list(self.space)
    for i, (key, p) in enumerate(self.space.items()):
      if not isinstance(p, Param) or p.kind not in KINDS:
        fail(f"space[{key!r}] must be loguniform(...), uniform(...), integer(...) or choice(...)")
      if p.kind == "choice" and not p.values:
        fail(f"space[{key!r}]: choice() needs at least one value")
      if p.kind != "choice":
        if not p.low < p.high and not (p.kind == "int" and p.low == p.high):
          fail(f"space[{key!r}]: low={p.low} must be below high={p.high}")
        if p.kind == "loguniform" and p.low <= 0:
          fail(f"space[{key!r}]: loguniform needs low > 0 (got {p.low})")
        if self.sampler == "grid" and p.values is None and p.kind != "int":
          fail(f"space[{key!r}]: sampler=grid needs its points: {p.kind}({p.low}, {p.high}, grid=(...))")
        outside = [v for v in (p.values or ()) if not p.low <= v <= p.high]
        if outside:
          fail(f"space[{key!r}]: grid points {outside} lie outside [{p.low}, {p.high}]")
      for other in (p.when or {}):
        if other not in names[:i]:
          fail(f"space[{key!r}] when={{{other!r}: ...}}: {other!r} must be a key declared before it")
    return self

  def points(self) -> list[dict]:
    """grid / random: every point of the design, in order (tpe has no fixed design)."""
    if self.sampler == "grid":
      out = _grid(list(self.space.items()), {})
    elif self.sampler == "random":
      out = _random_points(self, self.num_trials)
    else:
      raise ValueError("tpe has no fixed design")
    return out

  def design(self) -> list[tuple[dict, int]]:
    """grid / random: (params, seed) of every trial: each point once per seed; grid's num_trials (if
    given) keeps the first ones."""
    trials = [(p, s) for p in self.points() for s in self.seeds]
    return trials[:self.num_trials] if self.sampler == "grid" and self.num_trials else trials

  def suggest(self, trial) -> dict:
    """Define-by-run: the parameters of an Optuna trial, conditional keys only where they apply."""
    params: dict = {}
    for key, p in self.space.items():
      if p.applies(params):
        params[key] = p.suggest(trial, key)
    return params

  def as_dict(self) -> dict:
    """The declaration as JSON (DIR/sweep.json; the study's record of what created it)."""
    return {"name": self.name, "base": self.base if isinstance(self.base, str) else "(a config from get_sweep)",
            "space": {k: p.as_dict() for k, p in self.space.items()}, "sampler": self.sampler,
            "metric": self.metric, "direction": self.direction, "num_trials": self.num_trials,
            "num_steps": self.num_steps, "pruner": self.pruner, "pruner_options": dict(self.pruner_options),
            "seeds": list(self.seeds), "overrides": dict(self.overrides), "sampler_seed": self.sampler_seed}


def _grid(items: list, params: dict) -> list[dict]:
  """Cartesian product in declaration order; a conditional key branches only where it applies."""
  if not items:
    return [dict(params)]
  (key, p), rest = items[0], items[1:]
  if not p.applies(params):
    return _grid(rest, params)
  values = p.values if p.values is not None else tuple(range(int(p.low), int(p.high) + 1, p.step))
  return [point for v in values for point in _grid(rest, {**params, key: v})]


def _random_points(sweep: Sweep, n: int) -> list[dict]:
  """n distinct points from Optuna's RandomSampler with sweep.sampler_seed (fewer when a small
  discrete space has fewer)."""
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sweep.sampler_seed))
  points, seen = [], set()
  for _ in range(20 * n):
    trial = study.ask()
    params = sweep.suggest(trial)
    study.tell(trial, 0.0)
    key = _canonical(params)
    if key not in seen:
      seen.add(key)
      points.append(params)
      if len(points) == n:
        break
  return points


def _canonical(params: dict) -> str:
  return json.dumps(params, sort_keys=True, default=str)


def trial_id(params: dict, seed: int) -> str:
  """12 hex digits of a hash of the parameters and seed: a trial's name and workdir."""
  return hashlib.sha256(_canonical({"params": params, "seed": int(seed)}).encode()).hexdigest()[:12]


def trial_overrides(sweep: Sweep, params: dict, seed: int, base: ml_collections.ConfigDict) -> dict:
  """Every config value a trial sets: the sweep's overrides, its config-key parameters, derive()'s
  values, the seed and the step budget."""
  out = dict(sweep.overrides)
  out.update({k: v for k, v in params.items() if is_config_key(base, k)})
  if sweep.derive is not None:
    out.update(sweep.derive(dict(params)))
  out["seed"] = int(seed)
  if sweep.num_steps:
    out["train.num_steps"] = int(sweep.num_steps)
  return out


def is_config_key(cfg, key: str) -> bool:
  node = cfg
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return not isinstance(node, ml_collections.ConfigDict)


def check_keys(sweep: Sweep, base: ml_collections.ConfigDict, where: str) -> None:
  """Free names need derive(); derive's and the overrides' keys must be config keys; the values of
  a sample point must parse (one-line errors naming the key)."""
  from research.config.cli import apply_overrides
  free = [k for k in sweep.space if not is_config_key(base, k)]
  if free and sweep.derive is None:
    raise ConfigError(f"{where}: space key {free[0]!r} is not a config key (and the sweep has no derive() "
                      "turning it into config values)")
  for key in sweep.overrides:
    if not is_config_key(base, key):
      raise ConfigError(f"{where}: overrides key {key!r} is not a config key")
  sample = sweep.points()[0] if sweep.sampler != "tpe" else _random_points(sweep, 1)[0]
  values = trial_overrides(sweep, sample, sweep.seeds[0], base)
  for key in values:
    if not is_config_key(base, key):
      raise ConfigError(f"{where}: derive() returned {key!r}, which is not a config key")
  apply_overrides(base.copy_and_resolve_references(), config_flags(values))


def config_flags(values: dict) -> list[str]:
  """{key: value} -> ['--config.key=value', ...] as scripts/train.py parses them."""
  return [f"--config.{k}={format_value(v)}" for k, v in values.items()]


def format_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, float):
    return repr(v) if math.isfinite(v) else str(v)
  if isinstance(v, (tuple, list)):
    return repr(tuple(v))
  return str(v)


def load_sweep(path: str) -> Sweep:
  """The Sweep of a file's get_sweep(), validated (its name defaults to the file's stem)."""
  if not os.path.isfile(path):
    raise ConfigError(f"--sweep={path}: no such file")
  spec = importlib.util.spec_from_file_location(f"sweep_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"--sweep={path}: line {e.lineno}: {e.msg}") from None
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - the file's own error, named in one line
    raise ConfigError(f"--sweep={path}: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"--sweep={path}: {path} defines no get_sweep()")
  try:
    sweep = module.get_sweep()
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"--sweep={path}: get_sweep() raised {type(e).__name__}: {e}") from None
  if not isinstance(sweep, Sweep):
    raise ConfigError(f"--sweep={path}: get_sweep() must return research.sweeps.Sweep, not {type(sweep).__name__}")
  if not sweep.name:
    sweep.name = os.path.splitext(os.path.basename(path))[0]
  return sweep.validate(path)

