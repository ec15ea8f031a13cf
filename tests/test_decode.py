"""KV-cache decoding (research/models/kv_cache.py, research/infer/): the cache gives the logits of
the full forward pass, rows do not see each other or their padding, requests that join a running
decode get what they would alone, beam width 1 is greedy, and the engine's limits and errors."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.config.base import base_config
from research.data.tokenizers import ByteTokenizer
from research.infer.beam import beam_search
from research.infer.engine import Engine, QueueFull, SamplingParams
from research.infer.generate import GenerateSettings, generate
from research.infer.text_stream import TextStream
from research.models.kv_cache import KVCache
from research.models.registry import build_model
from research.sharding import make_mesh

TOK = ByteTokenizer()
PROMPTS = ["hello", "the quick brown fox jumps", "a", "to be, or not to be: that is the question"]

VARIANTS = {
    "gpt2": dict(),
    "llama-gqa": dict(position="rope", norm="rmsnorm", mlp_activation="swiglu", num_kv_heads=2, use_bias=False,
                      tie_embeddings=False),
    "scanned": dict(position="rope", num_kv_heads=1, scan_layers=True),
    "mistral-window": dict(position="rope", num_kv_heads=2, sliding_window=6, use_bias=False),
    "qwen2-bias": dict(position="rope", num_kv_heads=2, use_bias=False, qkv_bias=True),
}


def _cfg(**overrides):
  cfg = base_config()
  m = cfg.model
  m.vocab_size, m.embed_dim, m.num_layers, m.num_heads, m.max_seq_len = 259, 32, 2, 4, 96
  m.dtype = m.param_dtype = "float32"
  m.init_std = 0.2     # logits O(1): greedy choices are not near-ties
  for k, v in overrides.items():
    m[k] = v
  return cfg


def _model(cfg, seed=0):
  return build_model(cfg.model, nnx.Rngs(seed))


@pytest.fixture(scope="module")
def gpt2():
  cfg = _cfg()
  return cfg, _model(cfg)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_logits_equal_the_full_forward_pass(name):
  """Prefill of three prompts of different lengths, then 12 decode steps: every step's logits equal
  the full forward pass over the whole sequence so far (float32, 1e-5), and so do greedy tokens."""
  cfg = _cfg(**VARIANTS[name])
  model = _model(cfg)
  prompts = [TOK.encode(p) for p in PROMPTS[:3]]
  cache = KVCache.zeros(cfg.model, 4, 64, jnp.float32)
  t = 32
  tokens = np.zeros((3, t), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (3, t))
  x, cache = jax.jit(lambda c: model.cached_hidden_states(tokens, positions, c, rows=jnp.asarray([2, 0, 3])))(cache)
  lengths = np.asarray([len(p) for p in prompts])
  cached = [[np.asarray(model.logits(x))[i, lengths[i] - 1]] for i in range(3)]   # per row, per step
  seqs = [list(p) for p in prompts]
  step = jax.jit(lambda c, tok, pos: model.cached_hidden_states(tok[:, None], pos[:, None], c))
  for _ in range(12):
    tok, pos = np.zeros(4, np.int32), np.zeros(4, np.int32)
    for i, slot in enumerate([2, 0, 3]):
      seqs[i].append(int(np.argmax(cached[i][-1])))
      tok[slot], pos[slot] = seqs[i][-1], len(seqs[i]) - 1
    x, cache = step(cache, tok, pos)
    for i, slot in enumerate([2, 0, 3]):
      cached[i].append(np.asarray(model.logits(x))[slot, 0])
  # The full forward pass over each whole sequence: causal, so position j sees exactly the prefix.
  width = max(len(s) for s in seqs)
  full = np.asarray(jax.jit(model)(jnp.asarray([s + [0] * (width - len(s)) for s in seqs])))
  worst = 0.0
  for i in range(3):
    reference = full[i, lengths[i] - 1:len(seqs[i])]          # the logits that chose each new token
    worst = max(worst, float(np.abs(np.stack(cached[i]) - reference).max()))
    assert list(np.argmax(reference[:-1], -1)) == seqs[i][lengths[i]:]
  assert worst < 1e-5, worst


def test_a_row_does_not_depend_on_its_batch_or_padding(gpt2):
  """Each prompt alone (its own length bucket, one slot used) and all four together (a longer
  bucket, every slot busy) give the same tokens, and log-probabilities within 1e-5; for sampling with
  a seed too."""
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=4)
  prompts = [TOK.encode(p) for p in PROMPTS]
  for params in (SamplingParams(max_new_tokens=10, temperature=0),
                 SamplingParams(max_new_tokens=10, temperature=1.0, top_k=30, top_p=0.9, repetition_penalty=1.3, seed=7)):
    together = engine.generate(prompts, params)
    reversed_ = engine.generate(prompts[::-1], params)[::-1]
    for i, p in enumerate(prompts):
      alone = engine.generate([p], params)[0]
      for other in (together[i], reversed_[i]):
        assert other.token_ids == alone.token_ids
        np.testing.assert_allclose(other.logprobs, alone.logprobs, atol=1e-5)


def test_a_request_joining_a_running_decode_gets_what_it_would_alone(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=2)
  params = SamplingParams(max_new_tokens=8, temperature=0.9, seed=3)
  alone = [engine.generate([TOK.encode(p)], params)[0].token_ids for p in PROMPTS[:3]]
  events = {i: [] for i in range(3)}
  engine.submit(TOK.encode(PROMPTS[0]), params, events[0].append)
  engine._tick(), engine._tick(), engine._tick()
  engine.submit(TOK.encode(PROMPTS[1]), params, events[1].append)   # joins mid-way
  engine.submit(TOK.encode(PROMPTS[2]), params, events[2].append)   # waits for a free slot
  while engine.pending():
    engine._tick()
  for i in range(3):
    assert [t for e in events[i] for t in e.token_ids] == alone[i]
    assert events[i][-1].finish_reason == "length" and all(e.finish_reason is None for e in events[i][:-1])


def test_sampling_is_reproducible_from_the_seed_and_varies_with_it(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=4)
  prompt = [TOK.encode(PROMPTS[1])]
  run = lambda seed: engine.generate(prompt, SamplingParams(max_new_tokens=12, temperature=1.0, seed=seed))[0].token_ids
  assert run(1) == run(1)
  assert run(1) != run(2)
  settings = GenerateSettings(SamplingParams(max_new_tokens=12, temperature=1.0, seed=1), num_return_sequences=3)
  three = generate(engine, prompt, settings)[0]
  assert three[0].token_ids == run(1) and three[1].token_ids == run(2) and three[2].token_ids != three[0].token_ids


def test_top_k_one_is_greedy_and_repetition_penalty_changes_the_text(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=4)
  prompt = [TOK.encode(PROMPTS[3])]
  greedy = engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=0))[0].token_ids
  top1 = engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.5, top_k=1, seed=5))[0].token_ids
  tiny_p = engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.5, top_p=1e-6, seed=5))[0].token_ids
  assert top1 == greedy == tiny_p
  penalised = engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=0, repetition_penalty=5.0))[0]
  assert penalised.token_ids != greedy


def test_beam_width_one_is_greedy(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=4)
  prompts = [TOK.encode(p) for p in PROMPTS]
  greedy = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
  hyps = beam_search(engine.decoder, prompts, num_beams=1, max_new_tokens=10, end_ids=[TOK.eos_id])
  assert [h[0].token_ids for h in hyps] == [g.token_ids for g in greedy]
  wide = beam_search(engine.decoder, prompts[:1], num_beams=4, max_new_tokens=10, end_ids=[TOK.eos_id],
                     num_return_sequences=4, length_penalty=0.0)[0]
  assert [h.score for h in wide] == sorted((h.score for h in wide), reverse=True)
  np.testing.assert_allclose(wide[0].score, sum(wide[0].logprobs), rtol=1e-5)
  assert wide[0].score >= sum(greedy[0].logprobs) - 1e-4   # 4 beams find at least the greedy path's score here


def test_sharded_decoding_equals_one_device(gpt2):
  """Slots over `data` (4), heads over `tensor` (2) on the 8 fake devices: the same tokens."""
  cfg = _cfg(position="rope", num_kv_heads=2)
  model = _model(cfg)
  prompts = [TOK.encode(p) for p in PROMPTS]
  params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=2)
  one = Engine(model, cfg, TOK, num_slots=4).generate(prompts, params)
  engine = Engine(model, cfg, TOK, num_slots=4, mesh=make_mesh((4, 1, 2)))
  sharded = engine.generate(prompts, params)
  assert [c.token_ids for c in sharded] == [c.token_ids for c in one]
  assert "tensor" in str(engine.decoder.cache.k[0].sharding.spec)


def test_limits_stops_and_errors(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=2, max_queue=1, max_len=32)
  prompt = TOK.encode("the quick brown fox")
  free = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0))[0]
  cut = free.text[2:4]
  stopped = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0, stop_strings=(cut,)))[0]
  assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.index(cut)]
  capped = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0, max_length=len(prompt) + 3))[0]
  assert capped.finish_reason == "length" and capped.token_ids == free.token_ids[:3]
  context = engine.generate([prompt], SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True))[0]
  assert context.finish_reason == "length" and len(prompt) + len(context.token_ids) == 32
  assert engine.generate([prompt], SamplingParams(max_new_tokens=0))[0].token_ids == []
  with pytest.raises(ValueError, match="context of 32"):
    engine.submit(list(range(32)), SamplingParams(), lambda e: None)
  with pytest.raises(ValueError, match="top_p"):
    engine.submit(prompt, SamplingParams(top_p=0.0), lambda e: None)
  engine.submit(prompt, SamplingParams(), lambda e: None)
  with pytest.raises(QueueFull):
    engine.submit(prompt, SamplingParams(), lambda e: None)
  engine._queue.clear()
  events = []
  handle = engine.submit(prompt, SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True), events.append)
  engine._tick()
  handle.cancel()
  engine._tick()
  assert events[-1].finish_reason == "cancelled" and engine.pending() == 0
  late = []
  engine.submit(prompt, SamplingParams(max_new_tokens=20), late.append, deadline=time.monotonic() - 1)
  engine._tick()
  assert late[-1].finish_reason == "timeout"
  # Waiting requests that ended (cancelled, past their deadline) give their queue places back at once,
  # though no slot is free for them: busy slots, a queue of one.
  busy = []
  for _ in range(2):
    busy.append(engine.submit(prompt, SamplingParams(max_new_tokens=20, ignore_eos=True), lambda e: None))
    engine._tick()
  waiting = []
  engine.submit(prompt, SamplingParams(), waiting.append).cancel()
  engine.submit(prompt, SamplingParams(), lambda e: None)    # no QueueFull: the cancelled one left
  assert waiting[-1].finish_reason == "cancelled" and len(busy) == engine.num_slots


def test_the_engine_thread_serves_concurrent_requests(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=2)
  params = SamplingParams(max_new_tokens=6, temperature=0)
  expected = [c.token_ids for c in engine.generate([TOK.encode(p) for p in PROMPTS], params)]
  engine.start()
  try:
    got = {i: [] for i in range(len(PROMPTS))}
    for i, p in enumerate(PROMPTS):
      engine.submit(TOK.encode(p), params, got[i].append)
    deadline = time.time() + 60
    while any(not g or g[-1].finish_reason is None for g in got.values()) and time.time() < deadline:
      time.sleep(0.02)
    assert [[t for e in got[i] for t in e.token_ids] for i in range(len(PROMPTS))] == expected
    logprobs, top = engine.score(TOK.encode("hello"), 3)
    assert logprobs[0] is None and top[0] is None and len(top[1]) == 3
  finally:
    engine.shutdown()


def test_score_equals_the_model_log_softmax(gpt2):
  cfg, model = gpt2
  engine = Engine(model, cfg, TOK, num_slots=1)
  ids = TOK.encode("to be, or not")
  logprobs, top = engine.score(ids, 2)
  full = np.asarray(jax.nn.log_softmax(model(jnp.asarray([ids]))[0], -1))
  np.testing.assert_allclose(logprobs[1:], [full[i - 1, ids[i]] for i in range(1, len(ids))], atol=1e-5)
  assert list(top[1]) == list(np.argsort(-full[0])[:2])


def test_text_stream_holds_back_what_may_become_a_stop_string():
  stream = TextStream(TOK, stop_strings=("END",))
  out = [stream.push(t) for t in TOK.encode("abcEN")]
  assert "".join(d for d, _ in out) == "abc"          # "EN" may start "END"
  assert stream.push(TOK.encode("D")[0]) == ("", True)
  stream = TextStream(TOK, stop_strings=("END",))
  text = "".join(stream.push(t)[0] for t in TOK.encode("abEN!")) + stream.flush()
  assert text == "abEN!"
  stream = TextStream(TOK)
  euro = TOK.encode("€")                                # three bytes: nothing shown until the last
  assert [stream.push(t)[0] for t in euro] == ["", "", "€"]
