"""Sweeps that run: every trial a real (tiny) training run started by scripts/sweep.py. Two workers
on one journal file run every trial exactly once; a worker killed mid-trial has its trial taken
over and resumed from its checkpoint by the other; a stopped sweep continues when rerun; pruning
stops a hopeless trial; a failed trial is recorded and the sweep goes on."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def base(corpus_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("sweep_base")
  path = d / "tiny_base.py"
  path.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom tests.helpers import tiny_config\n"
                  f"def get_config():\n  c = tiny_config({corpus_dir!r}, {str(d / 'cache')!r})\n"
                  "  c.train.sample_at_end = 0\n  c.train.tensorboard = False\n  return c\n")
  return str(path)


def _sweep_file(tmp_path, base, body: str, name="s") -> str:
  path = tmp_path / f"{name}.py"
  path.write_text("from research.sweeps import Sweep, choice, loguniform\n\n"
                  f"def get_sweep():\n  return Sweep(base={base!r}, {body})\n")
  return str(path)


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)          # one CPU device per trial, not the tests' eight
  return env


def _start(sweep, workdir, *flags):
  return subprocess.Popen([sys.executable, "scripts/sweep.py", f"--sweep={sweep}", f"--workdir={workdir}", *flags],
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=400):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def _records(workdir):
  trials = os.path.join(workdir, "trials")
  out = {}
  for tid in sorted(os.listdir(trials)):
    with open(os.path.join(trials, tid, "trial.json")) as f:
      out[tid] = json.load(f)
  return out


def _study(workdir, name="s"):
  from optuna.storages import journal
  storage = journal.JournalStorage(journal.JournalFileBackend(os.path.join(workdir, "study.journal")))
  return optuna.load_study(study_name=name, storage=storage)


def _wait_for_step(trial_dirs_root, step, timeout=180):
  """Until some trial under the root has logged `step` and saved a checkpoint."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    for tid in os.listdir(trial_dirs_root) if os.path.isdir(trial_dirs_root) else []:
      metrics = os.path.join(trial_dirs_root, tid, "metrics.jsonl")
      ckpts = os.path.join(trial_dirs_root, tid, "checkpoints")
      if os.path.exists(metrics) and os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
        with open(metrics) as f:
          if any(json.loads(line).get("step", 0) >= step for line in f if line.strip()):
            return tid
    time.sleep(0.5)
  raise AssertionError(f"no trial reached step {step} with a checkpoint in {timeout}s")


def test_two_workers_on_one_journal_run_every_trial_exactly_once(tmp_path, base):
  sweep = _sweep_file(tmp_path, base, "space={'optimizer.learning_rate': loguniform(1e-3, 1e-2, grid=(1e-3, 1e-2)), "
                      "'model.embed_dim': choice(32, 64)}, sampler='grid', num_steps=20, "
                      "overrides={'train.eval_every': 10}")
  workdir = str(tmp_path / "w")
  storage = f"--storage=journal:{workdir}/study.journal"
  extra = "--config.train.log_every=4"   # set in every trial, recorded in the study
  a, b = _start(sweep, workdir, "--worker", storage, extra), _start(sweep, workdir, "--worker", storage, extra)
  outs = [_finish(a), _finish(b)]
  records = _records(workdir)
  assert len(records) == 4 and all(r["status"] == "complete" and r["attempts"] == 1 for r in records.values())
  assert all(r["steps"] == 20 and r["tokens"] == 20 * 8 * 32 and r["final"] > 0 for r in records.values())
  for tid in records:
    with open(os.path.join(workdir, "trials", tid, "train.log")) as f:
      assert f.read().count("# attempt") == 1, tid
    with open(os.path.join(workdir, "trials", tid, "config.json")) as f:
      assert json.load(f)["train"]["log_every"] == 4
  complete = [t for t in _study(workdir).get_trials() if t.state.name == "COMPLETE"]
  assert sorted(t.user_attrs["trial_id"] for t in complete) == sorted(records)
  assert sum("starts in" in out for out in outs) == 2     # each worker's log says what it ran
  # finished: running the command again runs nothing
  again = _finish(_start(sweep, workdir, extra))
  assert "this worker ran no trial" in again


