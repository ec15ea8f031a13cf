"""POST /v1/chat/completions: messages rendered with the checkpoint's chat template and tokenized as
SFT training tokenized its prompts (research/data/chat.py: the template, BOS for a built-in one
when the model expects it, special-token text refused in content), then continued by the engine.

The template (`--chat_template`): "auto" is the tokenizer's own, else the run's `sft.template` when
that names a built-in one (an SFT run on a tokenizer without a template); a built-in name forces
that one. A checkpoint with neither serves completions only: chat answers 400 naming the flag.
"""
from __future__ import annotations

import time

from research.data.chat import ConversationEncoder, chat_template
from research.data.chat_templates import BUILTIN_TEMPLATES
from research.data.corpus import DataError
from research.serve.generation import check_finished, engine_params
from research.serve.logprobs import Tokens
from research.serve.protocol import ChatRequest, RequestError, parse_chat, parse_messages
from research.serve.served import Served, response_id, usage
from research.serve.streaming import stream_response

# A reply after the conversation: ConversationEncoder.prompt gives the ids before it, the generation
# prompt exactly as training tokenized the prompt of a reply. Its own text is never used.
_NEXT_REPLY = {"role": "assistant", "content": "."}


def template_name(flag: str, tokenizer, run_cfg) -> str | None:
  """The chat template to serve: a built-in name, "auto" (the tokenizer's own) or None (no chat)."""
  if flag != "auto":
    if flag not in BUILTIN_TEMPLATES:
      raise ValueError(f"--chat_template={flag!r} is not one of auto, {', '.join(BUILTIN_TEMPLATES)}")
    return flag
  if tokenizer.chat_template:
    return "auto"
  run_template = run_cfg.sft.template if run_cfg is not None and "sft" in run_cfg else "auto"
  return run_template if run_template in BUILTIN_TEMPLATES else None


class ChatPrompts:
  """messages -> the prompt ids the model continues from."""

  def __init__(self, tokenizer, name: str):
    self.template = chat_template(name, tokenizer)
    self.encoder = ConversationEncoder(tokenizer, self.template)

  def ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    try:
      if add_generation_prompt:
        return self.encoder.prompt(messages + [_NEXT_REPLY])
      return [i for piece, _ in self.encoder.pieces(messages) for i in piece]
    except (ValueError, DataError) as e:   # a template's raise_exception, special-token text in content
      raise RequestError(str(e), "messages") from None


def prompt_ids(served: Served, body: dict) -> list[int]:
  """The prompt of a chat body (also POST /tokenize with messages)."""
  if served.chat is None:
    raise RequestError("this checkpoint has no chat template (its tokenizer has none and its run set no "
                       f"built-in sft.template); start the server with --chat_template=one of "
                       f"{', '.join(BUILTIN_TEMPLATES)}, or use /v1/completions", "messages",
                       code="no_chat_template")
  add = body.get("add_generation_prompt", True)
  if not isinstance(add, bool):
    raise RequestError("add_generation_prompt must be a boolean", "add_generation_prompt", code="invalid_type")
  return served.chat.ids(parse_messages(body), add)


async def create(served: Served, body: dict, request):
  req = parse_chat(body, served.model_name, served.text.vocab_size)
  ids = prompt_ids(served, body)
  served.check_fits(ids, 1, "messages")
  max_new = req.max_tokens if req.max_tokens is not None else served.max_len   # the engine stops at the context
  n = req.sampling.n
  served.check_choices(n, "n")
  generation = served.generation()
  for s in range(n):
    generation.submit(s, ids, engine_params(req.sampling, max_new, req.logprobs, s))
  head = {"id": response_id("chatcmpl"), "created": int(time.time()), "model": served.model_name}
  if req.sampling.stream:
    return stream_response(_chunks(served, req, ids, generation, head), generation)
  choices = await generation.collect(request, n)
  out = []
  for index, choice in enumerate(choices):
    check_finished(index, choice.finish_reason)
    logprobs = None
    if req.logprobs is not None:
      logprobs = {"content": Tokens(served.text, ids).chat(choice.token_ids, choice.logprobs, choice.top_logprobs)}
    out.append({"index": index, "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs, "finish_reason": choice.finish_reason})
  return {**head, "object": "chat.completion", "choices": out,
          "usage": usage(len(ids), sum(len(c.token_ids) for c in choices))}


async def _chunks(served: Served, req: ChatRequest, ids, generation, head):
  head = {**head, "object": "chat.completion.chunk"}

  def chunk(index, delta, logprobs=None, finish_reason=None):
    return {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

  for index in range(req.sampling.n):
    yield chunk(index, {"role": "assistant", "content": ""})
  states = [Tokens(served.text, ids) for _ in range(req.sampling.n)]
  completion_tokens = 0
  async for index, event in generation.events():
    check_finished(index, event.finish_reason)
    completion_tokens += len(event.token_ids)
    logprobs = None
    if req.logprobs is not None and event.token_ids:
      logprobs = {"content": states[index].chat(event.token_ids, event.logprobs, event.top_logprobs)}
    if event.text or logprobs:
      yield chunk(index, {"content": event.text}, logprobs)
    if event.finish_reason:
      yield chunk(index, {}, None, event.finish_reason)
  if req.sampling.include_usage:
    yield {**head, "choices": [], "usage": usage(len(ids), completion_tokens)}
