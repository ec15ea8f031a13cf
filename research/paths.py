"""Paths that may be local or remote (gs://bucket/run): the one place that tells them apart.

A remote URI must never go through os.path (abspath would turn gs://b/run into ./gs:/b/run, a copy
on each host's disk); etils.epath reads and writes both.
"""
from __future__ import annotations

import os


def is_remote(path) -> bool:
  return "://" in str(path)


def absolute(path) -> str:
  """A local path made absolute (so subprocesses and Orbax agree); a remote URI as given."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))
