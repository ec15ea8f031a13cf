"""Evaluation tasks (research/evals): the window rule, lm-eval's pair encoding, scoring against a
plain forward pass, batch/packing invariance, the mc and perplexity metrics by hand, data errors,
and train.eval_tasks on a run's own parameters (compared with the same tasks on its checkpoint)."""
import json
import math
import os
import random

import jax
import numpy as np
import pytest

from research.config import ConfigError
from research.data.corpus import DataError
from research.evals import TokenRequest, loglikelihood, loglikelihood_rolling
from research.evals.data import Choice, read_choices
from research.evals.evaluate import evaluate_checkpoint
from research.evals.likelihood import fewshot_contexts, multiple_choice, perplexity
from research.evals.requests import document_prefix, encode_pair, rolling_requests
from research.evals.scoring import Scorer, layout_rows
from tests.helpers import WORDS


@pytest.fixture(scope="module")
def lm(pretrained):
  """(model, tokenizer, workdir) of the session's pretrained run (context = its train.seq_len, 32)."""
  from research import load_model, load_tokenizer
  _, workdir = pretrained
  model, cfg = load_model(workdir)
  return model, load_tokenizer(workdir), workdir


def _forward_logprobs(model, tokens):
  """log p(tokens[i+1] | tokens[:i+1]) from a plain unpacked forward (positions 0.., no segments)."""
  logits = model(jax.numpy.asarray([tokens[:-1]], jax.numpy.int32))[0]
  logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1), np.float64)
  return logp[np.arange(len(tokens) - 1), tokens[1:]]


def _items(seed=0, n=10):
  rng = random.Random(seed)
  sentence = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
  items = []
  for i in range(n):
    choices = [sentence(rng.randint(1, 4)) for _ in range(rng.randint(2, 4))]
    context = "" if i == 3 else sentence(rng.randint(1, 9)) + (" " if i % 4 == 1 else "")
    items.append({"context": context, "choices": choices, "gold": rng.randrange(len(choices))})
  return items


def _write_jsonl(path, records):
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


# ------------------------------------------------------------------ requests, no model
@pytest.mark.parametrize("context,stride,prefix", [(8, 4, 1), (8, 8, 1), (8, 1, 2), (5, 3, 2), (16, 8, 1)])
def test_sliding_windows_score_every_token_once_with_the_documented_context(context, stride, prefix):
  for n in list(range(1, 40)) + [97]:
    tokens = list(range(100, 100 + n))
    pre = list(range(prefix))
    s = pre + tokens
    scored = []
    for k, r in enumerate(rolling_requests(tokens, pre, context, stride)):
      begin = k * stride
      assert list(r.tokens) == s[begin:begin + len(r.tokens)] and r.length <= context
      targets = range(begin + r.length - r.num_scored, begin + r.length)   # target j predicts s[j + 1]
      if k > 0:  # window k >= 1 scores [C + (k-1)S, ...) with at least C - S + 1 tokens before each
        assert targets[0] == context + (k - 1) * stride
        assert min(j - begin + 1 for j in targets) >= context - stride + 1
      scored += [s[j + 1] for j in targets]
    assert scored == tokens   # each document token exactly once, in order, the first one included


def test_encode_pair_as_lm_eval(lm):
  _, tok, _ = lm
  ctx, cont = encode_pair(tok, "the king and ", "queen")   # the trailing space moves to the continuation
  assert (ctx, cont) == encode_pair(tok, "the king and", " queen")
  whole = tok.encode("the king and queen")
  assert ctx == tok.encode("the king and") and cont == whole[len(ctx):]
  assert encode_pair(tok, "", " queen") == ([tok.eos_id], tok.encode(" queen"))  # empty context: end of text
  assert document_prefix(tok) == [tok.eos_id] and not tok.add_bos


def test_first_fit_rows_are_deterministic_and_fit():
  lengths = [5, 9, 3, 16, 7, 1, 8]
  rows = layout_rows(lengths, 16, packing=True)
  assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
  assert all(sum(lengths[i] for i in r) <= 16 for r in rows) and rows == layout_rows(lengths, 16, True)
  assert layout_rows(lengths, 16, packing=False) == [[3], [1], [6], [4], [0], [2], [5]]


