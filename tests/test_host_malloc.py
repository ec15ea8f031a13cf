"""research.perf.host_malloc: freed step memory stays mapped, so repeated steps stop page-faulting."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# A jitted function with ~64 MiB temporaries, run 6 times; prints the minor page faults of the last 5.
PROBE = """
import resource
from research.perf import host_malloc
print(host_malloc.configure())
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())
x = jnp.ones((4096, 4096), jnp.float32)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str) -> tuple[str, int]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", RESEARCH_HOST_MALLOC=setting, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  return lines[-2], int(lines[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_kept_memory_stops_page_faults():
  kept_line, kept = _probe("keep")
  system_line, system = _probe("system")
  assert "one arena" in kept_line and "RESEARCH_HOST_MALLOC=system" in system_line
  # glibc defaults map and unmap the 64 MiB temporaries on every call: ~16k faults per call.
  assert system > 20_000, system
  assert kept < system / 5, (kept, system)


def test_bad_setting_names_the_variable(monkeypatch):
  from research.perf import host_malloc
  monkeypatch.setattr(host_malloc, "_applied", None)
  monkeypatch.setenv("RESEARCH_HOST_MALLOC", "fast")
  with pytest.raises(ValueError, match="RESEARCH_HOST_MALLOC='fast'.*'keep'.*'system'"):
    host_malloc.configure()
