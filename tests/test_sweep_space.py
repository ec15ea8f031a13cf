"""Sweep declarations without running trials: grid and random designs (conditional keys, seeds),
trial ids, the study's handing-out of trials (duplicates, stale trials taken over) on a journal file,
storage refusals, one-line errors for bad declarations, and the trial shapes --dry_run plans."""
import os
import subprocess
import sys

import optuna
import pytest

from research.config import ConfigError
from research.sweeps import Sweep, choice, integer, loguniform, uniform
from research.sweeps.shapes import trial_shapes
from research.sweeps.space import check_keys, config_flags, load_sweep, trial_id, trial_overrides
from research.sweeps.storage import open_storage
from research.sweeps.study import WAIT, Coordinator, open_study

from tests.helpers import ROOT, tiny_config


def _sweep(**kw):
  space = kw.pop("space", {"optimizer.learning_rate": loguniform(1e-4, 1e-2, grid=(1e-3, 1e-2)),
                           "model.arch": choice("gpt2", "llama"),
                           "model.num_kv_heads": choice(1, 2, when={"model.arch": ("llama",)})})
  return Sweep(base="experiments/default.py", space=space, name="t", **kw).validate("test")


def test_grid_expands_conditional_keys_only_where_they_apply():
  design = _sweep(sampler="grid", seeds=(0, 1)).design()
  points = [p for p, s in design if s == 0]
  assert len(design) == 12 and len(points) == 6     # 2 lr x (gpt2 + llama x 2 kv heads), x 2 seeds
  assert {"optimizer.learning_rate": 1e-3, "model.arch": "gpt2"} in points
  assert all(("model.num_kv_heads" in p) == (p["model.arch"] == "llama") for p in points)
  assert len({trial_id(p, s) for p, s in design}) == 12
  assert len(_sweep(sampler="grid", num_trials=5).design()) == 5
  # an integer without grid points: every value of its range
  assert [p["model.num_layers"] for p in Sweep(base="x", space={"model.num_layers": integer(1, 3)}, sampler="grid")
          .validate("t").points()] == [1, 2, 3]


def test_random_design_is_seeded_distinct_and_inside_the_space():
  a = _sweep(sampler="random", num_trials=8).points()
  assert a == _sweep(sampler="random", num_trials=8).points()            # same seed, same trials
  assert a != _sweep(sampler="random", num_trials=8, sampler_seed=1).points()
  assert len({trial_id(p, 0) for p in a}) == 8
  assert all(1e-4 <= p["optimizer.learning_rate"] <= 1e-2 for p in a)
  assert all(("model.num_kv_heads" in p) == (p["model.arch"] == "llama") for p in a)
  # a small discrete space gives fewer distinct points than asked, not repeats
  small = Sweep(base="x", space={"model.arch": choice("gpt2", "llama")}, sampler="random", num_trials=5)
  assert len(small.validate("t").points()) == 2


def test_trial_id_depends_on_parameters_and_seed_only():
  p = {"optimizer.learning_rate": 3e-3, "model.embed_dim": 64}
  assert trial_id(p, 0) == trial_id(dict(reversed(list(p.items()))), 0)
  assert trial_id(p, 0) != trial_id(p, 1) != trial_id({**p, "model.embed_dim": 128}, 1)


@pytest.mark.parametrize("kw, message", [
    ({"sampler": "bayes"}, "choose one of grid, random, tpe"),
    ({"sampler": "grid", "space": {"optimizer.learning_rate": loguniform(1e-4, 1e-2)}}, "needs its points"),
    ({"sampler": "random"}, "needs num_trials"),
    ({"pruner": "hyperband"}, "choose one of median, successive_halving"),
    ({"pruner": "median", "metric": "final_eval_loss"}, "needs a metric reported at each evaluation"),
    ({"sampler": "tpe", "num_trials": 4, "seeds": (0, 1)}, "give one seed"),
    ({"space": {"optimizer.learning_rate": loguniform(0, 1)}, "sampler": "tpe", "num_trials": 2}, "low > 0"),
    ({"space": {"a": uniform(0, 1, grid=(2,))}, "sampler": "grid"}, "outside"),
    ({"space": {"b": choice(1, when={"a": 1}), "a": choice(1)}, "sampler": "grid"}, "declared before it"),
])
def test_bad_declarations_are_refused_in_one_line(kw, message):
  with pytest.raises(ConfigError, match=message) as e:
    _sweep(**kw)
  assert "\n" not in str(e.value)