def test_fewshot_rendering_and_draw():
  pool = [Choice(f"q{i}", ("a", f"b{i}"), 1) for i in range(6)]
  items = [Choice("test", ("x", "y"), 0)]
  (context,) = fewshot_contexts(items, pool, 2, seed=7, pool_is_items=False)
  shots = random.Random(7).sample(pool, 2)
  assert context == f"{shots[0].context} {shots[0].choices[1]}\n\n{shots[1].context} {shots[1].choices[1]}\n\ntest"
  # the pool is the evaluated file: K + 1 drawn, the item itself left out
  contexts = fewshot_contexts(pool, pool, 5, seed=0, pool_is_items=True)
  assert all(f"{item.context} " not in c for item, c in zip(pool, contexts)) and all(c.count("\n\n") == 5 for c in contexts)
  with pytest.raises(DataError, match="num_fewshot=6 needs 7 few-shot examples"):
    fewshot_contexts(pool, pool, 6, 0, True)


# ------------------------------------------------------------------ scoring with the model
def test_scoring_equals_a_plain_forward_and_does_not_depend_on_batch_or_packing(lm):
  model, tok, _ = lm
  rng = np.random.default_rng(0)
  requests = [TokenRequest(tuple(int(t) for t in rng.integers(0, 320, n)), k)
              for n, k in ((33, 32), (2, 1), (17, 5), (9, 8), (30, 3), (12, 12 - 1))]
  results = {(b, p): Scorer.from_model(model, 32, b, p).score(requests) for b in (1, 32) for p in (False, True)}
  for i, r in enumerate(requests):
    want = _forward_logprobs(model, list(r.tokens))[-r.num_scored:]
    for got in results.values():
      np.testing.assert_allclose(got[i].logprobs, want, atol=1e-5)
      assert got[i].logprobs.dtype == np.float32
    assert len({round(got[i].total, 4) for got in results.values()}) == 1


