"""A checkpoint -> the served model (engine, tokenizer text, chat prompts) -> uvicorn."""
from __future__ import annotations

import logging

from research.serve.served import Served

log = logging.getLogger(__name__)


def build_served(checkpoint: str, model_name: str | None = None, num_slots: int = 8, max_queue: int = 64,
                 request_timeout_s: float = 60.0, chat_template: str = "auto") -> Served:
  from research.infer.engine import Engine
  from research.serve.chat import ChatPrompts, template_name
  from research.serve.tokens import TokenText
  engine = Engine.from_checkpoint(checkpoint, num_slots=num_slots, max_queue=max_queue)
  name = template_name(chat_template, engine.tokenizer, engine.cfg)
  chat = ChatPrompts(engine.tokenizer, name) if name is not None else None
  return Served(engine, model_name or engine.model_name, TokenText(engine.tokenizer), chat, request_timeout_s)


def run(served: Served, host: str, port: int) -> None:
  """Serves until SIGINT/SIGTERM; the engine's decode thread runs meanwhile."""
  import uvicorn
  from research.serve.app import create_app
  served.engine.start()
  chat = served.chat.template.name if served.chat is not None else "none (completions only)"
  print(f"serving {served.model_name!r} on http://{host}:{port} (context {served.max_len} tokens, "
        f"chat template {chat}, {served.engine.num_slots} slots)", flush=True)
  try:
    uvicorn.run(create_app(served), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
  finally:
    served.engine.shutdown()
