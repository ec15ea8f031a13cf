"""Request bodies -> checked settings, and OpenAI-style errors.

Every field is read through `Fields`, which checks its type and range and raises `RequestError`
naming it (`param`), so a bad request is a 400 with {"error": {message, type, param, code}} and
never reaches the engine. Booleans are not numbers here (JSON `true` is not `1`). Unknown fields are
ignored (clients such as lm-evaluation-harness send extras), but OpenAI settings this server does not
implement are refused when set to anything but their neutral value, rather than silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import math

MAX_LOGPROBS = 20    # top alternatives per token (the engine computes up to 20, OpenAI's chat limit)
MAX_N = 128          # choices per prompt (OpenAI's limit)


class RequestError(Exception):
  """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

  def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value",
               status: int = 400, type: str = "invalid_request_error"):
    super().__init__(message)
    self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

  def body(self) -> dict:
    return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
  return {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_json(raw: bytes) -> dict:
  """The request body as a JSON object, or a RequestError."""
  try:
    body = json.loads(raw)
  except (ValueError, UnicodeDecodeError) as e:
    raise RequestError(f"the body is not valid JSON ({e})", code="invalid_json") from None
  if not isinstance(body, dict):
    raise RequestError(f"the body must be a JSON object, got {_kind(body)}", code="invalid_type")
  return body


def _kind(value) -> str:
  return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
          dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class Fields:
  """Typed, range-checked reads of a JSON object's fields; `prefix` names nested objects in errors."""

  def __init__(self, body: dict, prefix: str = ""):
    self.body, self.prefix = body, prefix

  def name(self, key: str) -> str:
    return self.prefix + key

  def has(self, key: str) -> bool:
    return self.body.get(key) is not None

  def wrong_type(self, key: str, want: str) -> RequestError:
    return RequestError(f"{self.name(key)} must be {want}, got {_kind(self.body[key])}", self.name(key),
                        code="invalid_type")

  def out_of_range(self, key: str, rule: str) -> RequestError:
    return RequestError(f"{self.name(key)}={self.body[key]!r} must be {rule}", self.name(key))

  def boolean(self, key: str, default: bool) -> bool:
    if not self.has(key):
      return default
    if not isinstance(self.body[key], bool):
      raise self.wrong_type(key, "a boolean")
    return self.body[key]

  def string(self, key: str, default: str | None = None) -> str | None:
    if not self.has(key):
      return default
    if not isinstance(self.body[key], str):
      raise self.wrong_type(key, "a string")
    return self.body[key]

  def integer(self, key: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    if not self.has(key):
      return default
    value = self.body[key]
    if isinstance(value, float) and value.is_integer():   # 16.0 is 16 (some clients write floats)
      value = int(value)
    if not _is_int(value):
      raise self.wrong_type(key, "an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
      raise self.out_of_range(key, _range(lo, hi))
    return value

  def number(self, key: str, default: float, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False) -> float:
    if not self.has(key):
      return default
    value = self.body[key]
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
      raise self.wrong_type(key, "a finite number")
    if lo is not None and (value < lo or (lo_open and value == lo)) or hi is not None and value > hi:
      low = f"> {lo}" if lo_open else f">= {lo}"
      raise self.out_of_range(key, low if hi is None else f"in {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)

  def strings(self, key: str) -> tuple[str, ...]:
    """A string or an array of non-empty strings (`stop`)."""
    if not self.has(key):
      return ()
    value = self.body[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
      raise self.wrong_type(key, "a string or an array of strings")
    if any(not v for v in values):
      raise RequestError(f"{self.name(key)} holds an empty string, which would stop before any text",
                         self.name(key))
    return tuple(values)

  def token_ids(self, key: str, vocab_size: int) -> tuple[int, ...]:
    if not self.has(key):
      return ()
    value = self.body[key]
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
      raise self.wrong_type(key, "an array of token ids (integers)")
    if any(not 0 <= v < vocab_size for v in value):
      raise RequestError(f"{self.name(key)}: token ids must be in 0..{vocab_size - 1}", self.name(key))
    return tuple(value)

  def neutral(self, key: str, neutral_values: tuple, why: str = "") -> None:
    """Refuses a setting this server does not implement, unless it holds a value that changes nothing."""
    if self.has(key) and self.body[key] not in neutral_values:
      raise RequestError(f"{self.name(key)} is not supported by this server{why}", self.name(key),
                         code="unsupported_parameter")


def _range(lo, hi) -> str:
  if hi is None:
    return f">= {lo}"
  if lo is None:
    return f"<= {hi}"
  return f"in {lo}..{hi}"


@dataclasses.dataclass(frozen=True)
class Sampling:
  """The sampling settings common to completions and chat (engine SamplingParams minus the length)."""
  n: int
  temperature: float
  top_p: float
  top_k: int
  repetition_penalty: float
  stop: tuple[str, ...]
  stop_token_ids: tuple[int, ...]
  seed: int | None
  ignore_eos: bool
  stream: bool
  include_usage: bool


def check_model(fields: Fields, model_name: str) -> None:
  model = fields.string("model")
  if model is not None and model != model_name:
    raise RequestError(f"model {model!r} is not served here; this server serves {model_name!r} (GET /v1/models)",
                       "model", code="model_not_found")


def parse_sampling(fields: Fields, vocab_size: int) -> Sampling:
  """The fields both endpoints share; refuses the OpenAI settings this server does not implement."""
  for key in ("presence_penalty", "frequency_penalty"):
    fields.neutral(key, (0, 0.0), " (repetition_penalty is)")
  fields.neutral("logit_bias", ({},))
  fields.neutral("tools", ([],))
  fields.neutral("functions", ([],))
  n = fields.integer("n", 1, 1, MAX_N)
  stream = fields.boolean("stream", False)
  include_usage = False
  if fields.has("stream_options"):
    if not stream:
      raise RequestError("stream_options is only allowed with stream=true", "stream_options")
    if not isinstance(fields.body["stream_options"], dict):
      raise fields.wrong_type("stream_options", "an object")
    include_usage = Fields(fields.body["stream_options"], "stream_options.").boolean("include_usage", False)
  top_k = fields.integer("top_k", 0, -1)
  return Sampling(
      n=n,
      temperature=fields.number("temperature", 1.0, 0.0, 2.0),
      top_p=fields.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
      top_k=max(top_k, 0),            # -1 is vLLM's "off", 0 ours
      repetition_penalty=fields.number("repetition_penalty", 1.0, 0.0, lo_open=True),
      stop=fields.strings("stop"),
      stop_token_ids=fields.token_ids("stop_token_ids", vocab_size),
      seed=fields.integer("seed", None),
      ignore_eos=fields.boolean("ignore_eos", False),
      stream=stream, include_usage=include_usage)


def sample_seed(seed: int | None, sample: int) -> int | None:
  """The seed of a prompt's sample-th choice: n seeded choices differ, and repeat across requests."""
  return None if seed is None else (seed + sample) & 0xFFFFFFFF


# -- /v1/completions ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CompletionRequest:
  prompts: list            # each a string or a tuple of token ids
  max_tokens: int
  echo: bool
  logprobs: int | None     # None: no logprobs in the response
  sampling: Sampling


def parse_prompts(value, vocab_size: int) -> list:
  """A string, an array of strings, an array of token ids, or an array of such arrays."""
  def ids(v, where):
    if any(not 0 <= t < vocab_size for t in v):
      raise RequestError(f"{where}: token ids must be in 0..{vocab_size - 1}", "prompt")
    return tuple(v)

  if isinstance(value, str):
    return [value]
  want = "a string, an array of strings, an array of token ids or an array of arrays of token ids"
  if not isinstance(value, list) or not value:
    raise RequestError(f"prompt must be {want}, got {'an empty array' if value == [] else _kind(value)}",
                       "prompt", code="invalid_type")
  if all(isinstance(v, str) for v in value):
    return list(value)
  if all(_is_int(v) for v in value):
    return [ids(value, "prompt")]
  if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
    return [ids(v, f"prompt[{i}]") for i, v in enumerate(value)]
  raise RequestError(f"prompt must be {want} (no empty or mixed arrays)", "prompt", code="invalid_type")


def parse_completion(body: dict, model_name: str, vocab_size: int) -> CompletionRequest:
  fields = Fields(body)
  check_model(fields, model_name)
  if "prompt" not in body:
    raise RequestError("prompt is required", "prompt", code="missing")
  prompts = parse_prompts(body["prompt"], vocab_size)
  fields.neutral("suffix", ("",))
  echo = fields.boolean("echo", False)
  max_tokens = fields.integer("max_tokens", 16, 0)
  if max_tokens == 0 and not echo:
    raise RequestError("max_tokens=0 asks for nothing; it is allowed with echo=true (score the prompt)",
                       "max_tokens")
  sampling = parse_sampling(fields, vocab_size)
  fields.neutral("best_of", (1, sampling.n), " (best_of > n)")
  return CompletionRequest(prompts, max_tokens, echo, fields.integer("logprobs", None, 0, MAX_LOGPROBS), sampling)


# -- /v1/chat/completions -------------------------------------------------------------------------------

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
  messages: list[dict]     # {"role": system|user|assistant, "content": str}
  add_generation_prompt: bool
  max_tokens: int | None   # None: up to the context
  logprobs: int | None     # top_logprobs when logprobs=true, else None
  sampling: Sampling


def parse_messages(body: dict) -> list[dict]:
  """messages: [{role, content}], content a string or text parts ({"type": "text", "text": ...})."""
  value = body.get("messages")
  if not isinstance(value, list) or not value:
    raise RequestError("messages must be a non-empty array of {role, content} objects", "messages",
                       code="missing" if value is None else "invalid_type")
  out = []
  for i, message in enumerate(value):
    where = f"messages[{i}]"
    if not isinstance(message, dict):
      raise RequestError(f"{where} must be an object, got {_kind(message)}", where, code="invalid_type")
    role = message.get("role")
    if role not in ROLES:
      raise RequestError(f"{where}.role={role!r} must be one of {', '.join(ROLES)}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
      if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise RequestError(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                           "supported", f"{where}.content", code="invalid_type")
      content = "".join(p["text"] for p in content)
    if content is None and role == "assistant":
      content = ""
    if not isinstance(content, str):
      raise RequestError(f"{where}.content must be a string or an array of text parts, got {_kind(content)}",
                         f"{where}.content", code="invalid_type")
    out.append({"role": ROLES[role], "content": content})
  return out


def parse_chat(body: dict, model_name: str, vocab_size: int) -> ChatRequest:
  fields = Fields(body)
  check_model(fields, model_name)
  messages = parse_messages(body)
  if fields.has("response_format"):
    if not isinstance(body["response_format"], dict) or body["response_format"].get("type") != "text":
      raise RequestError("response_format: only {\"type\": \"text\"} is supported", "response_format",
                         code="unsupported_parameter")
  key = "max_completion_tokens" if fields.has("max_completion_tokens") else "max_tokens"
  max_tokens = fields.integer(key, None, 1)
  logprobs = fields.boolean("logprobs", False)
  top = fields.integer("top_logprobs", None, 0, MAX_LOGPROBS)
  if top is not None and not logprobs:
    raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
  return ChatRequest(messages, fields.boolean("add_generation_prompt", True), max_tokens,
                     (top or 0) if logprobs else None, parse_sampling(fields, vocab_size))
