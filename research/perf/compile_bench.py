"""Compile-time benchmark: seconds to build and compile the train step with `model.scan_layers` off
(every block unrolled into the program) and on (one lax.scan over stacked blocks), per depth.

Nothing is initialised or run, only compiled (`build_program(cfg, mesh).compile_train_step()`, what
training compiles), so a depth whose state would not fit this host still measures. A persistent
compilation cache would serve a repeated program from disk: measure in a process without one
(`scripts/benchmark.py --mode=compile` turns it off; the report says whether one was on).
"""
from __future__ import annotations

import copy
import time

import jax
import numpy as np

from research.config import validate_config
from research.train.setup import complete_config
from research.sharding import make_mesh
from research.train.program import build_program

NEEDS_VOCAB = ("--mode=compile builds no tokenizer: set the vocabulary explicitly, "
               "--config.model.vocab_size=N")


def _variant(cfg, num_layers: int, scan_layers: bool):
  c = copy.deepcopy(cfg)
  c.model.num_layers = num_layers
  c.model.scan_layers = scan_layers
  return c


def compile_seconds(cfg, mesh) -> float:
  """Wall seconds of build_program (abstract model, optimizer, shardings) plus trace, lowering and
  XLA compile of the train step."""
  start = time.perf_counter()
  build_program(cfg, mesh).compile_train_step()
  return time.perf_counter() - start


def benchmark_compile(cfg, depths: list[int] | tuple[int, ...] = (), repeats: int = 3) -> dict:
  """Compile seconds of the train step, scan_layers off and on, at each of `depths` (default: the
  config's num_layers): the median of `repeats` compiles (each a real one: a new jit, nothing
  reused in memory). Raises ValueError (one line) when model.vocab_size is 0."""
  if cfg.model.vocab_size == 0:
    raise ValueError(NEEDS_VOCAB)
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  devices = jax.devices()
  complete_config(cfg, len(devices), log=lambda *a: None, need_data=False)  # as training would, once
  depths = [int(d) for d in depths] or [cfg.model.num_layers]
  for d in depths:  # every variant, before anything compiles
    validate_config(_variant(cfg, d, True), len(devices), need_data=False)
    validate_config(_variant(cfg, d, False), len(devices), need_data=False)
  mesh = make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape)
  # A first compile in a process pays one-off costs (tracing caches, XLA start-up): spend them on a
  # depth that is not reported, once per variant.
  warmup_layers = next(d for d in range(1, max(depths) + 2) if d not in depths)
  for scan in (False, True):
    compile_seconds(_variant(cfg, warmup_layers, scan), mesh)
  times = {(d, scan): [] for d in depths for scan in (False, True)}
  for _ in range(repeats):  # interleaved, so a slow spell of a shared host spreads over all of them
    for d in depths:
      for scan in (False, True):
        times[(d, scan)].append(compile_seconds(_variant(cfg, d, scan), mesh))
  unrolled = [float(np.median(times[(d, False)])) for d in depths]
  scanned = [float(np.median(times[(d, True)])) for d in depths]
  return {"mode": "compile", "num_layers": depths, "unrolled_seconds": unrolled, "scan_seconds": scanned,
          "unrolled_over_scan": [u / s for u, s in zip(unrolled, scanned)], "repeats": repeats,
          "warmup_layers": warmup_layers,
          "persistent_cache": bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir),
          "remat": cfg.model.remat, "batch_size": cfg.train.batch_size, "seq_len": cfg.train.seq_len,
          "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape)}
