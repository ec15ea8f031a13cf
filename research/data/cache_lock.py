"""One builder at a time for a cache entry (a corpus's array_record files, a trained tokenizer):
runs that start together on one cache, such as a sweep's parallel trials, build it once and the
others wait, then read it. An exclusive flock on a local directory; remote caches take no lock
(their writers rename complete results into place, so a reader never sees half of one)."""
from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def cache_lock(directory: str):
  if "://" in str(directory):
    yield
    return
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".build.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
