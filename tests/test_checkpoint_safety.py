"""Never lose a run: signals at any point, unreadable and corrupted steps, workdir moves that wait for
validation, one run per workdir, failed saves, checksums."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research.checkpoint import CheckpointError, Checkpointer
from research.checkpoint.preemption import PreemptionWatcher
from research.train import trainer as trainer_lib
from research.train.trainer import train
from research.train.workdir import WorkdirLock, _process_start
from tests.conftest import ROOT
from tests.helpers import tiny_experiment

quiet = lambda *a, **k: None


def _steps(ckpt_dir):
  return sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())


def _tiny(corpus_dir, cache):
  from tests.helpers import tiny_config
  c = tiny_config(corpus_dir, cache)
  c.train.num_steps, c.train.eval_every, c.train.sample_at_end = 8, 0, 0
  c.checkpoint.every_steps, c.checkpoint.async_save = 4, False
  c.train.tensorboard = False
  c.mesh.shape = (8, 1, 1)
  return c


@pytest.fixture
def cfg(corpus_dir, tmp_path):
  return _tiny(corpus_dir, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def trained_once(corpus_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("trained")
  train(_tiny(corpus_dir, str(d / "cache")), str(d / "run"), log=quiet)
  return str(d)


@pytest.fixture
def trained(trained_once, corpus_dir, tmp_path):
  """A copy of one trained workdir (steps 4 and 8) per test: the tests damage or move it."""
  import shutil
  shutil.copytree(os.path.join(trained_once, "run"), tmp_path / "run")
  return _tiny(corpus_dir, os.path.join(trained_once, "cache")), str(tmp_path / "run")


def _restorable(cfg, workdir, step):
  from tests.test_checkpoint import _program
  program = _program(cfg, (8, 1, 1))
  *_, got = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint, log=quiet).restore(
      program.abstract_state(), step)
  return got == step


# ------------------------------------------------------------------ signals
def test_a_stop_noticed_during_the_last_step_saves_it(cfg, tmp_path, monkeypatch):
  cfg.checkpoint.every_steps = 100
  monkeypatch.setattr(PreemptionWatcher, "reached", lambda self, step: step == 8)
  logs = []
  out = train(cfg, str(tmp_path), log=logs.append)
  assert out["preempted"] and out["step"] == 8
  assert _steps(tmp_path / "checkpoints") == [8]
  assert any("preempted: saved step 8" in m for m in logs)


def test_a_signal_while_the_final_save_is_written_does_not_kill_it(cfg, tmp_path, monkeypatch):
  cfg.checkpoint.async_save = True
  close = Checkpointer.close

  def close_with_a_signal(self):
    os.kill(os.getpid(), signal.SIGTERM)  # before: the default handler was back, and killed the save
    os.kill(os.getpid(), signal.SIGINT)   # a second signal is reported, not obeyed
    close(self)

  monkeypatch.setattr(Checkpointer, "close", close_with_a_signal)
  logs = []
  train(cfg, str(tmp_path), log=logs.append)
  assert _steps(tmp_path / "checkpoints") == [4, 8]
  assert any("SIGINT again; already stopping" in m for m in logs)


def _script(experiment, workdir, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen([sys.executable, "scripts/train.py", f"--config={experiment}", f"--workdir={workdir}",
                           "--config.train.sample_at_end=0", "--config.train.log_every=1",
                           "--config.train.tensorboard=false", *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def experiment(corpus_dir, tmp_path_factory):
  return tiny_experiment(tmp_path_factory.mktemp("exp"), corpus_dir)


def test_sigterm_before_the_first_step_exits_zero_having_written_nothing(experiment, tmp_path):
  proc = _script(experiment, tmp_path)
  lines = []
  for line in proc.stdout:  # the data are ready; compiling comes next
    lines.append(line)
    if line.startswith("data: tokenizer"):
      proc.send_signal(signal.SIGTERM)
      break
  out = "".join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "before the first step: nothing to save" in out, out[-3000:]
  assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "config.json")
  assert os.listdir(tmp_path) == []  # the lock is gone too


def test_sigint_saves_like_sigterm(experiment, tmp_path):
  proc = _script(experiment, tmp_path, "--config.train.num_steps=400", "--config.checkpoint.every_steps=1000")
  deadline = time.time() + 240
  metrics = tmp_path / "metrics.jsonl"
  while not (metrics.exists() and '"loss"' in metrics.read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  saved = int(out.split("preempted: saved step ")[1].split()[0])
  assert saved in _steps(tmp_path / "checkpoints") and "(SIGINT)" in out


# ------------------------------------------------------------------ unreadable / corrupted steps
def _break_arrays(ckpt_dir, step):
  for root, _, files in os.walk(os.path.join(ckpt_dir, str(step), "state")):
    for f in files:
      if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(root):
        os.remove(os.path.join(root, f))


def test_an_unreadable_newest_step_is_moved_aside_and_saved_anew(trained):
  cfg, workdir = trained
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _break_arrays(ckpt_dir, 8)
  cfg.train.num_steps = 12
  logs = []
  train(cfg, workdir, log=logs.append)
  assert any("step 8 cannot be read" in m for m in logs)
  aside = [d for d in os.listdir(workdir) if d.startswith("checkpoints.unreadable-")]
  assert len(aside) == 1 and os.listdir(os.path.join(workdir, aside[0])) == ["8"]
  assert _steps(ckpt_dir) == [4, 8, 12] and _restorable(cfg, workdir, 8)


def _flip_a_stored_bit(ckpt_dir, step, array="params.embed.embedding"):
  """One bit of one stored value changed in place, through tensorstore, as silent disk or memory
  corruption would leave it: tensorstore checksums its b-tree nodes but not chunk data, and zarr
  decompresses a damaged chunk into other numbers, so only our checksums can tell."""
  import tensorstore as ts
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "path": f"{array}/", "base": {
      "driver": "file", "path": os.path.join(ckpt_dir, str(step), "state") + "/"}}}).result()
  values = store.read().result()
  values.view(np.uint32).flat[5] ^= 1 << 3
  store.write(values).result()


def test_flipped_bytes_fail_the_checksum_and_fall_back(trained):
  cfg, workdir = trained
  ckpt_dir = os.path.join(workdir, "checkpoints")
  from tests.test_checkpoint import _program
  program = _program(cfg, (8, 1, 1))
  state, *_ = Checkpointer(ckpt_dir, cfg.checkpoint, log=quiet).restore(program.abstract_state(), 8)
  _flip_a_stored_bit(ckpt_dir, 8)
  cfg.checkpoint.verify = False  # what happened before: the flipped weight restores as if nothing were wrong
  damaged, *_, step = Checkpointer(ckpt_dir, cfg.checkpoint, log=quiet).restore(program.abstract_state())
  assert step == 8
  assert (np.asarray(damaged.params["embed"]["embedding"]) != np.asarray(state.params["embed"]["embedding"])).sum() == 1
  cfg.checkpoint.verify = True
  logs = []
  *_, step = Checkpointer(ckpt_dir, cfg.checkpoint, log=logs.append).restore(program.abstract_state())
  assert step == 4, logs
  assert any("step 8 cannot be read (ChecksumError" in m and "params/embed/embedding" in m for m in logs), logs
  import research
  with pytest.raises(CheckpointError, match=r"differ from their saved checksums \(first params/embed/embedding\)"):
    research.load_model(os.path.join(ckpt_dir, "8"))  # loading the weights alone checks them too


# ------------------------------------------------------------------ the old run is untouched until the new one validates
def test_fresh_moves_every_output_of_the_previous_run_aside(trained):
  cfg, workdir = trained
  os.makedirs(os.path.join(workdir, "profile"))
  open(os.path.join(workdir, "profile", "trace.json.gz"), "w").close()
  old_config = open(os.path.join(workdir, "config.json")).read()
  cfg.train.num_steps, cfg.optimizer.warmup_steps = 4, 2
  train(cfg, workdir, log=quiet, resume="fresh")
  names = os.listdir(workdir)
  for name in ("checkpoints", "metrics.jsonl", "summary.json", "profile", "config.json"):
    assert len([n for n in names if n.startswith(f"{name}.before-")]) == 1, (name, names)
  before = next(n for n in names if n.startswith("config.json.before-"))
  assert open(os.path.join(workdir, before)).read() == old_config  # moved, not rewritten first
  assert json.load(open(os.path.join(workdir, "summary.json")))["steps"] == 4


def test_a_refused_resume_changes_nothing(trained):
  cfg, workdir = trained
  before = {n: open(os.path.join(workdir, n)).read() for n in ("config.json", "metrics.jsonl")}
  listing = sorted(os.listdir(workdir))
  cfg.train.batch_size = 16
  for resume in ("latest", 4):
    with pytest.raises(CheckpointError, match="train.batch_size: checkpoint 8 vs now 16"):
      train(cfg, workdir, log=quiet, resume=resume)
    assert {n: open(os.path.join(workdir, n)).read() for n in before} == before
    assert sorted(os.listdir(workdir)) == listing and _steps(os.path.join(workdir, "checkpoints")) == [4, 8]


def test_a_changed_parameter_dtype_is_refused_by_name_before_the_arrays_are_read(trained):
  cfg, workdir = trained
  cfg.model.param_dtype = "bfloat16"  # restoring would cast the arrays (and fail their checksums)
  with pytest.raises(CheckpointError, match=r"model.param_dtype: checkpoint 'float32' vs now 'bfloat16'"):
    train(cfg, workdir, log=quiet)


# ------------------------------------------------------------------ one run per workdir
def _lock_file(workdir, **owner):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "run.lock"), "w") as f:
    json.dump(owner, f)


def test_a_second_run_on_a_workdir_in_use_is_refused(cfg, tmp_path):
  import socket
  _lock_file(tmp_path, host=socket.gethostname(), pid=os.getpid(), start=_process_start(os.getpid()), since="now")
  with pytest.raises(CheckpointError, match=rf"workdir {tmp_path} is in use by the run of pid {os.getpid()}"):
    train(cfg, str(tmp_path), log=quiet)
  assert os.listdir(tmp_path) == ["run.lock"]


def test_a_stale_lock_is_reported_and_taken_over(tmp_path):
  import socket
  dead = subprocess.Popen(["true"])
  dead.wait()
  _lock_file(tmp_path, host=socket.gethostname(), pid=dead.pid, start="1", since="then")
  logs = []
  lock = WorkdirLock(str(tmp_path), log=logs.append).acquire()
  assert any(f"stale lock of pid {dead.pid}" in m for m in logs)
  assert json.load(open(tmp_path / "run.lock"))["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(tmp_path / "run.lock")


def test_the_lock_is_released_when_a_run_ends(cfg, tmp_path):
  cfg.train.num_steps, cfg.optimizer.warmup_steps, cfg.checkpoint.every_steps = 2, 1, 0
  train(cfg, str(tmp_path), log=quiet)
  assert not os.path.exists(tmp_path / "run.lock")


def test_release_leaves_a_lock_another_run_took_over(tmp_path):
  lock = WorkdirLock(str(tmp_path), log=quiet).acquire()
  _lock_file(tmp_path, host="another-host", pid=12345, start="1", since="later")  # --break_lock elsewhere
  lock.release()
  assert json.load(open(tmp_path / "run.lock"))["pid"] == 12345


def test_an_empty_lock_being_written_is_taken_as_live(tmp_path):
  open(tmp_path / "run.lock", "w").close()
  with pytest.raises(CheckpointError, match="in use"):
    WorkdirLock(str(tmp_path), log=quiet).acquire()


def test_another_hosts_lock_needs_break_lock(tmp_path):
  _lock_file(tmp_path, host="some-other-host", pid=1, start="1", since="then")
  with pytest.raises(CheckpointError, match="cannot be checked from this host; if that run is gone, rerun with --break_lock"):
    WorkdirLock(str(tmp_path), log=quiet).acquire()
  lock = WorkdirLock(str(tmp_path), break_lock=True, log=quiet).acquire()
  assert json.load(open(tmp_path / "run.lock"))["pid"] == os.getpid()
  lock.release()


# ------------------------------------------------------------------ a failed save
def test_a_failed_async_save_is_one_line_and_keeps_the_previous_step(cfg, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  cfg.checkpoint.async_save = True
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 8:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(CheckpointError) as e:
    train(cfg, str(tmp_path), log=quiet)
  message = str(e.value)
  assert "\n" not in message and str(tmp_path / "checkpoints") in message, message
  assert "step 8" in message and "No space left on device" in message and "previous checkpoints are kept" in message
  assert _steps(tmp_path / "checkpoints") == [4] and _restorable(cfg, str(tmp_path), 4)
