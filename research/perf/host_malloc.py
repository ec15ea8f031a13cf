"""Back the host's malloc with transparent huge pages (glibc), so train steps stop page-faulting.

Why: XLA CPU mallocs a step's temporaries on every call, and glibc maps blocks that large fresh and
unmaps them on free, so every step page-faults through new 4 KiB pages. With glibc's
`glibc.malloc.hugetlb=1` tunable the memory is advised as transparent huge pages, faulted 2 MiB at a
time, and the resident memory stays flat (fault counts, step times and the mallopt alternative that
fragmented: PERFORMANCE.md, "The default step from 800 to ~390 ms").

glibc reads tunables only when a process starts, so `configure()` re-executes the entry point once
with GLIBC_TUNABLES extended (same pid, same arguments). It does nothing when the variable already
says hugetlb, off glibc >= 2.35, when the kernel's THP mode is 'never', or with
RESEARCH_HOST_MALLOC=system.
"""
from __future__ import annotations

import os
import platform
import sys

ENV = "RESEARCH_HOST_MALLOC"
TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def configure() -> str:
  """Re-executes this process with huge-page malloc when that applies (does not return then);
  otherwise returns a one-line description of the host malloc in effect. Call it before
  anything starts threads (before importing JAX)."""
  choice = os.environ.get(ENV, "hugepages")
  if choice not in ("hugepages", "system"):
    raise ValueError(f"{ENV}={choice!r}: expected 'hugepages' (default) or 'system'")
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return f"host malloc: GLIBC_TUNABLES={tunables} ({ENV}=system leaves glibc's defaults)"
  if choice == "system":
    return f"host malloc: glibc defaults ({ENV}=system)"
  reason = _unsupported()
  if reason:
    return f"host malloc: system defaults ({reason})"
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
  raise AssertionError("unreachable")


def _unsupported() -> str:
  """Why huge-page malloc cannot apply here, or ''."""
  if not sys.executable or not getattr(sys, "orig_argv", None):
    return "no interpreter to re-execute"
  libc, version = platform.libc_ver()
  if platform.system() != "Linux" or libc != "glibc":
    return "not glibc"
  if tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
    return f"glibc {version} < 2.35 has no hugetlb tunable"
  try:
    with open(THP_MODE) as f:
      if "[never]" in f.read():
        return "transparent huge pages are off"
  except OSError:
    return f"no {THP_MODE}"
  return ""
