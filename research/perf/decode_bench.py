"""Decoding speed (scripts/benchmark.py --mode=decode): prefill tokens/s, decode tokens/s at each
batch size, time to first token, the KV cache's size; served throughput and latency (the HTTP
server under N concurrent clients, research/perf/served_bench.py); and, with --compare_pytorch,
transformers' `generate` on the same weights, precision and lengths (tests/pytorch_decode_peer.py,
a test-only reference run in its own process).

Every batch size gets its own decoder with exactly that many slots, all busy, so a figure is the
cost of that batch, not of a larger compiled one. Prompts are random ids (no EOS stop: every row
decodes all new tokens). Times are medians of `repeats` after a compile-and-warm-up run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from research.infer.decoder import bucket
from research.infer.engine import Engine, SamplingParams
from research.infer.sampling import RowSampling


def model_for(cfg, checkpoint: str | None, need_tokenizer: bool):
  """(model, config, tokenizer or None): a checkpoint's, or random weights of the config's shape (its
  tokenizer, from its data, only when asked for or when the vocabulary comes from it: an explicit
  model.vocab_size needs no data stack, as on a bare GPU image)."""
  if checkpoint:
    import research
    model, cfg = research.load_model(checkpoint, merge=True)
    return model, cfg, research.load_tokenizer(checkpoint)
  from research.models.registry import build_model
  from research.train.setup import complete_config
  need_data = need_tokenizer or cfg.model.vocab_size == 0
  _, data = complete_config(cfg, len(jax.devices()), log=lambda *a: None, need_data=need_data)
  return build_model(cfg.model, nnx.Rngs(cfg.seed)), cfg, data.tokenizer if data is not None else None


def _time(fn, repeats: int) -> float:
  fn()   # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def offline(model, cfg, batch_sizes, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  max_len = bucket(prompt_len + new_tokens + 1, cfg.model.max_seq_len)
  rng = np.random.default_rng(0)
  out = {}
  for b in batch_sizes:
    engine = Engine(model, cfg, None, num_slots=b, max_len=max_len)
    dec = engine.decoder
    prompts = [list(rng.integers(0, cfg.model.vocab_size, prompt_len)) for _ in range(b)]

    def prefill():
      jax.block_until_ready(dec.prefill(list(range(b)), prompts, RowSampling.greedy(b), False).tokens)

    def decode():
      tokens, positions = np.zeros(b, np.int32), np.full(b, prompt_len, np.int32)
      for _ in range(new_tokens):
        choice = dec.step(tokens, positions, RowSampling.greedy(b), False)
        tokens = np.asarray(choice.tokens)    # the host sees every token, as serving does
        positions += 1

    t_prefill = _time(prefill, repeats)
    t_decode = _time(decode, repeats)
    params = SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True)
    ttft = _time(lambda: engine.generate(prompts[:1], params), repeats)
    out[str(b)] = {"prefill_tokens_per_sec": b * prompt_len / t_prefill, "prefill_ms": 1000 * t_prefill,
                   "decode_tokens_per_sec": b * new_tokens / t_decode, "decode_step_ms": 1000 * t_decode / new_tokens,
                   "time_to_first_token_ms": 1000 * ttft,
                   "kv_cache_bytes": int(sum(a.nbytes for a in jax.tree.leaves(dec.cache)))}
  return out


def pytorch(cfg, model, batch_sizes, prompt_len: int, new_tokens: int, repeats: int, dtype: str) -> dict:
  """transformers' generate on these weights, exported to a Hugging Face directory, in a subprocess."""
  from research.checkpoint.params_only import save_params_checkpoint
  from research.hf.export_hf import export_hf
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  with tempfile.TemporaryDirectory() as tmp:
    ckpt, hf_dir = os.path.join(tmp, "ckpt"), os.path.join(tmp, "hf")
    step_dir = save_params_checkpoint(ckpt, nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg)
    export_hf(step_dir, hf_dir, dtype=dtype)
    cmd = [sys.executable, os.path.join(root, "tests", "pytorch_decode_peer.py"), f"--hf_dir={hf_dir}",
           f"--batch_sizes={','.join(map(str, batch_sizes))}", f"--prompt_len={prompt_len}",
           f"--new_tokens={new_tokens}", f"--repeats={repeats}", f"--dtype={dtype}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"the PyTorch peer failed: {done.stderr.strip().splitlines()[-1:]}")
    import json
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark_decode(cfg, checkpoint: str | None, batch_sizes, prompt_len: int, new_tokens: int, repeats: int,
                     clients: int, compare_pytorch: bool) -> dict:
  model, cfg, tokenizer = model_for(cfg, checkpoint, need_tokenizer=clients > 0)
  devices = jax.devices()
  result = {"mode": "decode", "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": cfg.model.dtype,
            "device_kind": devices[0].device_kind, "devices": 1,
            "offline": offline(model, cfg, batch_sizes, prompt_len, new_tokens, repeats)}
  if clients:
    from research.perf.served_bench import served
    result["served"] = served(model, cfg, tokenizer, clients, prompt_len, new_tokens, num_slots=clients)
  if compare_pytorch:
    result["pytorch"] = pytorch(cfg, model, batch_sizes, prompt_len, new_tokens, repeats, cfg.model.dtype)
  return result
