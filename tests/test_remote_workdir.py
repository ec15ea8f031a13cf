"""Remote workdirs (gs://bucket/run): every file the trainer writes besides Orbax's goes through
etils.epath, never os.path, so no host makes a local copy named 'gs:'. Without the network, gs:// is
served here by fsspec's in-memory filesystem under the name epath asks for."""
import json
import os

import fsspec
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from research.checkpoint.loading import checkpoint_steps, resolve_step_dir
from research.train import trainer as trainer_lib
from research.train.metrics import MetricsWriter
from research.paths import absolute
from research.train.workdir import (WorkdirLock, move_previous_run_aside, move_steps_aside,
                                    truncate_metrics, write_config)

RUN = "gs://bucket/run"


class InMemoryGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")

  def __init__(self, *args, finalize_on_close=False, **kwargs):  # epath passes gcsfs's option
    super().__init__(*args, **kwargs)


@pytest.fixture
def gcs(monkeypatch):
  saved = {k: fsspec.registry.get(k) for k in ("gs", "gcs")}
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, InMemoryGCS, clobber=True)
  MemoryFileSystem.store.clear()
  MemoryFileSystem.pseudo_dirs[:] = [""]
  real_abspath, real_makedirs = os.path.abspath, os.makedirs

  def refuse(fn):
    def wrapped(path, *a, **k):
      assert "://" not in str(path), f"{fn.__name__}({path!r}): a remote path went through os.path"
      return fn(path, *a, **k)
    return wrapped

  monkeypatch.setattr(os.path, "abspath", refuse(real_abspath))
  monkeypatch.setattr(os, "makedirs", refuse(real_makedirs))
  yield
  MemoryFileSystem.store.clear()
  for name, cls in saved.items():
    if cls is not None:
      fsspec.register_implementation(name, cls, clobber=True)


def test_workdir_files_on_a_remote_path(gcs):
  assert absolute(RUN) == RUN
  root = epath.Path(RUN)
  lock = WorkdirLock(RUN, log=lambda *a: None).acquire()
  assert json.loads((root / "run.lock").read_text())["pid"] == os.getpid()
  write_config(RUN, '{"seed": 1}')
  writer = MetricsWriter(RUN, tensorboard=False)
  for step in (1, 2, 3):
    writer.write(step, {"loss": float(step)})
  truncate_metrics(f"{RUN}/metrics.jsonl", 2)
  assert [json.loads(l)["step"] for l in (root / "metrics.jsonl").read_text().splitlines()] == [1, 2]
  writer = MetricsWriter(RUN, tensorboard=False)  # a resumed run keeps what is there
  writer.write(3, {"loss": 3.0})
  assert len((root / "metrics.jsonl").read_text().splitlines()) == 3
  for step in (4, 8):
    (root / "checkpoints" / str(step) / "state").mkdir(parents=True)
    (root / "checkpoints" / str(step) / "state" / "x").write_text("bytes")
  assert checkpoint_steps(f"{RUN}/checkpoints") == [4, 8]
  assert resolve_step_dir(RUN) == (f"{RUN}/checkpoints", 8)
  move_steps_aside(RUN, [8], "after-4", lambda *a: None)
  assert checkpoint_steps(f"{RUN}/checkpoints") == [4]
  move_previous_run_aside(RUN, lambda *a: None)
  names = sorted(p.name for p in root.iterdir())
  assert not (root / "checkpoints").exists() and any(n.startswith("checkpoints.before-") for n in names), names
  lock.release()
  assert not (root / "run.lock").exists()


def test_train_hands_the_remote_path_to_orbax_unchanged(gcs, tiny_cfg, monkeypatch):
  class Stop(Exception):
    pass

  seen = {}

  class Recorder:
    def __init__(self, directory, *args, **kwargs):
      seen["directory"] = directory
      seen["lock"] = (epath.Path(RUN) / "run.lock").exists()
      raise Stop

  monkeypatch.setattr(trainer_lib, "Checkpointer", Recorder)
  tiny_cfg.train.tensorboard = False
  with pytest.raises(Stop):
    trainer_lib.train(tiny_cfg, RUN, log=lambda *a: None)
  assert seen == {"directory": f"{RUN}/checkpoints", "lock": True}
  assert not os.path.exists("gs:")  # no local stand-in was made
  assert not (epath.Path(RUN) / "run.lock").exists()  # released on the way out


def test_train_resume_and_export_on_a_local_gcs_emulator(corpus_dir, tmp_path):
  """The real script against fake-gcs-server: checkpoints (tensorstore), metrics, config, summary and
  the lock (gcsfs) and TensorBoard events (tensorboardX's google-cloud-storage writer) all land in
  the bucket; the rerun resumes from it; export reads it."""
  import subprocess
  import sys
  from tests.conftest import ROOT
  from tests.gcs_emulator import gcs_emulator, list_objects
  from tests.helpers import tiny_experiment
  experiment = tiny_experiment(tmp_path, corpus_dir)
  with gcs_emulator("test-bucket") as (url, gcs_env):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=8", **gcs_env)

    def run(*args):
      proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
      assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
      return proc.stdout

    common = [f"--config={experiment}", "--workdir=gs://test-bucket/run", "--config.train.eval_every=0",
              "--config.train.sample_at_end=0", "--config.checkpoint.every_steps=4"]
    run("scripts/train.py", *common, "--config.train.num_steps=8")
    names = list_objects(url, "test-bucket", "run/")
    for expected in ("run/config.json", "run/metrics.jsonl", "run/summary.json"):
      assert expected in names, names
    assert any(n.startswith("run/checkpoints/8/state/") for n in names), names
    assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in names), names  # tensorboardX's gs://
    assert "run/run.lock" not in names and not os.path.exists(os.path.join(ROOT, "gs:"))
    out = run("scripts/train.py", *common, "--config.train.num_steps=12", "--config.optimizer.decay_steps=8")
    assert "resumed from step 8" in out, out[-2000:]
    assert any(n.startswith("run/checkpoints/12/") for n in list_objects(url, "test-bucket", "run/"))
    run("scripts/export.py", "--checkpoint=gs://test-bucket/run", f"--out={tmp_path / 'model.safetensors'}")
    assert (tmp_path / "model.safetensors").stat().st_size > 0
