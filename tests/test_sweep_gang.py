"""A gang: two sweep workers on localhost as the two hosts of one slice (4 CPU devices each, gloo).
Host 0 chooses every trial from the study and the other host runs it with it: each trial is one
2-process training run, and Optuna sees one worker."""
import json
import os
import socket
import subprocess
import sys

from tests.helpers import ROOT


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_host_zero_chooses_and_every_host_runs_each_trial(tmp_path, corpus_dir):
  base = tmp_path / "base.py"
  base.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom tests.helpers import tiny_config\n"
                  f"def get_config():\n  c = tiny_config({corpus_dir!r}, {str(tmp_path / 'cache')!r})\n"
                  "  c.data.streams = 2\n  c.train.sample_at_end = 0\n  c.train.tensorboard = False\n  return c\n")
  sweep = tmp_path / "gang.py"
  sweep.write_text("from research.sweeps import Sweep, choice\n"
                   f"def get_sweep():\n  return Sweep(base={str(base)!r}, space={{'optimizer.learning_rate': "
                   "choice(3e-3, 1e-2)}, sampler='grid', num_steps=10, overrides={'train.eval_every': 5})\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "scripts/sweep.py", f"--sweep={sweep}", f"--workdir={tmp_path / 'w'}",
                             "--worker", "--num_processes=2", f"--process_id={i}", "--devices_per_trial=4",
                             f"--coordinator_address=localhost:{port}", "--report=false"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in (1, 0)]                     # the follower first: it waits for host 0's study
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
  follower, leader = outs
  trials = sorted(os.listdir(tmp_path / "w" / "trials"))
  assert len(trials) == 2
  for tid in trials:
    d = tmp_path / "w" / "trials" / tid
    record = json.loads((d / "trial.json").read_text())
    assert record["status"] == "complete" and record["steps"] == 10 and record["devices"] == 8
    assert "distributed: process 0 of 2" in (d / "train.log").read_text()
    assert (d / "train.host1.log").exists() and f"runs trial {tid}" in follower
  assert "host 0 is done" in follower and leader.count("starts in") == 2
