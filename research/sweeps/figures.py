"""Figures for reports: matplotlib's object API on the Agg backend (files only, no display, no
pyplot state), one style for every chart, and the PNG writer."""
from __future__ import annotations

import os
import re

import matplotlib

matplotlib.use("Agg")   # before pyplot is imported anywhere (Optuna's plots use pyplot)

from matplotlib.figure import Figure  # noqa: E402

# Trial outcomes drawn apart: a pruned trial's value is an early step's, a failed one has none.
STATUS_STYLE = {"complete": {"color": "tab:blue", "marker": "o", "linestyle": "-"},
                "pruned": {"color": "tab:orange", "marker": "v", "linestyle": "--"},
                "running": {"color": "tab:gray", "marker": "s", "linestyle": ":"},
                "interrupted": {"color": "tab:purple", "marker": "s", "linestyle": ":"},   # resumes on a rerun
                "unknown": {"color": "tab:gray", "marker": "s", "linestyle": ":"},
                "failed": {"color": "tab:red", "marker": "x", "linestyle": ":"}}


def figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 4.2):
  """(Figure, flat list of its axes)."""
  fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, [ax for row in axes for ax in row]


def save(fig, path: str) -> str:
  """Written to a temporary name and renamed: the workers of one sweep each write the report at their
  end, and a reader never sees half a PNG."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")   # Optuna's charts clip long parameter names otherwise
  os.replace(tmp, path)
  return path


def file_safe(name: str) -> str:
  """A config key as part of a file name: 'optimizer.learning_rate' stays, '/' and spaces do not."""
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
