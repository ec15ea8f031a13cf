"""Generation scored against a target (scripts/eval.py --task=generate): lm-evaluation-harness
0.4's `generate_until` as its local-completions model runs it, so the two agree on the same model
and data. Each context is encoded without special tokens and cut to its last
context - 1 - max_gen_toks tokens; greedy decoding (the KV-cache engine, research/infer) until EOS,
a stop string (`until`, not included) or max_gen_toks; the response is stripped of surrounding
whitespace (lm-eval's remove_whitespace filter) and `exact_match` is the share equal to the target.
"""
from __future__ import annotations

import math

from research.infer.engine import Engine, SamplingParams

DEFAULT_UNTIL = ("\n\n",)   # lm-eval's default stop: the few-shot delimiter
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default


def generate_until(engine: Engine, items, until=DEFAULT_UNTIL, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                   context: int | None = None) -> dict:
  tokenizer = engine.tokenizer
  context = min(context or engine.max_len, engine.max_len)
  keep = context - 1 - max_gen_toks
  if keep < 1:
    raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for a context in {context} tokens")
  prompts = [tokenizer.encode(item.context)[-keep:] for item in items]
  params = SamplingParams(max_new_tokens=max_gen_toks, temperature=0, stop_strings=tuple(until))
  responses = [c.text for c in engine.generate(prompts, params)]
  matches = [float(r.strip() == item.target) for r, item in zip(responses, items)]
  n = len(matches)
  mean = sum(matches) / n
  stderr = math.sqrt(sum((m - mean) ** 2 for m in matches) / (n - 1) / n) if n > 1 else float("nan")
  return {"num_examples": n, "exact_match": mean, "exact_match_stderr": stderr, "until": list(until),
          "max_gen_toks": max_gen_toks, "context": context, "responses": responses}
