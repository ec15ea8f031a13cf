"""scripts/serve.py's protocol against a real server process (the `pretrained` checkpoint, the real
engine): every refusal is a 400 naming its field and the server keeps answering; echo scores the
prompt as sent (checked against the model's own forward pass); the tokenizer endpoints give what
lm-evaluation-harness' remote tokenizer reads. A full queue (503) and the time limit run in-process
on an engine whose decode loop is not started, so the queue stays full for as long as the test needs."""
import json
import threading
import time

import numpy as np
import pytest

from tests.serve_process import ServerProcess


@pytest.fixture(scope="module")
def server(pretrained, tmp_path_factory):
  _, workdir = pretrained
  log = tmp_path_factory.mktemp("serve") / "server.log"
  proc = ServerProcess(workdir, str(log), "--chat_template=plain", "--num_slots=4")
  yield proc
  proc.stop()


def post(server, path, body):
  return server.client.post(path, content=body if isinstance(body, bytes) else json.dumps(body))


# -- refusals ---------------------------------------------------------------------------------------

LONG_IDS = [5] * 64   # the tiny model's context is 64 tokens: no room for a new one

COMPLETION_ERRORS = [
    (b'{"prompt": "KING', None, "invalid_json"),
    (b'[1, 2]', None, "invalid_type"),
    ({"max_tokens": 2}, "prompt", "missing"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"prompt": []}, "prompt", "invalid_type"),
    ({"prompt": [1, "a"]}, "prompt", "invalid_type"),
    ({"prompt": [[1, 2], []]}, "prompt", "invalid_type"),
    ({"prompt": [1, 999999]}, "prompt", "invalid_value"),
    ({"prompt": LONG_IDS}, "prompt", "context_length_exceeded"),
    ({"prompt": [[4, 5], LONG_IDS]}, "prompt[1]", "context_length_exceeded"),
    ({"prompt": "the king " * 60}, "prompt", "context_length_exceeded"),
    ({"prompt": "KING", "model": "gpt-4"}, "model", "model_not_found"),
    ({"prompt": "KING", "temperature": -0.5}, "temperature", "invalid_value"),
    ({"prompt": "KING", "temperature": "hot"}, "temperature", "invalid_type"),
    ({"prompt": "KING", "top_p": 0}, "top_p", "invalid_value"),
    ({"prompt": "KING", "top_p": 1.5}, "top_p", "invalid_value"),
    ({"prompt": "KING", "n": 0}, "n", "invalid_value"),
    ({"prompt": "KING", "n": 1.5}, "n", "invalid_type"),
    ({"prompt": "KING", "logprobs": 21}, "logprobs", "invalid_value"),
    ({"prompt": "KING", "logprobs": True}, "logprobs", "invalid_type"),
    ({"prompt": "KING", "max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"prompt": "KING", "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"prompt": "KING", "max_tokens": "5"}, "max_tokens", "invalid_type"),
    ({"prompt": "KING", "stop": [""]}, "stop", "invalid_value"),
    ({"prompt": "KING", "stop": 5}, "stop", "invalid_type"),
    ({"prompt": "KING", "top_k": -2}, "top_k", "invalid_value"),
    ({"prompt": "KING", "repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
    ({"prompt": "KING", "stream": "yes"}, "stream", "invalid_type"),
    ({"prompt": "KING", "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"prompt": "KING", "echo": "true"}, "echo", "invalid_type"),
    ({"prompt": "KING", "seed": "x"}, "seed", "invalid_type"),
    ({"prompt": "KING", "presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"prompt": "KING", "best_of": 3}, "best_of", "unsupported_parameter"),
]

USER = [{"role": "user", "content": "the king"}]
CHAT_ERRORS = [
    ({"max_tokens": 2}, "messages", "missing"),
    ({"messages": []}, "messages", "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": "the king " * 60}]}, "messages", "context_length_exceeded"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"messages": USER, "temperature": 3}, "temperature", "invalid_value"),
    ({"messages": USER, "n": -1}, "n", "invalid_value"),
    ({"messages": USER, "model": "nope"}, "model", "model_not_found"),
]

TOKENIZER_ERRORS = [
    ("/tokenize", {"add_special_tokens": False}, "prompt", "missing"),
    ("/tokenize", {"prompt": 5}, "prompt", "invalid_type"),
    ("/detokenize", {"tokens": "abc"}, "tokens", "invalid_type"),
    ("/detokenize", {"tokens": [-1]}, "tokens", "invalid_value"),
]


def _refused(server, path, body, param, code):
  r = post(server, path, body)
  assert r.status_code == 400, (body, r.status_code, r.text)
  error = r.json()["error"]
  assert set(error) == {"message", "type", "param", "code"} and error["message"]
  assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), (body, error)
  assert server.alive(), server.output()   # and it keeps serving


