"""Multi-host paths with two real processes on localhost (4 CPU devices each, gloo collectives):
the same losses as one process with 8 devices, and checkpoints that move between the two."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from research.train.trainer import train

from tests.helpers import ROOT, tiny_config

STEPS = 20

def _config(corpus, cache):
  c = tiny_config(corpus, cache)
  c.data.streams = 2            # the global batch does not depend on the process count
  c.data.doc_split = "blank_lines"
  c.mesh.shape = (2, 2, 2)      # data x fsdp x tensor, across both processes
  c.model.dropout = 0.1
  c.train.num_steps = STEPS
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.sample_at_end = 0
  c.train.tensorboard = False
  c.checkpoint.every_steps = 10
  c.checkpoint.keep_last = 5
  return c

@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("mp")
  exp = d / "tiny_mp.py"
  exp.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom tests.test_multiprocess import _config\n"
                 f"def get_config():\n  return _config({corpus_dir!r}, {str(d / 'cache')!r})\n")
  config = lambda: _config(corpus_dir, str(d / "cache"))
  one, two, hybrid = str(d / "one"), str(d / "two"), str(d / "hybrid")
  train(config(), one, log=lambda *a: None)
  _launch(str(exp), two)
  # each process a granule of a hybrid (ici x dcn) mesh: data parallel across processes
  hybrid_log = _launch(str(exp), hybrid, "--config.mesh.dcn_shape=(2,1,1)")
  return {"exp": str(exp), "config": config, "one": one, "two": two, "hybrid": hybrid,
          "hybrid_log": hybrid_log, "dir": d}

def _launch(exp, workdir, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "scripts/launch_local.py", "--num_processes=2", "--cpu_devices_per_process=4", "--",
       "scripts/train.py", f"--config={exp}", f"--workdir={workdir}", *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout

def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if "loss" in r}

def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)

def _assert_same(a, b, steps):
  np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], rtol=2e-5)

def test_two_processes_train_like_one(setup):
  one, two = _losses(setup["one"]), _losses(setup["two"])
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  _assert_same(one, two, range(1, STEPS + 1))
  np.testing.assert_allclose(_summary(setup["two"])["final_eval_loss"], _summary(setup["one"])["final_eval_loss"],
                             rtol=2e-5)
  # only process 0 writes metrics: one record per step, not two
  with open(os.path.join(setup["two"], "metrics.jsonl")) as f:
    assert sum('"loss"' in line for line in f) == STEPS

def test_hybrid_mesh_across_processes_trains_like_one(setup):
  """mesh.dcn_shape=(2,1,1): the data axis spans the two processes (as it would two TPU slices or
  two GPU nodes), fsdp and tensor stay inside each; same losses as one process."""
  assert "mesh.dcn_shape (2, 1, 1): processes per data index [[0], [1]]" in setup["hybrid_log"]
  one, hybrid = _losses(setup["one"]), _losses(setup["hybrid"])
  assert sorted(hybrid) == list(range(1, STEPS + 1))
  _assert_same(one, hybrid, range(1, STEPS + 1))


def test_one_process_checkpoint_resumes_in_two(setup):
  work = str(setup["dir"] / "one_then_two")
  shutil.copytree(setup["one"], work)
  out = _launch(setup["exp"], work, "--restore_step=10")
  assert "resumed from step 10" in out
  _assert_same(_losses(work), _losses(setup["one"]), range(11, STEPS + 1))

def test_two_process_checkpoint_resumes_in_one(setup):
  work = str(setup["dir"] / "two_then_one")
  shutil.copytree(setup["two"], work)
  train(setup["config"](), work, log=lambda *a: None, resume=10)
  _assert_same(_losses(work), _losses(setup["two"]), range(11, STEPS + 1))


def test_finetuning_in_two_processes_starts_from_the_checkpoint(setup):
  """finetune.init_from across processes: every process places its shards of the checkpoint's
  parameters (nothing gathered). Evaluated before the first step, the two-process run scores what the
  one-process run that wrote the checkpoint scored at its end; a frozen table stays the checkpoint's."""
  from research.checkpoint.loading import read_config, restore_params
  from research.models import abstract_model
  two = str(setup["dir"] / "ft_two")
  out = _launch(setup["exp"], two, f"--config.finetune.init_from={setup['one']}", "--config.train.num_steps=2",
                "--config.train.eval_at_start=true", "--config.finetune.freeze=^embed/")
  assert "finetune: parameters from" in out
  np.testing.assert_allclose(_summary(two)["initial_eval"]["eval_loss"], _summary(setup["one"])["final_eval_loss"],
                             rtol=2e-5)
  abstract = abstract_model(read_config(two).model)[1]
  np.testing.assert_array_equal(restore_params(two, abstract)["embed"]["embedding"],
                                restore_params(setup["one"], abstract)["embed"]["embedding"])