def test_mc_by_hand_and_invariant_to_batch_and_packing(lm, tmp_path):
  model, tok, _ = lm
  path = _write_jsonl(tmp_path / "mc.jsonl", _items())
  items = read_choices(path)
  # a 2-choice item by hand: loglik of " choice" after the context from the model itself
  item = Choice("the old fool sang", ("songs of love", "rain"), 1)
  res = multiple_choice(Scorer.from_model(model, 32, 4, True), tok, [item])
  lls = []
  for choice in item.choices:
    ctx = tok.encode(item.context)
    cont = tok.encode(item.context + " " + choice)[len(ctx):]
    lls.append(float(_forward_logprobs(model, ctx + cont)[-len(cont):].sum()))
  np.testing.assert_allclose(res["loglikelihoods"][0], lls, atol=1e-5)
  assert res["acc"] == float(np.argmax(lls) == 1)
  assert res["acc_norm"] == float(np.argmax(np.asarray(lls) / [13.0, 4.0]) == 1)  # characters, no delimiter
  # the library's loglikelihood (what a server calls) is the same number
  (ll, _), = loglikelihood(Scorer.from_model(model, 32), tok, [(item.context, " " + item.choices[0])])
  assert ll == pytest.approx(lls[0], abs=1e-5)
  runs = [multiple_choice(Scorer.from_model(model, 32, b, p), tok, items) for b in (1, 32) for p in (False, True)]
  for r in runs[1:]:
    assert (r["acc"], r["acc_norm"]) == (runs[0]["acc"], runs[0]["acc_norm"])
    for a, b in zip(r["loglikelihoods"], runs[0]["loglikelihoods"]):
      np.testing.assert_allclose(a, b, atol=1e-5)
  acc = [float(np.argmax(ll) == it.gold) for ll, it in zip(runs[0]["loglikelihoods"], items)]
  assert runs[0]["acc"] == pytest.approx(np.mean(acc))
  assert runs[0]["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))
  # few-shot from the file itself: deterministic in the seed
  a, b = (multiple_choice(Scorer.from_model(model, 32, 8), tok, items, items, 2, 5, True) for _ in range(2))
  assert a["loglikelihoods"] == b["loglikelihoods"] and a["num_fewshot"] == 2


def test_perplexity_counts_by_hand_and_invariant_to_batch_and_packing(lm, tmp_path):
  model, tok, workdir = lm
  short = "KING.\nthe queen spoke of bread.\n"
  ids = tok.encode(short)
  res = perplexity(Scorer.from_model(model, 32, 2), tok, [short])
  nll = -_forward_logprobs(model, [tok.eos_id] + ids).sum()   # one window: EOS, then every token
  assert res["num_tokens"] == len(ids) and res["num_bytes"] == len(short.encode()) and res["num_windows"] == 1
  assert res["nll_sum"] == pytest.approx(nll, rel=1e-6)
  assert res["perplexity"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-6)
  assert res["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(short.encode()), rel=1e-6)
  long_doc = " ".join(random.Random(1).choice(WORDS) for _ in range(150)) + " é"   # many windows, 2-byte char
  docs = [long_doc, short]
  runs = [perplexity(Scorer.from_model(model, 32, b, p), tok, docs) for b in (1, 32) for p in (False, True)]
  assert runs[0]["num_windows"] > 5 and runs[0]["num_bytes"] == sum(len(d.encode()) for d in docs)
  for r in runs[1:]:
    assert r["perplexity"] == pytest.approx(runs[0]["perplexity"], rel=1e-6)
    assert r["num_tokens"] == runs[0]["num_tokens"] == sum(len(tok.encode(d)) for d in docs)
  total = sum(loglikelihood_rolling(Scorer.from_model(model, 32), tok, docs))
  assert -total == pytest.approx(runs[0]["nll_sum"], rel=1e-6)
  # files: .txt as the run splits documents, .jsonl by field; the run's validation split
  txt = tmp_path / "doc.txt"
  txt.write_text(long_doc)
  jsonl = _write_jsonl(tmp_path / "docs.jsonl", [{"text": long_doc}, {"text": short}])
  from_txt = evaluate_checkpoint(workdir, "perplexity", str(txt), log=lambda *a: None)
  assert from_txt["nll_sum"] == pytest.approx(runs[0]["nll_sum"] - res["nll_sum"], rel=1e-6)
  assert evaluate_checkpoint(workdir, "perplexity", jsonl, log=lambda *a: None)["num_tokens"] == runs[0]["num_tokens"]
  val = evaluate_checkpoint(workdir, "perplexity", "validation", packing=False, log=lambda *a: None)
  assert val["num_documents"] == 1 and val["step"] == 24 and val["checkpoint"].endswith("checkpoints/24")


@pytest.mark.parametrize("line,message", [
    ('{"context": 3, "choices": ["a", "b"], "gold": 0}', r"mc.jsonl:2: the field 'context' must be a string"),
    ('{"context": "c", "choices": ["a"], "gold": 0}', r"mc.jsonl:2: the field 'choices' must be a list of two"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 2}', r"mc.jsonl:2: the field 'gold' must be an integer index"),
    ('{"context": "c", "choices": ["a", "b"]}', r"mc.jsonl:2: the field 'gold' .* \(it is missing; the line has"),
    ('not json', r"mc.jsonl:2: not a JSON object"),
])
def test_bad_mc_lines_name_the_file_line_and_field(tmp_path, line, message):
  path = tmp_path / "mc.jsonl"
  path.write_text('{"context": "c", "choices": ["a", "b"], "gold": 1}\n' + line + "\n")
  with pytest.raises(DataError, match=message):
    read_choices(str(path))


def test_bad_input_is_one_line_before_the_weights(lm, tmp_path):
  _, _, workdir = lm
  path = _write_jsonl(tmp_path / "mc.jsonl", _items(n=3))
  quiet = dict(log=lambda *a: None)
  for kwargs, message in [
      (dict(task="mcq", data=path), r"--task='mcq' is not one of perplexity, mc, classify"),
      (dict(task="mc", data=str(tmp_path / "none.jsonl")), r"none.jsonl: no such file"),
      (dict(task="mc", data=path, num_fewshot=3, fewshot_data=path), r"--num_fewshot=3 needs 4 examples \(the item"),
      (dict(task="mc", data=path, num_fewshot=1), r"--num_fewshot=1 needs --fewshot_data"),
      (dict(task="classify", data=path), r"not a classifier"),
      (dict(task="perplexity", data=path, context=65), r"--context=65 exceeds the model's model.max_seq_len=64"),
  ]:
    with pytest.raises(DataError, match=message):
      evaluate_checkpoint(workdir, **kwargs, **quiet)
