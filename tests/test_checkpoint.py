"""Checkpoints: exact resume after SIGKILL, SIGTERM preemption, half-written steps, mismatches,
restore across meshes."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research.checkpoint import CheckpointError, Checkpointer
from research.sharding import make_mesh
from research.train.program import build_program
from research.train.setup import prepare_task
from research.train.trainer import train
from tests.conftest import ROOT
from tests.helpers import tiny_experiment

STEPS = 16
FLAGS = [f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", "--config.train.eval_every=0",
         "--config.train.sample_at_end=0", "--config.checkpoint.every_steps=4", "--config.mesh.shape=(2,2,2)",
         "--config.data.doc_split=blank_lines", "--config.data.packing=pack", "--config.train.tensorboard=false",
         "--config.model.dropout=0.1"]


@pytest.fixture(scope="module")
def experiment(corpus_dir, tmp_path_factory):
  return tiny_experiment(tmp_path_factory.mktemp("exp"), corpus_dir)


def _start(experiment, workdir, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen([sys.executable, "scripts/train.py", f"--config={experiment}", f"--workdir={workdir}",
                           *FLAGS, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if "loss" in r}


def _wait_for_step(workdir, step, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"exited early: {proc.stdout.read()[-2000:]}")
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path) and max(_losses(workdir), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError("timed out")


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  proc = _start(experiment, workdir)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, STEPS + 1))
  return losses


def test_sigkill_then_resume_gives_the_same_losses_bitwise(experiment, reference, tmp_path):
  proc = _start(experiment, tmp_path)
  _wait_for_step(tmp_path, 10, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = _start(experiment, tmp_path)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  resumed = re.search(r"checkpoint: resumed from step (\d+)", out)
  assert resumed and int(resumed.group(1)) in (4, 8, 12), out[-3000:]
  assert _losses(tmp_path) == reference  # every step, bit for bit


def test_sigterm_saves_the_current_step_and_exits_zero(experiment, reference, tmp_path):
  proc = _start(experiment, tmp_path)
  _wait_for_step(tmp_path, 5, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "preempted: saved step" in out
  saved = int(out.split("preempted: saved step ")[1].split()[0])
  assert saved >= 5 and str(saved) in os.listdir(tmp_path / "checkpoints")
  proc = _start(experiment, tmp_path)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0 and f"resumed from step {saved}" in out, out[-3000:]
  assert _losses(tmp_path) == reference


def _program(cfg, shape):
  cfg.mesh.shape = shape
  prepare_task(cfg, log=lambda *a: None)
  return build_program(cfg, make_mesh(shape, jax.devices()[:int(np.prod(shape))]))


@pytest.fixture
def trained(tiny_cfg, tmp_path):
  cfg = tiny_cfg
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 8, 0, 0
  cfg.checkpoint.every_steps, cfg.checkpoint.async_save = 4, False
  cfg.mesh.shape = (8, 1, 1)
  train(cfg, str(tmp_path), log=lambda *a: None)
  return cfg, str(tmp_path / "checkpoints")


def test_half_written_step_falls_back_to_the_newest_complete_one(trained):
  cfg, ckpt_dir = trained
  assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [4, 8]
  # a save killed half-way: the array data of step 8 is gone
  for root, _, files in os.walk(os.path.join(ckpt_dir, "8", "state")):
    for f in files:
      if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(root):
        os.remove(os.path.join(root, f))
  logs = []
  program = _program(cfg, (8, 1, 1))
  _, data_state, meta, step = Checkpointer(ckpt_dir, cfg.checkpoint, log=logs.append).restore(program.abstract_state())
  assert step == 4 and meta["step"] == 4 and data_state
  assert any("step 8 cannot be read" in m and "falling back to step 4" in m for m in logs)


def test_checkpoint_that_does_not_fit_the_model_names_the_keys(trained):
  cfg, ckpt_dir = trained
  cfg.model.embed_dim = 64
  program = _program(cfg, (8, 1, 1))
  with pytest.raises(CheckpointError, match=r"does not match the model \(\d+ difference\(s\)\): params/blocks/0/attn/k/bias: "
                                            r"checkpoint \(4, 8\) vs model \(4, 16\)"):
    Checkpointer(ckpt_dir, cfg.checkpoint).restore(program.abstract_state())


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 1, 1)])
def test_restore_onto_another_mesh(trained, shape):
  cfg, ckpt_dir = trained
  saved = _program(cfg, (8, 1, 1))
  state8, *_ = Checkpointer(ckpt_dir, cfg.checkpoint).restore(saved.abstract_state())
  program = _program(cfg, shape)
  state, *_ = Checkpointer(ckpt_dir, cfg.checkpoint).restore(program.abstract_state())
  kernel = state.params["blocks"][0]["mlp"]["up"]["kernel"]
  assert kernel.sharding == program.shardings.params["blocks"][0]["mlp"]["up"]["kernel"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state8, state)


def test_load_model_and_params_only_restore(trained):
  import research
  from research.checkpoint.loading import restore_params
  from research.models import abstract_model
  cfg, ckpt_dir = trained
  workdir = os.path.dirname(ckpt_dir)
  program = _program(cfg, (8, 1, 1))
  state, *_ = Checkpointer(ckpt_dir, cfg.checkpoint).restore(program.abstract_state())
  model, loaded_cfg = research.load_model(workdir)
  assert loaded_cfg.model.embed_dim == cfg.model.embed_dim and loaded_cfg.train.num_steps == 8
  tokens = np.arange(16, dtype=np.int32).reshape(2, 8)
  from flax import nnx
  reference = nnx.merge(program.graphdef, jax.device_get(state.params))
  np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(reference(tokens)), atol=1e-6)
  assert np.asarray(model(tokens)).shape == (2, 8, cfg.model.vocab_size)
  # a step directory works too, and renamed / new keys go through the hooks
  _, abstract, _ = abstract_model(cfg.model)
  drop_norm = lambda name: None if name.startswith("final_norm/") else name
  with pytest.raises(CheckpointError, match="final_norm/scale: not in the checkpoint"):
    restore_params(os.path.join(ckpt_dir, "8"), abstract, rename=drop_norm)
  fresh = jax.tree.map(lambda a: np.full(a.shape, 7.0, a.dtype), abstract)
  params = restore_params(os.path.join(ckpt_dir, "8"), abstract, rename=drop_norm, init_params=fresh)
  assert (params["final_norm"]["scale"] == 7.0).all()
  np.testing.assert_array_equal(params["embed"]["embedding"], np.asarray(state.params["embed"]["embedding"]))


def test_export_safetensors(trained, tmp_path):
  from safetensors.flax import load_file
  cfg, ckpt_dir = trained
  out = tmp_path / "model.safetensors"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "scripts/export.py", f"--checkpoint={os.path.dirname(ckpt_dir)}",
                         f"--out={out}", "--dtype=bfloat16"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  tensors = load_file(str(out))
  program = _program(cfg, (8, 1, 1))
  state, *_ = Checkpointer(ckpt_dir, cfg.checkpoint).restore(program.abstract_state())
  kernel = tensors["blocks.0.attn.q.kernel"]
  assert str(kernel.dtype) == "bfloat16" and len(tensors) == len(jax.tree.leaves(state.params))
  np.testing.assert_array_equal(np.asarray(kernel, np.float32),
                                np.asarray(state.params["blocks"][0]["attn"]["q"]["kernel"]).astype(
                                    "bfloat16").astype(np.float32))
  assert json.load(open(tmp_path / "model.json"))["model"]["embed_dim"] == cfg.model.embed_dim


def test_retention_keeps_last_n_and_every_k(tiny_cfg, tmp_path):
  cfg = tiny_cfg
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 10, 0, 0
  cfg.checkpoint.every_steps, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every_steps = 2, 2, 4
  train(cfg, str(tmp_path), log=lambda *a: None)
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert kept == [4, 8, 10]


def test_keep_best_by_eval_metric(tiny_cfg, tmp_path):
  cfg = tiny_cfg
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 8, 2, 0
  cfg.checkpoint.every_steps, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best = 2, 1, 1
  cfg.checkpoint.best_mode = "max"  # keep the highest eval loss: the earliest step, which LatestN drops
  cfg.checkpoint.save_at_end = False
  train(cfg, str(tmp_path), log=lambda *a: None)
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert kept == [2, 8]


def test_fresh_moves_checkpoints_aside_and_restore_step(trained, tmp_path):
  cfg, ckpt_dir = trained
  workdir = os.path.dirname(ckpt_dir)
  with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
    train(cfg, workdir, log=lambda *a: None, resume=5)
  train(cfg, workdir, log=lambda *a: None, resume="fresh")
  aside = [d for d in os.listdir(workdir) if d.startswith("checkpoints.before-")]
  assert len(aside) == 1 and "8" in os.listdir(os.path.join(workdir, aside[0]))


def test_resume_refuses_changed_data_settings(trained):
  cfg, ckpt_dir = trained
  cfg.train.batch_size = 16
  with pytest.raises(CheckpointError, match=r"data settings changed .*train.batch_size: checkpoint 8 vs now 16"):
    train(cfg, os.path.dirname(ckpt_dir), log=lambda *a: None)


def test_resume_refuses_a_changed_model_or_tokenizer(trained, monkeypatch):
  from research.data.tokenizers import ByteTokenizer
  cfg, ckpt_dir = trained
  workdir = os.path.dirname(ckpt_dir)
  changed = cfg.copy_and_resolve_references()
  changed.model.norm_eps = 1e-6
  with pytest.raises(CheckpointError, match=r"model settings changed .*model.norm_eps: checkpoint 1e-05 vs now 1e-06"):
    train(changed, workdir, log=lambda *a: None)
  monkeypatch.setattr(ByteTokenizer, "fingerprint", "byte-v2")
  with pytest.raises(CheckpointError, match=r"tokenizer changed .*\(checkpoint byte-v1 vs now byte-v2\)"):
    train(cfg, workdir, log=lambda *a: None)


def test_restore_older_step_moves_newer_steps_aside(trained):
  cfg, ckpt_dir = trained
  workdir = os.path.dirname(ckpt_dir)
  train(cfg, workdir, log=lambda *a: None, resume=4)
  aside = [d for d in os.listdir(workdir) if d.startswith("checkpoints.after-4-")]
  assert len(aside) == 1 and os.listdir(os.path.join(workdir, aside[0])) == ["8"]
  assert "8" in os.listdir(ckpt_dir)  # written anew by the resumed run


def test_time_based_saves(tiny_cfg, tmp_path):
  cfg = tiny_cfg
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 6, 0, 0
  cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes, cfg.checkpoint.keep_last = 0, 1e-5, 100
  cfg.checkpoint.save_at_end, cfg.checkpoint.async_save = False, False
  train(cfg, str(tmp_path), log=lambda *a: None)
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert len(kept) >= 3 and kept[-1] == 6  # by the clock only: no step interval, no final save
