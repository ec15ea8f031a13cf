"""Tests run on CPU with 8 fake devices; every test makes its own small data."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# One persistent compilation cache for the session, shared with the scripts the tests start (they
# inherit the environment): the same tiny train step is compiled by ~15 subprocesses, and the cache
# took the checkpoint tests from ~4.5 to ~3 minutes on 2 cores. Fresh per session, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="research-tests-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from tests.helpers import ROOT, tiny_config, write_corpus  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  write_corpus(str(d))
  return str(d)


@pytest.fixture
def tiny_cfg(corpus_dir, tmp_path):
  return tiny_config(corpus_dir, str(tmp_path / "cache"))


def _shared_across_workers(tmp_path_factory):
  """A directory every xdist worker of this session sees (the session's base temp directory); the
  worker's own one without xdist. Session fixtures are built once per worker otherwise."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
  """One tiny pretrained run per test session (SentencePiece tokenizer, 24 steps), shared by the
  finetuning, evaluation and export tests: (its config, its workdir). Built once for all xdist
  workers, under a file lock, by the first that needs it; tests copy it or read it, never change it."""
  from filelock import FileLock
  from research.train.trainer import train
  from research.checkpoint.loading import read_config
  workdir = _shared_across_workers(tmp_path_factory) / "pretrained"

  def config():
    cfg = tiny_config(str(workdir / "corpus"), str(workdir / "cache"))
    cfg.data.tokenizer, cfg.data.vocab_size = "sentencepiece", 320
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 24, 0, 0
    cfg.checkpoint.every_steps, cfg.checkpoint.async_save = 24, False
    return cfg

  with FileLock(str(workdir) + ".lock"):
    if not (workdir / "done").exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a worker that failed half-way left it
      write_corpus(str(workdir / "corpus"))      # the same text as corpus_dir
      train(config(), str(workdir / "run"), log=lambda *a: None)
      (workdir / "done").touch()
  # The same config in every worker, whichever trained (train() completes the config it is given):
  # the experiment's, with the vocabulary the run resolved.
  cfg = config()
  cfg.model.vocab_size = read_config(str(workdir / "run")).model.vocab_size
  return cfg, str(workdir / "run")