@pytest.mark.parametrize("body,param,code", COMPLETION_ERRORS, ids=[f"{p}-{c}" for _, p, c in COMPLETION_ERRORS])
def test_completion_refusals_name_the_field(server, body, param, code):
  _refused(server, "/v1/completions", body, param, code)


@pytest.mark.parametrize("body,param,code", CHAT_ERRORS, ids=[f"{p}-{c}" for _, p, c in CHAT_ERRORS])
def test_chat_refusals_name_the_field(server, body, param, code):
  _refused(server, "/v1/chat/completions", body, param, code)


@pytest.mark.parametrize("path,body,param,code", TOKENIZER_ERRORS, ids=[f"{p}-{c}" for _, _, p, c in TOKENIZER_ERRORS])
def test_tokenizer_refusals_name_the_field(server, path, body, param, code):
  _refused(server, path, body, param, code)


def test_unknown_route_is_an_openai_error(server):
  r = server.client.get("/v1/engines")
  assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
  r = server.client.get("/v1/completions")
  assert r.status_code == 405 and "error" in r.json()


# -- endpoints --------------------------------------------------------------------------------------

def test_models_and_health(server):
  models = server.client.get("/v1/models").json()
  assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
  assert models["data"][0]["max_model_len"] == 64
  health = server.client.get("/health").json()
  assert health["status"] == "ok" and health["model"] == "tiny"


def test_completion_shape_usage_and_choice_order(server):
  body = {"model": "tiny", "prompt": ["KING.\n", "QUEEN.\n"], "max_tokens": 5, "n": 2, "temperature": 1.0,
          "seed": 7, "ignore_eos": True}
  r = post(server, "/v1/completions", body).json()
  assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and r["model"] == "tiny"
  assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]       # prompt_index * n + sample_index
  assert all(c["finish_reason"] == "length" and c["logprobs"] is None for c in r["choices"])
  prompts = [post(server, "/tokenize", {"prompt": p}).json()["count"] for p in body["prompt"]]
  assert r["usage"] == {"prompt_tokens": sum(prompts), "completion_tokens": 20, "total_tokens": sum(prompts) + 20}
  # seeded: the same request gives the same texts; a prompt's two samples have their own seeds
  again = post(server, "/v1/completions", body).json()
  assert [c["text"] for c in again["choices"]] == [c["text"] for c in r["choices"]]
  one = post(server, "/v1/completions", {**body, "prompt": "QUEEN.\n", "n": 1, "seed": 8}).json()
  assert one["choices"][0]["text"] == r["choices"][3]["text"]


def test_stop_string_cuts_the_text(server):
  body = {"prompt": "KING.\nthe", "max_tokens": 30, "temperature": 1.0, "seed": 3, "ignore_eos": True}
  full = post(server, "/v1/completions", body).json()["choices"][0]["text"]
  stop = next(ch for ch in full[3:] if ch.strip() and ch.isprintable())
  cut = post(server, "/v1/completions", {**body, "stop": [stop, "never seen"]}).json()["choices"][0]
  assert cut["finish_reason"] == "stop" and cut["text"] == full[:full.index(stop)]


