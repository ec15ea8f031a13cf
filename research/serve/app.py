"""The FastAPI app: routes, and every failure as an OpenAI-style error body.

Routes read the raw body themselves (protocol.parse_json), so malformed JSON, wrong types and
out-of-range values are all 400s naming the field, never FastAPI's 422. Any other exception in a
route is logged and answered 500: input never stops the server.
"""
from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from research.serve import chat, completions, tokens
from research.serve.protocol import RequestError, error_body, parse_json
from research.serve.served import Served

log = logging.getLogger(__name__)


def create_app(served: Served) -> FastAPI:
  app = FastAPI(title="research OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)
  app.state.served = served
  started = int(time.time())

  @app.exception_handler(RequestError)
  async def refused(request: Request, e: RequestError):
    return JSONResponse(e.body(), status_code=e.status)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException):   # unknown routes (404), wrong methods (405)
    return JSONResponse(error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

  @app.exception_handler(RequestValidationError)
  async def invalid(request: Request, e: RequestValidationError):
    return JSONResponse(error_body(str(e), code="invalid_value"), status_code=400)

  @app.exception_handler(Exception)
  async def failed(request: Request, e: Exception):
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse(error_body(f"{type(e).__name__}: {e}", "server_error", code="internal_error"),
                        status_code=500)

  @app.post("/v1/completions")
  async def create_completion(request: Request):
    return await completions.create(served, parse_json(await request.body()), request)

  @app.post("/v1/chat/completions")
  async def create_chat_completion(request: Request):
    return await chat.create(served, parse_json(await request.body()), request)

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{"id": served.model_name, "object": "model", "created": started,
                                        "owned_by": "research", "max_model_len": served.max_len}]}

  @app.get("/health")
  async def health():
    pending = getattr(served.engine, "pending", None)
    return {"status": "ok", "model": served.model_name, "pending": pending() if pending else None}

  @app.get("/tokenizer_info")
  async def tokenizer_info():
    template = served.chat.template.source if served.chat is not None else None
    return tokens.tokenizer_info(served.text, served.max_len, template)

  @app.post("/tokenize")
  async def tokenize(request: Request):
    return tokens.tokenize(parse_json(await request.body()), served.text, served.max_len,
                           lambda body: chat.prompt_ids(served, body))

  @app.post("/detokenize")
  async def detokenize(request: Request):
    return tokens.detokenize(parse_json(await request.body()), served.text)

  return app
