"""Keep the host's freed memory mapped between train steps (glibc only), so steps do not page-fault.

Why: XLA CPU allocates a step's temporaries (841 MiB for the default config) with malloc on every
call. With glibc's defaults, blocks that large are mmap'ed and unmapped again on free, and other
threads' arenas trim their heaps, so every step touches fresh pages: 187,000 minor page faults per
default step, ~140 ms of its ~700 ms (PERFORMANCE.md). One arena, no mmap and a high trim threshold
keep the memory mapped after the first step: ~1,400 faults per step.

Must run before JAX starts its CPU client: threads that already hold their own arena keep it. The
entry points call `configure()` before importing JAX; `RESEARCH_HOST_MALLOC=system` leaves glibc's
defaults alone. The cost: the process keeps its peak heap (up to 2 GiB free at the top) instead of
returning it to the OS, and all threads share one malloc arena.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "RESEARCH_HOST_MALLOC"
# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1   # mallopt takes a C int: the largest it accepts (2 GiB)

_applied: str | None = None


def configure() -> str:
  """Applies the settings once per process; returns a one-line description of what is in effect."""
  global _applied
  if _applied is not None:
    return _applied
  choice = os.environ.get(ENV, "keep")
  if choice not in ("keep", "system"):
    raise ValueError(f"{ENV}={choice!r}: expected 'keep' (default) or 'system'")
  if choice == "system":
    _applied = f"host malloc: glibc defaults ({ENV}=system)"
  elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    _applied = "host malloc: system defaults (not glibc)"
  else:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    _applied = ("host malloc: one arena, no mmap, freed memory kept (up to 2 GiB); "
                f"{ENV}=system turns this off" if ok else "host malloc: glibc refused mallopt, defaults kept")
  return _applied