def test_generated_logprobs(server):
  r = post(server, "/v1/completions", {"prompt": [4, 5, 6], "max_tokens": 4, "temperature": 0, "logprobs": 3,
                                       "ignore_eos": True}).json()["choices"][0]
  lp = r["logprobs"]
  assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 4
  assert "".join(lp["tokens"]) == r["text"]
  assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"][:-1]]))
  for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
    assert len(top) == 3 and value <= 0
    assert top[token] == value == max(top.values())   # greedy: the chosen token is the likeliest


def test_echo_scores_the_prompt_as_sent(server, pretrained):
  """lm-eval's loglikelihood request: echo, max_tokens=1, logprobs=1; the prompt's entries are the
  model's log-probabilities of each token given the ones before (no BOS added), then one generated."""
  import jax
  import research
  _, workdir = pretrained
  ids = post(server, "/tokenize", {"prompt": "KING.\nthe king and the queen", "add_special_tokens": False}).json()["tokens"]
  r = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 1, "logprobs": 1, "echo": True,
                                       "temperature": 0}).json()["choices"][0]
  lp = r["logprobs"]
  assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
  model, _ = research.load_model(workdir)
  want = np.asarray(jax.nn.log_softmax(model(np.asarray([ids], np.int32))[0], -1))
  got = np.asarray(lp["token_logprobs"][1:len(ids)])
  np.testing.assert_allclose(got, want[np.arange(len(ids) - 1), ids[1:]], atol=2e-4)
  # is_greedy as lm-eval decides it: the token's logprob equals the best alternative's
  best = want[:len(ids) - 1].argmax(-1)
  for k in range(1, len(ids)):
    assert (lp["token_logprobs"][k] == max(lp["top_logprobs"][k].values())) == (best[k - 1] == ids[k])
  assert r["text"].startswith(post(server, "/detokenize", {"tokens": ids}).json()["prompt"])
  # max_tokens=0 with echo: the prompt alone, the same scores, nothing generated
  zero = post(server, "/v1/completions", {"prompt": [ids, ids[:5]], "max_tokens": 0, "logprobs": 2, "echo": True}).json()
  assert [len(c["logprobs"]["tokens"]) for c in zero["choices"]] == [len(ids), 5]
  assert zero["choices"][0]["logprobs"]["token_logprobs"] == lp["token_logprobs"][:len(ids)]
  assert zero["usage"]["completion_tokens"] == 0 and zero["choices"][0]["finish_reason"] == "length"


def test_echo_counts_the_end_token(server):
  """A choice the end token ends still reports that token: lm-eval's [ctxlen:-1] needs it."""
  r = post(server, "/v1/completions", {"prompt": [4, 5], "max_tokens": 1, "logprobs": 1, "echo": True,
                                       "stop_token_ids": list(range(320))}).json()
  choice = r["choices"][0]
  assert choice["finish_reason"] == "stop" and len(choice["logprobs"]["tokens"]) == 3
  assert r["usage"]["completion_tokens"] == 1


