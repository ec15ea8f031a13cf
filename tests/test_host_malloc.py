"""research.perf.host_malloc: with huge-page malloc, repeated steps stop page-faulting."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# A jitted function with 64 MiB temporaries, run 6 times; prints the minor page faults of the last 5.
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
  env.pop("GLIBC_TUNABLES", None)
  out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  return lines[-2], int(lines[-1])


def test_huge_pages_stop_page_faults():
  from research.perf.host_malloc import _unsupported
  if _unsupported():
    pytest.skip(_unsupported())
  huge_line, huge = _probe("hugepages")
  system_line, system = _probe("system")
  assert "glibc.malloc.hugetlb=1" in huge_line, huge_line   # the probe re-executed itself
  assert "RESEARCH_HOST_MALLOC=system" in system_line
  # glibc's defaults map and unmap the 64 MiB temporaries on every call: 16k+ faults per call.
  assert system > 50_000, system
  assert huge < system / 5, (huge, system)


def test_bad_setting_names_the_variable(monkeypatch):
  from research.perf import host_malloc
  monkeypatch.setenv("RESEARCH_HOST_MALLOC", "fast")
  with pytest.raises(ValueError, match="RESEARCH_HOST_MALLOC='fast'.*'hugepages'.*'system'"):
    host_malloc.configure()
