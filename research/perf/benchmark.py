"""Benchmarks: the compiled train step on synthetic tokens (in full, or against a LoRA step of the same
model), and the data pipeline on its own."""
from __future__ import annotations

import time

import jax
import numpy as np

from research.models import flops_per_token
from research.perf.compiled import compiler_flops, memory_report
from research.sharding import make_mesh
from research.train import mfu as mfu_lib
from research.train.program import build_program
from research.train.setup import complete_config


def _spread(times: list[float]) -> dict:
  t = np.asarray(times) * 1000
  return {"step_time_ms": float(np.median(t)), "step_time_ms_p10": float(np.percentile(t, 10)),
          "step_time_ms_p90": float(np.percentile(t, 90)), "step_time_ms_std": float(t.std())}


def benchmark_train(cfg, steps: int, warmup: int) -> dict:
  """Train steps on random tokens (no data pipeline), after `warmup` steps."""
  devices = jax.devices()
  # Random tokens need no corpus: the data is opened only for the tokenizer's vocabulary size
  # (model.vocab_size=0, as in training; cheap once cached). With an explicit vocabulary the train
  # benchmark needs no data stack (grain, array_record) at all.
  task, _ = complete_config(cfg, len(devices), log=lambda *a: None, need_data=False)
  program = build_program(cfg, make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape), task)
  state = program.init_state()
  step = program.compile_train_step()
  t = cfg.train
  batch = program.synthetic_batch(seed=0)

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
  peak, source = mfu_lib.peak_flops(devices, cfg.model.dtype, cfg.train.peak_flops)
  memory = memory_report(step, program.abstract_state(), program.abstract_batch(t.batch_size, t.seq_len))
  per_device = memory.get("total")  # the same figure training and --dry_run print
  return {"mode": "train", "tokens_per_sec": tokens_per_sec, **spread,
          "mfu": mfu_lib.mfu(fpt, tokens_per_sec, peak), "peak_flops": peak, "peak_source": source,
          "flops_per_token": fpt, "memory_bytes_per_device": per_device, "memory_per_device": memory,
          "compiler_flops_per_step": compiler_flops(step), "steps": steps,
          "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(program.mesh.shape)}


def benchmark_lora(cfg, steps: int, warmup: int, rank: int) -> dict:
  """The same model's train step in full (every parameter trains) and with LoRA adapters of `rank`
  (the base frozen: no base gradient, no base optimizer state), on random tokens and a random base
  (speed and memory do not depend on the weights). mfu uses the full step's FLOPs per token for
  both, so the ratio of the two mfu values is the ratio of throughputs."""
  runs = {}
  for name, r in (("full", 0), ("lora", rank)):
    c = cfg.copy_and_resolve_references()
    c.lora.rank, c.finetune.init_from = r, ""
    runs[name] = benchmark_train(c, steps, warmup)
  full, lora = runs["full"], runs["lora"]
  return {"mode": "lora", "rank": rank, "targets": list(cfg.lora.targets), "full": full, "lora": lora,
          "speedup": lora["tokens_per_sec"] / full["tokens_per_sec"],
          "memory_ratio": (lora["memory_bytes_per_device"] / full["memory_bytes_per_device"]
                           if full["memory_bytes_per_device"] else None)}


def benchmark_data(cfg, steps: int, warmup: int) -> dict:
  """Batches per second from the training iterator alone (after building corpus and tokenizer)."""
  from research.train.setup import prepare_task
  _, data = prepare_task(cfg, log=lambda *a: None)
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
