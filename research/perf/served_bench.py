"""The HTTP server under load (scripts/benchmark.py --mode=decode --clients=N): the real app
(research/serve) on uvicorn in this process, N client threads each sending streamed greedy
completions of random prompt ids (no EOS stop), over the standard library's http.client (no
client package needed). A first round (the same load) compiles and warms up; the second is measured: completion
tokens/s over the wall time, requests/s, latency and time-to-first-token percentiles."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np

from research.infer.decoder import bucket
from research.infer.engine import Engine


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _request(port: int, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
  """(time to the first token, total latency, completion tokens) of one streamed completion."""
  body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                     "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
  start = time.perf_counter()
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
  conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
  response = conn.getresponse()
  if response.status != 200:
    raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
  first, tokens = None, 0
  for raw in response:
    line = raw.decode().strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
      continue
    chunk = json.loads(line[6:])
    if chunk.get("choices") and first is None:
      first = time.perf_counter() - start
    if chunk.get("usage"):
      tokens = chunk["usage"]["completion_tokens"]
  conn.close()
  return first or 0.0, time.perf_counter() - start, tokens


def _round(port, clients, per_client, prompt_len, new_tokens, vocab) -> dict:
  rng = np.random.default_rng(1)
  prompts = [[[int(t) for t in rng.integers(0, vocab, prompt_len)] for _ in range(per_client)] for _ in range(clients)]
  results, errors = [], []

  def client(i):
    for prompt in prompts[i]:
      try:
        results.append(_request(port, prompt, new_tokens))
      except Exception as e:  # noqa: BLE001  (reported, and the round fails below)
        errors.append(repr(e))

  start = time.perf_counter()
  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  if errors:
    raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
  ttft, latency, tokens = (np.asarray(x) for x in zip(*results))
  pct = lambda a: {f"p{q}": float(np.percentile(a, q) * 1000) for q in (50, 90, 99)}
  return {"requests": len(results), "wall_s": wall, "completion_tokens_per_sec": float(tokens.sum() / wall),
          "requests_per_sec": len(results) / wall, "latency_ms": pct(latency), "time_to_first_token_ms": pct(ttft)}


def served(model, cfg, tokenizer, clients: int, prompt_len: int, new_tokens: int, num_slots: int,
           per_client: int = 4) -> dict:
  import uvicorn
  from research.serve.app import create_app
  from research.serve.served import Served
  from research.serve.tokens import TokenText
  engine = Engine(model, cfg, tokenizer, num_slots=num_slots, max_queue=clients * per_client + 8,
                  max_len=bucket(prompt_len + new_tokens + 1, cfg.model.max_seq_len))
  app = create_app(Served(engine, "bench", TokenText(tokenizer), None, 3600.0))
  port = _free_port()
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
  thread = threading.Thread(target=server.run, daemon=True)
  engine.start()
  thread.start()
  try:
    while not server.started:
      time.sleep(0.05)
    # The warm-up round is the measured load itself: requests then arrive staggered as they will, so
    # every prefill rows bucket and attention span the measured round meets is compiled by then.
    _round(port, clients, per_client, prompt_len, new_tokens, cfg.model.vocab_size)
    out = _round(port, clients, per_client, prompt_len, new_tokens, cfg.model.vocab_size)
  finally:
    server.should_exit = True
    thread.join()
    engine.shutdown()
  return {"clients": clients, "requests_per_client": per_client, "num_slots": num_slots, **out}
