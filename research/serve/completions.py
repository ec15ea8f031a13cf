"""POST /v1/completions: prompts (text or token ids) continued by the engine, n choices each.

A prompt is used exactly as sent: text is tokenized with no BOS added (TokenText.encode), ids are
taken as they are; an empty string stands for the start of a document (TokenText.document_start).
With echo the prompt comes back first, and with logprobs its tokens are scored as sent (the first
one's log-probability is null: nothing precedes it), followed by the generated tokens, the end
token included when one ends the choice: lm-evaluation-harness' loglikelihood requests (echo,
max_tokens=1, logprobs=1) read the prompt's entries as [ctxlen:-1], so exactly one generated entry
must follow. Choice index = prompt index * n + sample index.
"""
from __future__ import annotations

import asyncio
import time

from research.serve.generation import Choice, check_finished, engine_params
from research.serve.logprobs import Tokens, merge
from research.serve.protocol import CompletionRequest, RequestError, parse_completion
from research.serve.served import Served, response_id, usage
from research.serve.streaming import stream_response


async def create(served: Served, body: dict, request):
  req = parse_completion(body, served.model_name, served.text.vocab_size)
  prompts = [list(p) if isinstance(p, tuple) else (served.text.encode(p) if p else served.text.document_start())
             for p in req.prompts]
  where = "prompt" if len(prompts) == 1 else "prompt[{}]"
  for i, ids in enumerate(prompts):
    served.check_fits(ids, req.max_tokens, where.format(i))
  texts = [p if isinstance(p, str) else served.text.decode(ids) for p, ids in zip(req.prompts, prompts)]
  n = req.sampling.n
  if req.max_tokens > 0:
    served.check_choices(len(prompts) * n, "n" if len(prompts) == 1 else "prompt")
  generation = served.generation()
  if req.max_tokens > 0:
    for i, ids in enumerate(prompts):
      for s in range(n):
        generation.submit(i * n + s, ids, engine_params(req.sampling, req.max_tokens, req.logprobs, s))
  scores = None
  if req.echo and req.logprobs is not None:
    scores = asyncio.ensure_future(_score(served, prompts, req.logprobs, generation.deadline))
  head = {"id": response_id("cmpl"), "object": "text_completion", "created": int(time.time()),
          "model": served.model_name}
  if req.sampling.stream:
    return stream_response(_chunks(served, req, prompts, texts, generation, scores, head), generation)
  if req.max_tokens > 0:
    choices = await generation.collect(request, len(prompts) * n)
  else:
    choices = [Choice(finish_reason="length") for _ in range(len(prompts) * n)]
  echoed = await scores if scores is not None else None
  out = []
  for index, choice in enumerate(choices):
    check_finished(index, choice.finish_reason)
    i = index // n
    parts = [echoed[i]] if echoed is not None else []
    if req.logprobs is not None:
      tokens = Tokens(served.text, prompts[i], len(texts[i]) if req.echo else 0)
      parts.append(tokens.completion(choice.token_ids, choice.logprobs, choice.top_logprobs))
    out.append({"index": index, "text": (texts[i] if req.echo else "") + choice.text,
                "logprobs": merge(parts), "finish_reason": choice.finish_reason})
  completion_tokens = sum(len(c.token_ids) for c in choices)
  return {**head, "choices": out, "usage": usage(sum(map(len, prompts)), completion_tokens)}


async def _score(served: Served, prompts: list[list[int]], top_n: int, deadline: float) -> list[dict]:
  """The echoed prompts' logprobs (each distinct prompt scored once, off the event loop)."""
  def score(ids):   # in a worker thread: the forward pass, then the pieces of every alternative
    logprobs, tops = served.engine.score(list(ids), top_n)
    return Tokens(served.text).completion(ids, logprobs, tops)

  distinct = list(dict.fromkeys(map(tuple, prompts)))
  work = asyncio.gather(*[asyncio.to_thread(score, p) for p in distinct])
  try:
    results = await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
  except TimeoutError:
    raise RequestError("scoring the prompt ran past --request_timeout_s", code="timeout", status=504,
                       type="server_error") from None
  scored = dict(zip(distinct, results))
  return [scored[tuple(p)] for p in prompts]


async def _chunks(served: Served, req: CompletionRequest, prompts, texts, generation, scores, head):
  n, total = req.sampling.n, len(prompts) * req.sampling.n

  def chunk(index, text, logprobs, finish_reason):
    return {**head, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

  if req.echo:
    echoed = await scores if scores is not None else None
    for index in range(total):
      i = index // n
      yield chunk(index, texts[i], echoed[i] if echoed is not None else None, None if req.max_tokens else "length")
  completion_tokens = 0
  if req.max_tokens > 0:
    states = [Tokens(served.text, prompts[c // n], len(texts[c // n]) if req.echo else 0) for c in range(total)]
    async for index, event in generation.events():
      check_finished(index, event.finish_reason)
      completion_tokens += len(event.token_ids)
      logprobs = None
      if req.logprobs is not None:
        logprobs = states[index].completion(event.token_ids, event.logprobs, event.top_logprobs)
      if event.text or event.finish_reason or logprobs:
        yield chunk(index, event.text, logprobs, event.finish_reason)
  if req.sampling.include_usage:
    yield {**head, "choices": [], "usage": usage(sum(map(len, prompts)), completion_tokens)}
