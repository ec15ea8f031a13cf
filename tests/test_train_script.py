"""End to end: scripts/train.py trains, logs metrics.jsonl + TensorBoard, and handles NaNs per config."""
import json
import os
import subprocess
import sys

import pytest

from research.train.trainer import NonFiniteError, train
from tests.conftest import ROOT

REQUIRED = {"step", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_train_script_end_to_end(corpus_dir, tmp_path):
  exp = tmp_path / "tiny.py"
  exp.write_text(
      "from tests.conftest import tiny_config\n"
      f"def get_config():\n  return tiny_config({corpus_dir!r}, {str(tmp_path / 'cache')!r})\n")
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, "scripts/train.py", f"--config={exp}", f"--workdir={workdir}",
       "--config.train.num_steps=40", "--config.mesh.shape=(4,2,1)", "--config.train.log_every=10",
       "--config.train.eval_every=20", "--config.train.progress=true", "--config.train.peak_flops=0",
       f"--config.train.compilation_cache_dir={tmp_path / 'xla-cache'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for expected in ("config:", "devices: 8 x cpu", "'data': 4, 'fsdp': 2, 'tensor': 1", "parameters",
                   "MFLOPs/token", "GFLOP/s (measured", "final eval loss", "unigram entropy", "--- sample 1 ---",
                   "tok/s", "mfu"):
    assert expected in out, expected
  records = _records(workdir)
  train_recs = [r for r in records if "loss" in r]
  eval_recs = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in train_recs] == [10, 20, 30, 40]
  assert [r["step"] for r in eval_recs] == [20, 40]
  for r in train_recs:
    assert REQUIRED <= set(r)
    assert r["tokens_per_sec"] > 0 and 0 < r["mfu"] < 1  # against the peak measured at the start
  assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 0.5
  summary = json.load(open(workdir / "summary.json"))
  assert summary["final_eval_loss"] == eval_recs[-1]["eval_loss"]
  assert json.load(open(workdir / "config.json"))["train"]["num_steps"] == 40
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert os.listdir(tmp_path / "xla-cache")  # the compiled steps, for a rerun to read


def _blow_up(cfg):
  """A learning rate so large that the first update sends the parameters to inf/NaN."""
  cfg.optimizer.schedule, cfg.optimizer.warmup_steps = "constant", 0
  cfg.optimizer.learning_rate, cfg.optimizer.final_learning_rate = 1e30, 0.0
  cfg.optimizer.grad_clip_norm = 0.0
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every, cfg.train.sample_at_end = 6, 0, 2, 0
  cfg.train.tensorboard = False
  return cfg


def test_nonfinite_stop(tiny_cfg, tmp_path):
  with pytest.raises(NonFiniteError, match=r"step \d: loss .* is not finite; the update was not applied"):
    train(_blow_up(tiny_cfg), str(tmp_path), log=lambda *a: None)
  assert any(r.get("nonfinite") for r in _records(tmp_path))


def test_nonfinite_skip_counts(tiny_cfg, tmp_path):
  cfg = _blow_up(tiny_cfg)
  cfg.train.nonfinite = "skip"
  summary = train(cfg, str(tmp_path), log=lambda *a: None)
  assert summary["skipped_steps"] >= 1
  assert _records(tmp_path)[-2]["skipped_steps"] == summary["skipped_steps"]


def test_dry_run_prints_memory_and_exits_zero(corpus_dir, tmp_path):
  exp = tmp_path / "tiny.py"
  exp.write_text("from tests.helpers import tiny_config\n"
                 f"def get_config():\n  return tiny_config({corpus_dir!r}, {str(tmp_path / 'cache')!r})\n")
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, "scripts/train.py", f"--config={exp}", "--dry_run", "--config.mesh.shape=(2,4,1)",
       "--config.model.scan_layers=true", "--config.model.remat=full"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for expected in ("memory per device: parameters", "optimizer state", "batch", "temporaries", "total",
                   "remat full, scan_layers True", "compiler estimate"):
    assert expected in out, expected
  assert "step 1:" not in out and not os.path.exists(tmp_path / "run")


def test_profile_trace_and_compute_summary(tiny_cfg, tmp_path):
  tiny_cfg.train.num_steps = 6
  tiny_cfg.train.profile_start_step = 2
  tiny_cfg.train.profile_stop_step = 4
  tiny_cfg.train.cost_per_device_hour = 2.0
  lines = []
  summary = train(tiny_cfg, str(tmp_path / "run"), log=lines.append)
  traces = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "run" / "profile") for f in files]
  assert any(t.endswith(".xplane.pb") for t in traces), traces
  assert any(t.endswith("perfetto_trace.json.gz") for t in traces), traces
  c = summary["compute"]
  assert c["tokens_seen"] == 6 * tiny_cfg.train.batch_size * tiny_cfg.train.seq_len
  assert c["total_flops"] == pytest.approx(c["tokens_seen"] * summary["flops_per_token"])
  assert c["estimated_cost"] == pytest.approx(2.0 * c["device_hours"]) and c["device_hours"] > 0
  assert any(line.startswith("compute: ") and "estimated cost $" in line for line in lines)
  assert summary["memory_per_device"]["total"] > summary["memory_per_device"]["params"] > 0
