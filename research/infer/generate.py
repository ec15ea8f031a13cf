"""Text in, text out: prompts encoded as training saw documents, then sampling (continuous
batching, research/infer/engine.py) or beam search (research/infer/beam.py).

A prompt is encoded as a training document starts: BOS first for tokenizers whose models expect it;
an empty prompt starts after the EOS that precedes every document in training."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from research.infer.beam import beam_search
from research.infer.engine import Completion, Engine, Event, SamplingParams


def prompt_ids(tokenizer, text: str) -> list[int]:
  bos = [tokenizer.bos_id] if getattr(tokenizer, "add_bos", False) else []
  return (bos + tokenizer.encode(text)) if text else [tokenizer.eos_id] + bos


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  sampling: SamplingParams
  num_return_sequences: int = 1
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool = False


def generate(engine: Engine, prompts: Sequence[Sequence[int]], settings: GenerateSettings,
             on_event: Callable[[int, Event], None] | None = None) -> list[list[Completion]]:
  """Per prompt, its num_return_sequences completions. Sampling: copy j of prompt i uses seed
  seed + j (so one prompt's completions do not depend on the others in the batch); beam search
  returns the best hypotheses, best first (no streaming)."""
  n, p = settings.num_return_sequences, settings.sampling
  if settings.num_beams > 1:
    return _beams(engine, prompts, settings)
  flat = [list(x) for x in prompts for _ in range(n)]
  params = [dataclasses.replace(p, seed=None if p.seed is None else p.seed + j) for _ in prompts for j in range(n)]
  forward = None if on_event is None else (lambda k, e: on_event(k // n, e))
  out = engine.generate(flat, params, forward)
  return [out[i * n:(i + 1) * n] for i in range(len(prompts))]


def _beams(engine: Engine, prompts, settings: GenerateSettings) -> list[list[Completion]]:
  p, nb = settings.sampling, settings.num_beams
  end = set(p.stop_token_ids) | ({engine.tokenizer.eos_id} if not p.ignore_eos else set())
  per_call = max(1, engine.num_slots // nb)
  if nb > engine.num_slots:
    raise ValueError(f"num_beams={nb} needs {nb} slots; the engine has {engine.num_slots}")
  out = []
  for start in range(0, len(prompts), per_call):
    chunk = [list(x) for x in prompts[start:start + per_call]]
    with engine.device:
      hyps = beam_search(engine.decoder, chunk, num_beams=nb, max_new_tokens=p.max_new_tokens, end_ids=sorted(end),
                         length_penalty=settings.length_penalty, num_return_sequences=settings.num_return_sequences,
                         repetition_penalty=p.repetition_penalty, max_length=p.max_length,
                         early_stopping=settings.early_stopping)
    for prompt_hyps in hyps:
      out.append([_as_completion(engine.tokenizer, h, end, p.stop_strings) for h in prompt_hyps])
  return out


def _as_completion(tokenizer, hyp, end, stop_strings) -> Completion:
  from research.infer.text_stream import TextStream
  stream, text, reason, stopped = TextStream(tokenizer, stop_strings), "", hyp.finish_reason, False
  for t in hyp.token_ids:
    if t in end:
      break
    delta, stopped = stream.push(t)
    text += delta
    if stopped:
      reason = "stop"
      break
  if not stopped:
    text += stream.flush()
  return Completion(hyp.token_ids, text, hyp.logprobs, [], reason)


def sample_completions(model, cfg, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       temperature: float, seed: int) -> list[Completion]:
  """The samples printed at the end of training: prompt i sampled with seed + i, up to its EOS or
  max_new_tokens, with a cache just long enough."""
  from research.infer.decoder import bucket
  longest = max(len(p) for p in prompts) + max_new_tokens
  engine = Engine(model, cfg, tokenizer, num_slots=len(prompts), max_len=bucket(longest, cfg.model.max_seq_len))
  params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
            for i in range(len(prompts))]
  return engine.generate(prompts, params)
