"""serve: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over research.infer's Engine.

  app.py          routes; every failure an OpenAI-style error body (400 naming the field, 503 busy)
  protocol.py     request bodies -> checked settings (Fields: types, ranges), RequestError
  completions.py  POST /v1/completions (text or token-id prompts, n, echo scoring, logprobs)
  chat.py         POST /v1/chat/completions (the checkpoint's chat template, research/data/chat.py)
  streaming.py    server-sent events (`data: {...}`, `data: [DONE]`)
  generation.py   one request's engine submissions: engine thread -> asyncio.Queue, deadline, cancel
  logprobs.py     logprobs in completions' and chat's formats
  tokens.py       the tokenizer as served (special-token text), GET /tokenizer_info, POST /tokenize,
                  POST /detokenize (lm-evaluation-harness' tokenizer_backend=remote)
  served.py       what routes share: engine, model name, tokenizer, chat prompts, time limit

All generation goes through the engine (continuous batching across requests); this package never
touches the model or the device itself, and runs nothing on the event loop that waits for them.
"""
