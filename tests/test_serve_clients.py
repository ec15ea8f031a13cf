"""scripts/serve.py through OpenAI's own Python client, and under concurrent clients: streamed
tokens reach the right client exactly once and in order (a stream joined equals the same request
not streamed), and a bounded load test answers every request (latency percentiles printed)."""
import threading
import time

import numpy as np
import openai
import pytest

from tests.serve_process import ServerProcess

PROMPTS = ["KING.\n", "QUEEN.\n", "FOOL.\n", "KING.\nthe king", "QUEEN.\nof a small land",
           "FOOL.\nsang songs", "the old fool", "bread wine rain and war"]
USER = [{"role": "user", "content": "the king spoke"}]


@pytest.fixture(scope="module")
def server(pretrained, tmp_path_factory):
  log = tmp_path_factory.mktemp("serve_clients") / "server.log"
  proc = ServerProcess(pretrained[1], str(log), "--chat_template=plain", "--num_slots=8", "--max_queue=64")
  yield proc
  proc.stop()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_completions(client):
  r = client.completions.create(model="tiny", prompt="KING.\n", max_tokens=6, temperature=0, logprobs=2,
                                extra_body={"ignore_eos": True})
  choice = r.choices[0]
  assert choice.finish_reason == "length" and r.usage.completion_tokens == 6
  assert len(choice.logprobs.tokens) == 6 and all(len(t) == 2 for t in choice.logprobs.top_logprobs)
  # n > 1 over a batch of token-id prompts: index = prompt * n + sample
  r = client.completions.create(model="tiny", prompt=[[4, 5, 6], [7, 8]], max_tokens=3, n=3, temperature=1.0,
                                seed=11)
  assert sorted(c.index for c in r.choices) == list(range(6))
  # echo with max_tokens=0: the prompt scored, nothing generated
  r = client.completions.create(model="tiny", prompt=[4, 5, 6, 7], max_tokens=0, echo=True, logprobs=1)
  lp = r.choices[0].logprobs
  assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == 4 and r.usage.completion_tokens == 0
  # echo with generation: the prompt's text first
  r = client.completions.create(model="tiny", prompt="KING.\nthe", max_tokens=2, echo=True, temperature=0)
  assert r.choices[0].text.startswith("KING.\nthe")


def test_completion_stream(client):
  kwargs = dict(model="tiny", prompt="QUEEN.\n", max_tokens=12, temperature=1.0, seed=5, logprobs=1)
  whole = client.completions.create(**kwargs)
  chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
  assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
  assert [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == \
      whole.choices[0].logprobs.tokens
  assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat(client):
  r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=8, n=2, temperature=1.0, seed=3,
                                     logprobs=True, top_logprobs=2)
  assert r.object == "chat.completion" and [c.index for c in r.choices] == [0, 1]
  for choice in r.choices:
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    entries = choice.logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in entries)
  assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
  # streamed: a role chunk first, the same text, usage last with no choices
  stream = client.chat.completions.create(model="tiny", messages=USER, max_tokens=8, n=2, temperature=1.0, seed=3,
                                          stream=True, stream_options={"include_usage": True})
  texts, roles, finish = ["", ""], [], {}
  for chunk in stream:
    if not chunk.choices:
      assert chunk.usage.total_tokens == r.usage.total_tokens
      continue
    c = chunk.choices[0]
    roles += [c.delta.role] if c.delta.role else []
    texts[c.index] += c.delta.content or ""
    finish[c.index] = c.finish_reason or finish.get(c.index)
  assert roles == ["assistant", "assistant"]
  assert texts == [c.message.content for c in r.choices]
  assert finish == {c.index: c.finish_reason for c in r.choices}
  # max_completion_tokens, and a system message
  r = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "be brief"}, *USER],
                                     max_completion_tokens=1, extra_body={"ignore_eos": True})
  assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "length"


def test_refusals_through_the_client(client):
  with pytest.raises(openai.BadRequestError) as e:
    client.completions.create(model="tiny", prompt="KING", temperature=-1)
  assert e.value.param == "temperature" and e.value.code == "invalid_value"
  with pytest.raises(openai.BadRequestError) as e:
    client.chat.completions.create(model="other", messages=USER)
  assert e.value.param == "model" and e.value.code == "model_not_found"


def _stream_text_and_tokens(client, **kwargs):
  text, tokens = "", []
  for chunk in client.completions.create(**kwargs, stream=True):
    text += chunk.choices[0].text
    tokens += chunk.choices[0].logprobs.tokens if chunk.choices[0].logprobs else []
  return text, tokens


def test_concurrent_streams_each_get_their_own_tokens(client):
  """8 streams at once (greedy, and sampled with a seed each): each joined equals its request not
  streamed, token by token."""
  requests = [dict(model="tiny", prompt=p, max_tokens=24, logprobs=1, temperature=t, seed=i)
              for i, p in enumerate(PROMPTS) for t in (0.0, 1.0)]
  expected = []
  for kwargs in requests:
    choice = client.completions.create(**kwargs).choices[0]
    expected.append((choice.text, choice.logprobs.tokens))
  for batch in (requests[0::2], requests[1::2]):     # 8 greedy streams together, then 8 sampled ones
    got, barrier = {}, threading.Barrier(len(batch))

    def run(i, kwargs):
      barrier.wait()
      got[i] = _stream_text_and_tokens(client, **kwargs)

    threads = [threading.Thread(target=run, args=(i, kw)) for i, kw in enumerate(batch)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i, kwargs in enumerate(batch):
      assert got[i] == expected[requests.index(kwargs)], kwargs
  sampled = {expected[k][0] for k in range(1, len(requests), 2)}
  assert len(sampled) > 1   # the sampled streams differ, so a mix-up between clients would show


def test_bounded_load(client):
  """8 clients x 6 requests each (streamed and not, completions and chat), twice: every one answered
  with all its tokens, none lost."""
  clients, per_client = 8, 6
  latencies, answers, errors = [], [], []
  lock = threading.Lock()

  def work(c):
    for k in range(per_client):
      start = time.monotonic()
      try:
        tokens = 4 + (c + k) % 8
        if k % 3 == 2:
          r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=tokens, seed=c * 100 + k,
                                             extra_body={"ignore_eos": True})
          got = r.usage.completion_tokens
        elif k % 3 == 1:
          chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[c], max_tokens=tokens, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True}))
          got = chunks[-1].usage.completion_tokens
        else:
          r = client.completions.create(model="tiny", prompt=PROMPTS[c], max_tokens=tokens,
                                        extra_body={"ignore_eos": True})
          got = r.usage.completion_tokens
        with lock:
          latencies.append(time.monotonic() - start)
          answers.append((c, k, got == tokens))
      except Exception as e:  # noqa: BLE001 - counted and reported below
        with lock:
          errors.append(f"client {c} request {k}: {type(e).__name__}: {e}")

  # Two rounds: the first compiles the engine's batch shapes, the second is the server's own speed.
  for name in ("cold (compiles)", "warm"):
    latencies.clear()
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    start = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.monotonic() - start
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"\nload, {name}: {clients} clients x {per_client} requests in {wall:.2f} s; latency p50 "
          f"{p50 * 1e3:.0f} ms, p90 {p90 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
  assert not errors, errors
  assert len(answers) == 2 * clients * per_client and all(ok for _, _, ok in answers)