def test_a_killed_workers_trial_is_taken_over_and_resumed(tmp_path, base):
  sweep = _sweep_file(tmp_path, base, "space={'optimizer.learning_rate': choice(3e-3)}, sampler='grid', "
                      "num_steps=400, overrides={'train.eval_every': 200, 'checkpoint.every_steps': 20}")
  workdir = str(tmp_path / "w")
  a = _start(sweep, workdir, "--worker")
  tid = _wait_for_step(os.path.join(workdir, "trials"), 40)
  b = _start(sweep, workdir, "--worker")         # nothing to start: it waits while the trial runs
  time.sleep(3)
  a.kill()                                       # SIGKILL: no clean-up in the worker; its run saves and exits
  a.communicate()
  out = _finish(b)
  assert f"trial {tid} (#0) taken over" in out and "its worker (pid" in out
  record = _records(workdir)[tid]
  assert record["status"] == "complete" and record["attempts"] == 2 and record["steps"] == 400
  with open(os.path.join(workdir, "trials", tid, "train.log")) as f:
    log = f.read()
  assert log.count("# attempt") == 2 and "resumed from step" in log
  states = sorted((t.user_attrs.get("role"), t.state.name) for t in _study(workdir).get_trials())
  assert states == [("lost", "FAIL"), ("run", "COMPLETE")]


def test_a_stopped_sweep_continues_when_rerun(tmp_path, base):
  # the base as a config get_sweep() builds (DIR/base.py rebuilds it in each trial)
  sweep = tmp_path / "s.py"
  sweep.write_text(f"import importlib.util\nfrom research.sweeps import Sweep, choice\n"
                   f"spec = importlib.util.spec_from_file_location('tiny_base', {base!r})\n"
                   "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n\n"
                   "def get_sweep():\n  return Sweep(base=module.get_config(), space={'optimizer.learning_rate': "
                   "choice(3e-3, 1e-2)}, sampler='grid', num_steps=300, "
                   "overrides={'train.eval_every': 150, 'checkpoint.every_steps': 20})\n")
  sweep = str(sweep)
  workdir = str(tmp_path / "w")
  first = _start(sweep, workdir)
  tid = _wait_for_step(os.path.join(workdir, "trials"), 40)
  first.send_signal(signal.SIGTERM)
  out = _finish(first)
  assert "stopped; rerun the same command to continue" in out
  assert _records(workdir)[tid]["status"] == "interrupted"
  out = _finish(_start(sweep, workdir))
  records = _records(workdir)
  assert len(records) == 2 and all(r["status"] == "complete" and r["steps"] == 300 for r in records.values())
  assert all(r["command"][2] == f"--config={workdir}/base.py" for r in records.values())
  assert records[tid]["attempts"] == 2 and "resumes (attempt 2)" in out
  with open(os.path.join(workdir, "trials", tid, "train.log")) as f:
    assert "resumed from step" in f.read()


def test_pruning_stops_a_hopeless_trial_and_a_failed_trial_is_recorded(tmp_path, base):
  sweep = _sweep_file(tmp_path, base, "space={'model.num_heads': choice(4, 3), "
                      "'optimizer.learning_rate': loguniform(1e-6, 1e-2, grid=(1e-2, 1e-6))}, sampler='grid', "
                      "num_steps=400, pruner='median', pruner_options={'n_startup_trials': 1}, "
                      "overrides={'train.eval_every': 10, 'optimizer.warmup_steps': 0, 'optimizer.final_learning_rate': 1e-7}")
  workdir = str(tmp_path / "w")
  out = _finish(_start(sweep, workdir))
  by_params = {(r["params"]["model.num_heads"], r["params"]["optimizer.learning_rate"]): r
               for r in _records(workdir).values()}
  good, hopeless = by_params[(4, 1e-2)], by_params[(4, 1e-6)]
  assert good["status"] == "complete" and good["steps"] == 400
  assert hopeless["status"] == "pruned" and hopeless["steps"] < 400 and "pruned at step 10" in out
  for lr in (1e-2, 1e-6):                        # 32 dims do not split into 3 heads: the run refuses to start
    failed = by_params[(3, lr)]
    assert failed["status"] == "failed" and "num_heads" in failed["error"] and failed["error"].startswith("exit 1")
  states = {t.user_attrs["trial_id"]: t for t in _study(workdir).get_trials()}
  assert {t.state.name for t in states.values()} == {"COMPLETE", "PRUNED", "FAIL"}
  assert all("num_heads" in t.user_attrs["error"] for t in states.values() if t.state.name == "FAIL")
  assert os.path.exists(os.path.join(workdir, "trials.csv"))
