"""Tests run on CPU with 8 fake devices; every test makes its own small data."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

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
