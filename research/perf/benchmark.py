"""Benchmarks: the compiled train step on synthetic tokens, and the data pipeline on its own."""
from __future__ import annotations

import time

import jax
import numpy as np

from research.config import validate_config
from research.models import flops_per_token
from research.perf.compiled import memory_report
from research.sharding import make_mesh
from research.train import mfu as mfu_lib
from research.train.program import build_program


def _spread(times: list[float]) -> dict:
  t = np.asarray(times) * 1000
  return {"step_time_ms": float(np.median(t)), "step_time_ms_p10": float(np.percentile(t, 10)),
          "step_time_ms_p90": float(np.percentile(t, 90)), "step_time_ms_std": float(t.std())}


def benchmark_train(cfg, steps: int, warmup: int) -> dict:
  """Train steps on random tokens (no data pipeline), after `warmup` steps."""
  devices = jax.devices()
  validate_config(cfg, len(devices), need_data=cfg.model.vocab_size == 0)  # random tokens need no corpus
  if cfg.model.vocab_size == 0:  # the tokenizer's size, as in training (cheap once it is cached)
    # Imported here: with an explicit vocabulary the train benchmark needs no data stack (grain,
    # array_record), so it runs where only jax, flax, optax and ml_collections are installed.
    from research.data import build_pipeline
    from research.train.trainer import resolve_vocab
    resolve_vocab(cfg, build_pipeline(cfg.data, log=lambda *a: None).tokenizer)
  program = build_program(cfg, make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape))
  state = program.init_state()
  step = program.compile_train_step()
  t, rng = cfg.train, np.random.default_rng(0)
  rows = t.batch_size // jax.process_count()
  shapes = {k: v.shape for k, v in program.abstract_batch(rows, t.seq_len).items()}

  def batch():
    tokens = rng.integers(0, cfg.model.vocab_size, (rows, t.seq_len + 1)).astype(np.int32)
    b = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((rows, t.seq_len), np.float32)}
    if "positions" in shapes:
      b["positions"] = np.broadcast_to(np.arange(t.seq_len, dtype=np.int32), (rows, t.seq_len)).copy()
      b["segment_ids"] = np.ones((rows, t.seq_len), np.int32)
    return program.put_batch(b)

  for _ in range(warmup):
    state, metrics = step(state, batch())
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    b = batch()
    start = time.perf_counter()
    state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  spread = _spread(times)
  tokens_per_sec = t.batch_size * t.seq_len / (spread["step_time_ms"] / 1000)
  fpt = flops_per_token(cfg.model, t.seq_len)
  peak, source = mfu_lib.peak_flops(devices, cfg.model.dtype)
  memory = memory_report(step, program.abstract_state(), program.abstract_batch(t.batch_size, t.seq_len))
  per_device = memory.get("total")  # the same figure training and --dry_run print
  return {"mode": "train", "tokens_per_sec": tokens_per_sec, **spread,
          "mfu": mfu_lib.mfu(fpt, tokens_per_sec, peak), "peak_flops": peak, "peak_source": source,
          "flops_per_token": fpt, "memory_bytes_per_device": per_device, "steps": steps,
          "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(program.mesh.shape)}


def benchmark_data(cfg, steps: int, warmup: int) -> dict:
  """Batches per second from the training iterator alone (after building corpus and tokenizer)."""
  from research.data import build_pipeline
  data = build_pipeline(cfg.data, log=lambda *a: None)
  t = cfg.train
  it = iter(data.train_dataset(t.batch_size, t.seq_len, cfg.seed))
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  tokens = 0.0
  for _ in range(steps):
    tokens += float(next(it)["weights"].sum())
  seconds = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return {"mode": "data", "tokens_per_sec": tokens / seconds, "batches": steps, "seconds": seconds,
          "packing": cfg.data.packing, "num_workers": cfg.data.num_workers, "read_threads": cfg.data.read_threads,
          "tokenizer": cfg.data.tokenizer}
