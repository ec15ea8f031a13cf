"""Metrics out: one JSON object per line in DIR/metrics.jsonl, TensorBoard scalars under DIR/tensorboard,
and a progress line on the terminal. Only process 0 writes."""
from __future__ import annotations

import json
import math
import sys
import time

from etils import epath

from research.paths import is_remote


def _clean(value):
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable rather than invalid
  return value


class MetricsWriter:
  """Appends to a local metrics.jsonl; on a remote workdir (object stores cannot append) it keeps the
  file's lines and rewrites the object each time (a few hundred KB over a whole run)."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.remote = is_remote(workdir)
    self.path = str(epath.Path(workdir) / "metrics.jsonl")
    self._tb = None
    self._lines: list[str] = []
    if enabled:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      if self.remote and epath.Path(self.path).exists():
        self._lines = epath.Path(self.path).read_text().splitlines(keepends=True)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}, "time": time.time()}
    if self.remote:
      self._lines.append(json.dumps(record) + "\n")
      epath.Path(self.path).write_text("".join(self._lines))
    else:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class EvalReports:
  """A task's evaluation reports: DIR/eval/<step>.json, and figures beside them (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.directory, self.enabled = epath.Path(workdir) / "eval", enabled

  def write(self, step: int, report: dict) -> None:
    if self.enabled:
      self.directory.mkdir(parents=True, exist_ok=True)
      (self.directory / f"{int(step)}.json").write_text(json.dumps(_json_safe(report), indent=1))

  def write_files(self, files: dict[str, bytes]) -> list[str]:
    """Writes each name -> bytes; returns the paths written."""
    if not self.enabled:
      return []
    self.directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
      (self.directory / name).write_bytes(data)
    return [str(self.directory / name) for name in files]


def _json_safe(value):
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return _clean(value)


class Progress:
  """A tqdm bar on a terminal; plain lines (one per log) otherwise, e.g. under CI or SLURM."""

  def __init__(self, total: int, initial: int, enabled: bool, live: bool | None = None):
    self.enabled = enabled
    live = sys.stderr.isatty() if live is None else live
    self._bar = None
    if enabled and live:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

  def update(self, step: int, text: str, log_line: bool) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix_str(text, refresh=True)
    elif log_line:
      print(f"step {step}: {text}", flush=True)

  def write(self, text: str) -> None:
    if self._bar is not None:
      self._bar.write(text)
    elif self.enabled:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
