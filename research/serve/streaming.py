"""Server-sent events as OpenAI streams them: `data: {chunk}\\n\\n` per chunk, then `data: [DONE]`.

A client that disconnects ends the response's generator (Starlette cancels it), and the `finally`
cancels the request's engine requests, so a stream nobody reads frees its slots at the next step.
An error while streaming (the headers are gone, so no status can say it) is sent as a last
`data: {"error": ...}` chunk, which the openai client raises as an APIError.
"""
from __future__ import annotations

import json
import logging
from typing import AsyncIterator

from fastapi.responses import StreamingResponse

from research.serve.protocol import RequestError, error_body

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data) -> bytes:
  return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def stream_response(chunks: AsyncIterator[dict], generation) -> StreamingResponse:
  async def body():
    try:
      async for chunk in chunks:
        yield sse(chunk)
      yield sse(b"[DONE]")
    except RequestError as e:
      yield sse(e.body())
      yield sse(b"[DONE]")
    except Exception as e:  # noqa: BLE001 - the server keeps serving; the client gets the reason
      log.exception("stream failed")
      yield sse(error_body(f"{type(e).__name__}: {e}", "server_error", code="internal_error"))
      yield sse(b"[DONE]")
    finally:    # also when the client went away (the generator is cancelled, nothing more is sent)
      if generation is not None:
        generation.cancel()

  return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)
