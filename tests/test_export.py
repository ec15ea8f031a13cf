"""Export and load_model: output paths that cannot clash, and no noise from libtpu or Orbax."""
import json
import logging
import os
import subprocess
import sys

import pytest

from research.checkpoint import Checkpointer
from research.checkpoint.loading import export_paths, export_safetensors
from research.sharding import make_mesh
from research.train.program import build_program
from tests.conftest import ROOT, tiny_config

NOISE = ("TPU", "libtpu", "read only", "WARNING")


@pytest.fixture(scope="module")
def workdir(corpus_dir, tmp_path_factory):
  """A checkpoint of freshly initialised parameters (no training needed to export or load)."""
  d = tmp_path_factory.mktemp("run")
  cfg = tiny_config(corpus_dir, str(d / "cache"))
  cfg.model.vocab_size = 256
  cfg.checkpoint.async_save = False
  program = build_program(cfg, make_mesh(cfg.mesh.shape))
  checkpointer = Checkpointer(str(d / "checkpoints"), cfg.checkpoint, log=lambda *a: None)
  checkpointer.maybe_save(1, program.init_state(), {}, {"config": cfg.to_dict()}, force=True)
  checkpointer.close()
  return str(d)


def _without_platform_pin():
  # The tests pin JAX to the CPU; without the pin JAX probes every installed plugin (libtpu too), as
  # it does for a user.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return dict(env, PYTHONPATH=ROOT)


def test_export_paths():
  assert export_paths("model") == ("model.safetensors", "model.json")
  assert export_paths("out/m.safetensors") == ("out/m.safetensors", "out/m.json")
  for bad in ("model.json", "model.bin", "dir/"):
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
      export_paths(bad)


def test_export_refuses_a_name_the_config_would_overwrite(workdir, tmp_path):
  with pytest.raises(ValueError, match=r"model\.json: the export must be a \.safetensors file"):
    export_safetensors(workdir, str(tmp_path / "model.json"))
  assert not os.listdir(tmp_path)
  proc = subprocess.run([sys.executable, "scripts/export.py", f"--checkpoint={workdir}",
                         f"--out={tmp_path / 'model.json'}"], cwd=ROOT, env=_without_platform_pin(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith("error: --out=") and len(proc.stderr.strip().splitlines()) == 1


def test_export_is_quiet_and_adds_the_suffix(workdir, tmp_path):
  proc = subprocess.run([sys.executable, "scripts/export.py", f"--checkpoint={workdir}", f"--out={tmp_path / 'm'}"],
                        cwd=ROOT, env=_without_platform_pin(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]
  assert json.load(open(tmp_path / "m.json"))["model"]["vocab_size"] == 256
  noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
  assert not noisy, noisy


def test_load_model_is_quiet(workdir, caplog):
  code = f"import research; model, cfg = research.load_model({workdir!r}); print(cfg.model.vocab_size)"
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_without_platform_pin(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "256", proc.stderr[-2000:]
  noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
  assert not noisy, noisy
  import research  # in-process too: nothing at WARNING or above reaches Python logging
  with caplog.at_level(logging.INFO):
    research.load_model(workdir)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_remote_export_path_is_refused_in_one_line():
  with pytest.raises(ValueError, match="export writes a local file"):
    export_paths("gs://bucket/model.safetensors")