def test_keys_values_and_derive_are_checked_against_the_base_config(tmp_path):
  base = tiny_config("x", str(tmp_path))
  check_keys(_sweep(sampler="grid"), base, "s.py")
  with pytest.raises(ConfigError, match="'optimizer.lr' is not a config key"):
    check_keys(Sweep(base="x", space={"optimizer.lr": choice(1.0)}, sampler="grid"), base, "s.py")
  with pytest.raises(ConfigError, match="model.embed_dim='wide' must be an int"):
    check_keys(Sweep(base="x", space={"model.embed_dim": choice("wide")}, sampler="grid"), base, "s.py")
  derive = lambda p: {"model.embed_dim": 32 * p["width"], "train.num_steps": 10}  # noqa: E731
  sweep = Sweep(base="x", space={"width": choice(1, 2)}, sampler="grid", derive=derive, num_steps=None)
  check_keys(sweep, base, "s.py")
  assert trial_overrides(sweep, {"width": 2}, 3, base) == {"model.embed_dim": 64, "train.num_steps": 10, "seed": 3}
  bad = Sweep(base="x", space={"width": choice(1)}, sampler="grid", derive=lambda p: {"model.wide": 1})
  with pytest.raises(ConfigError, match="derive\\(\\) returned 'model.wide'"):
    check_keys(bad, base, "s.py")
  assert config_flags({"a.b": 1e-3, "c": True, "d": (2, 2, 1)}) == ["--config.a.b=0.001", "--config.c=true",
                                                                      "--config.d=(2, 2, 1)"]


def test_load_sweep_errors_name_the_file(tmp_path):
  with pytest.raises(ConfigError, match="no such file"):
    load_sweep(str(tmp_path / "none.py"))
  f = tmp_path / "s.py"
  f.write_text("def get_config():\n  return 1\n")
  with pytest.raises(ConfigError, match="defines no get_sweep"):
    load_sweep(str(f))
  f.write_text("from research.sweeps import Sweep, choice\n"
               "def get_sweep():\n  return Sweep(base='x', space={'seed': choice(1, 2)}, sampler='grid')\n")
  assert load_sweep(str(f)).name == "s"