def test_tokenizer_endpoints_as_lm_eval_reads_them(server):
  info = server.client.get("/tokenizer_info").json()
  assert info["eos_token"] == "</s>" and info["model_max_length"] == 64
  assert info["bos_token"] is None     # this model was trained without BOS: lm-eval's prefix is EOS
  assert info["chat_template"] and "### Response" in info["chat_template"]
  # RemoteTokenizer.eos_token_id is encode(eos_token)[0]
  tok = post(server, "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False}).json()
  assert tok["tokens"] == [info["eos_token_id"]] and tok["count"] == 1 and tok["max_model_len"] == 64
  text = "KING.\nthe king and queen"
  tok = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False, "return_token_strs": True}).json()
  assert "".join(tok["token_strs"]) == text
  assert post(server, "/detokenize", {"tokens": tok["tokens"]}).json() == {"prompt": text}
  # special tokens read back: lm-eval's string prompts are /detokenize's text (an empty context: EOS first)
  for marked in ("</s> the king", "KING.</s>QUEEN.\n"):
    ids = post(server, "/tokenize", {"prompt": marked, "add_special_tokens": False}).json()["tokens"]
    assert info["eos_token_id"] in ids
    assert post(server, "/detokenize", {"tokens": ids}).json()["prompt"] == marked
  # a string prompt is tokenized as /tokenize does: the same usage as the ids
  by_text = post(server, "/v1/completions", {"prompt": text, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
  assert by_text == tok["count"]
  # messages render with the chat template, as chat completions do
  chat = post(server, "/tokenize", {"messages": USER, "add_generation_prompt": True}).json()
  used = post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
  assert chat["count"] == used


# -- a full queue and the time limit, in-process ------------------------------------------------------

@pytest.fixture(scope="module")
def idle_app(pretrained):
  """The app over a real engine (1 slot, a queue of 1) whose decode loop is not started yet."""
  from fastapi.testclient import TestClient
  from research.infer.engine import Engine
  from research.serve.app import create_app
  from research.serve.served import Served
  from research.serve.tokens import TokenText
  engine = Engine.from_checkpoint(pretrained[1], num_slots=1, max_queue=1)
  served = Served(engine, "tiny", TokenText(engine.tokenizer), None, request_timeout_s=2.0)
  with TestClient(create_app(served), raise_server_exceptions=False) as client:
    yield served, client
  engine.shutdown()


def test_full_queue_is_503_and_time_limit_ends_requests(idle_app):
  served, client = idle_app
  engine = served.engine
  waiting = {}
  body = {"prompt": [4, 5, 6], "max_tokens": 3, "temperature": 0}
  thread = threading.Thread(target=lambda: waiting.update(r=client.post("/v1/completions", json=body)))
  start = time.monotonic()
  thread.start()
  while engine.pending() < 1:
    time.sleep(0.01)
  r = client.post("/v1/completions", json={**body, "n": 2})     # more choices than the queue holds
  assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "--max_queue" in r.json()["error"]["message"]
  for extra in ({}, {"stream": True}):
    r = client.post("/v1/completions", json={**body, **extra})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "server_error" and r.json()["error"]["code"] == "queue_full"
  thread.join()
  r = waiting["r"]
  assert r.status_code == 200 and time.monotonic() - start >= 2.0
  assert r.json()["choices"][0]["finish_reason"] == "timeout" and r.json()["choices"][0]["text"] == ""
  assert client.post("/v1/chat/completions", json={"messages": USER}).json()["error"]["code"] == "no_chat_template"
  # the decode loop starts: the timed-out request leaves the queue (cancelled), new ones are served
  engine.start()
  while engine.pending():
    time.sleep(0.01)
  served.request_timeout_s = 120.0   # the first decode here compiles
  r = client.post("/v1/completions", json=body)
  assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_chat_template_choice():
  """auto: the tokenizer's own, else the run's built-in sft.template, else none (completions only)."""
  from types import SimpleNamespace
  from research.config import base_config
  from research.serve.chat import template_name
  plain_tok, own_tok = SimpleNamespace(chat_template=None), SimpleNamespace(chat_template="{{ x }}")
  cfg = base_config()
  assert template_name("auto", own_tok, cfg) == "auto"
  assert template_name("auto", plain_tok, cfg) is None            # an lm run: sft.template=auto
  cfg.sft.template = "chatml"
  assert template_name("auto", plain_tok, cfg) == "chatml"        # an sft run on a built-in template
  assert template_name("llama3", own_tok, cfg) == "llama3"
  with pytest.raises(ValueError, match="--chat_template"):
    template_name("vicuna", plain_tok, cfg)