def test_sqlite_is_refused_for_many_machines_and_schemes_are_checked(tmp_path):
  with pytest.raises(ConfigError, match="SQLite cannot coordinate workers on several machines"):
    open_storage(f"sqlite:///{tmp_path}/s.db", str(tmp_path), many_machines=True)
  assert isinstance(open_storage(f"sqlite:///{tmp_path}/s.db", str(tmp_path), many_machines=False),
                    optuna.storages.RDBStorage)
  with pytest.raises(ConfigError, match="unknown scheme 'redis2'"):
    open_storage("redis2://x", str(tmp_path), many_machines=False)
  # the script says so in one line and exits 1
  sweep = tmp_path / "s.py"
  sweep.write_text("from research.sweeps import Sweep, choice\n"
                   "def get_sweep():\n  return Sweep(base='experiments/default.py', space={'seed': choice(1)}, "
                   "sampler='grid')\n")
  done = subprocess.run([sys.executable, "scripts/sweep.py", f"--sweep={sweep}", f"--workdir={tmp_path / 'w'}",
                         "--worker", f"--storage=sqlite:///{tmp_path}/s.db"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 1 and done.stderr.strip().startswith("error: --storage=sqlite")


def _coordinator(tmp_path, sweep, **kw):
  storage = open_storage(None, str(tmp_path), many_machines=False)
  return Coordinator(sweep, open_study(sweep, storage), log=lambda *a: None, **kw)


def test_every_design_trial_is_handed_out_once_and_duplicates_are_skipped(tmp_path):
  sweep = _sweep(sampler="grid")
  a, b = _coordinator(tmp_path, sweep), _coordinator(tmp_path, sweep)
  seen_by_b = _census_and_trials(b)               # two workers started at once: both saw an empty study
  a._enqueue_design(*_census_and_trials(a))
  b._enqueue_design(*seen_by_b)                  # so every point is enqueued twice
  claims = []
  for c in (a, b) * 12:
    claim = c.next_claim()
    if claim not in (None, WAIT):
      claims.append(claim)
      c.finish(claim, "complete", 1.0)
  assert sorted(c.trial_id for c in claims) == sorted(trial_id(p, s) for p, s in sweep.design())
  assert a.next_claim() is None and b.next_claim() is None
  roles = [t.user_attrs.get("role") for t in a.study.get_trials()]
  assert roles.count("run") == 6 and roles.count("duplicate") == 6


def _census_and_trials(c):
  from research.sweeps.study import _census
  trials = c.study.get_trials(deepcopy=False)
  return _census(trials), trials


def test_a_stale_trial_is_taken_over_with_its_parameters(tmp_path):
  sweep = _sweep(sampler="grid", num_trials=1)
  a = _coordinator(tmp_path, sweep, grace_s=0.0)
  claim = a.next_claim()
  # a worker on another machine that stopped beating: after grace_s of silence it is taken over
  a.storage.set_trial_system_attr(claim.trial._trial_id, "owner", {"host": "elsewhere", "pid": 1, "worker": "w"})
  a._mine.clear()
  b = _coordinator(tmp_path, sweep, grace_s=0.0)
  again = b.next_claim()
  assert again not in (None, WAIT) and again.trial_id == claim.trial_id and again.attempt == 2 and again.takeover
  lost = a.study.get_trials()[claim.trial.number]
  assert lost.state.name == "FAIL" and lost.user_attrs["role"] == "lost" and "no heartbeat" in lost.user_attrs["error"]
  # the dead worker's late finish cannot overwrite the takeover
  with pytest.raises((ValueError, RuntimeError)):
    a.finish(claim, "complete", 0.5)


def test_dry_run_shapes_cover_every_shape_once(tmp_path):
  base = tiny_config("x", str(tmp_path))
  sweep = Sweep(base="x", space={"optimizer.learning_rate": loguniform(1e-4, 1e-2),
                                 "model.embed_dim": choice(32, 64), "model.num_layers": integer(1, 40)},
                sampler="tpe", num_trials=10).validate("t")
  shapes = trial_shapes(sweep, base)
  assert {(s["model.embed_dim"], s["model.num_layers"]) for s in shapes} == {(e, n) for e in (32, 64)
                                                                             for n in (1, 20, 40)}
  assert all("optimizer.learning_rate" not in s for s in shapes)
  grid = Sweep(base="x", space={"optimizer.learning_rate": loguniform(1e-4, 1e-2, grid=(1e-3, 1e-2)),
                                "train.batch_size": choice(8, 16)}, sampler="grid").validate("t")
  assert sorted(s["train.batch_size"] for s in trial_shapes(grid, base)) == [8, 16]



def test_sweep_dry_run_refuses_a_space_with_a_shape_that_does_not_fit(tmp_path):
  base = tmp_path / "base.py"
  base.write_text("from research.config import base_config\nfrom research.models import apply_preset\n"
                  "def get_config():\n  c = base_config()\n  apply_preset(c.model, 'llama-1b')\n"
                  "  c.model.scan_layers, c.model.remat, c.model.dtype = True, 'full', 'bfloat16'\n"
                  "  c.train.batch_size, c.train.seq_len = 8, 2048\n  c.mesh.shape = (1, 1, 1)\n  return c\n")
  sweep = tmp_path / "big.py"
  sweep.write_text("from research.sweeps import Sweep, choice, loguniform\n"
                   f"def get_sweep():\n  return Sweep(base={str(base)!r}, space={{'optimizer.learning_rate': "
                   "loguniform(1e-4, 1e-3), 'model.num_layers': choice(8, 88)}, sampler='tpe', num_trials=20)\n")
  done = subprocess.run([sys.executable, "scripts/sweep.py", f"--sweep={sweep}", "--dry_run", "--target=a100-40",
                         "--target_devices=1", f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert done.returncode == 3, done.stdout + done.stderr
  assert "2 distinct trial shape(s) on a100-40" in done.stdout
  assert "fits           model.num_layers=8  [17.91 GiB of 37.25 GiB]" in done.stdout
  assert "DOES NOT FIT   model.num_layers=88" in done.stdout
  assert done.stderr.strip().splitlines()[-1] == ("error: 1 of 2 trial shapes do not fit; narrow the space or change "
                                                  "the layout (see the lines above)")
  assert not (tmp_path / "w" / "trials").exists()     # nothing ran


def test_tpe_asks_until_num_trials_distinct_trials_and_stops_on_an_exhausted_space(tmp_path):
  sweep = Sweep(base="x", space={"optimizer.learning_rate": loguniform(1e-4, 1e-2)}, sampler="tpe", num_trials=3,
                name="tpe").validate("t")
  c = _coordinator(tmp_path / "a", sweep)
  ids = []
  while (claim := c.next_claim()) not in (None, WAIT):
    ids.append(claim.trial_id)
    c.finish(claim, "complete", claim.params["optimizer.learning_rate"])
  assert len(set(ids)) == 3
  small = Sweep(base="x", space={"model.arch": choice("gpt2", "llama")}, sampler="tpe", num_trials=5,
                name="small").validate("t")
  logs = []
  c = _coordinator(tmp_path / "b", small)
  c.log = logs.append
  ids = []
  while (claim := c.next_claim()) not in (None, WAIT):
    ids.append(claim.trial_id)
    c.finish(claim, "complete", 1.0)
  assert len(ids) == 2 and "looks exhausted" in logs[-1]


def test_a_study_is_reopened_by_the_same_sweep_and_refused_to_a_changed_one(tmp_path):
  sweep = _sweep(sampler="grid", overrides={"mesh.shape": (1, 1, 1)})
  storage = open_storage(None, str(tmp_path), many_machines=False)
  open_study(sweep, storage)
  open_study(_sweep(sampler="grid", overrides={"mesh.shape": (1, 1, 1)}), storage)   # tuples survive the round trip
  with pytest.raises(ConfigError, match="created by a different sweep \\(space changed\\)"):
    open_study(_sweep(sampler="grid", space={"seed": choice(1, 2)}, overrides={"mesh.shape": (1, 1, 1)}), storage)


def test_a_beating_trial_elsewhere_is_left_alone_and_a_taken_over_claim_is_revoked(tmp_path):
  sweep = _sweep(sampler="grid", num_trials=1)
  a = _coordinator(tmp_path, sweep)
  claim = a.next_claim()
  a.storage.set_trial_system_attr(claim.trial._trial_id, "owner", {"host": "elsewhere", "pid": 1, "worker": "w"})
  patient = _coordinator(tmp_path, sweep, grace_s=3600.0)
  assert patient.next_claim() == WAIT and patient.next_claim() == WAIT     # silent for less than grace_s
  a.renew()
  assert not claim.revoked.is_set()
  b = _coordinator(tmp_path, sweep, grace_s=0.0)
  again = b.next_claim()
  assert again.trial_id == claim.trial_id
  a.renew()                        # a's next heartbeat finds its trial finished (lost): its run is stopped
  assert claim.revoked.is_set() and claim.trial.number not in a._mine


def test_a_copy_popped_by_another_worker_is_not_run_twice(tmp_path):
  sweep = _sweep(sampler="grid", num_trials=1)
  (params, seed), = sweep.design()
  c = _coordinator(tmp_path, sweep)
  c._enqueued = True
  for _ in range(2):               # two workers enqueued the point at once
    c.study.enqueue_trial(params, user_attrs={"trial_id": trial_id(params, seed), "seed": seed, "attempt": 1})
  c.study.ask()                    # another worker popped the first copy and has not tagged it yet
  assert c.next_claim() == WAIT    # the second copy is a duplicate; the first one runs
  roles = [t.user_attrs.get("role") for t in c.study.get_trials()]
  assert roles == [None, "duplicate"]


def test_a_run_stopped_before_its_signal_handler_is_interrupted_not_failed(tmp_path):
  from research.sweeps.trial_run import TrialRun
  run = TrialRun(None, _sweep(sampler="grid"), [], str(tmp_path), {}, False, None)
  assert run._outcome(-15, "stopped").state == "interrupted"
  assert run._outcome(1, None).state == "failed"
  assert run._outcome(0, "revoked").state == "revoked"
