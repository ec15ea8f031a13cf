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


@pytest.fixture(scope="module")
def scorers(lm):
  """scorers(batch_size, packing) -> a Scorer of the pretrained model, context 32; all share one
  jitted function (so each row shape compiles once for the module)."""
  model = lm[0]
  runner = Scorer.from_model(model, 32).runner
  return lambda batch_size=32, packing=True: Scorer(runner, 32, batch_size, packing)


_PLAIN = {}


def _forward_logprobs(model, tokens):
  """log p(tokens[i+1] | tokens[:i+1]) from a plain unpacked forward (positions 0.., no segments)."""
  from flax import nnx
  if id(model) not in _PLAIN:
    graphdef, params = nnx.split(model)
    _PLAIN[id(model)] = (jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)), params)
  forward, params = _PLAIN[id(model)]
  logits = forward(params, jax.numpy.asarray([tokens[:-1]], jax.numpy.int32))[0]
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
  assert all(f"{item.context} " not in c for item, c in zip(pool, contexts))
  assert all(c.count("\n\n") == 5 for c in contexts)
  with pytest.raises(DataError, match="num_fewshot=6 needs 7 few-shot examples"):
    fewshot_contexts(pool, pool, 6, 0, True)


# ------------------------------------------------------------------ scoring with the model
def test_scoring_equals_a_plain_forward_and_does_not_depend_on_batch_or_packing(lm, scorers):
  model, tok, _ = lm
  rng = np.random.default_rng(0)
  requests = [TokenRequest(tuple(int(t) for t in rng.integers(0, 320, n)), k)
              for n, k in ((33, 32), (2, 1), (17, 5), (9, 8), (30, 3), (12, 12 - 1))]
  results = {(b, p): scorers(b, p).score(requests) for b, p in ((1, False), (32, False), (32, True), (3, True))}
  for i, r in enumerate(requests):
    want = _forward_logprobs(model, list(r.tokens))[-r.num_scored:]
    for got in results.values():
      np.testing.assert_allclose(got[i].logprobs, want, atol=1e-5)
      assert got[i].logprobs.dtype == np.float32
    assert len({round(got[i].total, 4) for got in results.values()}) == 1


def test_mc_by_hand_and_invariant_to_batch_and_packing(lm, scorers, tmp_path):
  model, tok, _ = lm
  path = _write_jsonl(tmp_path / "mc.jsonl", _items())
  items = read_choices(path)
  # a 2-choice item by hand: loglik of " choice" after the context from the model itself
  item = Choice("the old fool sang", ("songs of love", "rain"), 1)
  res = multiple_choice(scorers(4), tok, [item])
  lls = []
  for choice in item.choices:
    ctx = tok.encode(item.context)
    cont = tok.encode(item.context + " " + choice)[len(ctx):]
    lls.append(float(_forward_logprobs(model, ctx + cont)[-len(cont):].sum()))
  np.testing.assert_allclose(res["loglikelihoods"][0], lls, atol=1e-5)
  assert res["acc"] == float(np.argmax(lls) == 1)
  assert res["acc_norm"] == float(np.argmax(np.asarray(lls) / [13.0, 4.0]) == 1)  # characters, no delimiter
  # the library's loglikelihood (what a server calls) is the same number
  (ll, _), = loglikelihood(scorers(), tok, [(item.context, " " + item.choices[0])])
  assert ll == pytest.approx(lls[0], abs=1e-5)
  runs = [multiple_choice(scorers(b, p), tok, items) for b, p in ((1, False), (32, False), (32, True), (3, True))]
  for r in runs[1:]:
    assert (r["acc"], r["acc_norm"]) == (runs[0]["acc"], runs[0]["acc_norm"])
    for a, b in zip(r["loglikelihoods"], runs[0]["loglikelihoods"]):
      np.testing.assert_allclose(a, b, atol=1e-5)
  acc = [float(np.argmax(ll) == it.gold) for ll, it in zip(runs[0]["loglikelihoods"], items)]
  assert runs[0]["acc"] == pytest.approx(np.mean(acc))
  assert runs[0]["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))
  # few-shot from the file itself: deterministic in the seed
  a, b = (multiple_choice(scorers(8), tok, items, items, 2, 5, True) for _ in range(2))
  assert a["loglikelihoods"] == b["loglikelihoods"] and a["num_fewshot"] == 2


def test_perplexity_counts_by_hand_and_invariant_to_batch_and_packing(lm, scorers, tmp_path):
  model, tok, workdir = lm
  short = "KING.\nthe queen spoke of bread.\n"
  ids = tok.encode(short)
  res = perplexity(scorers(2), tok, [short])
  nll = -_forward_logprobs(model, [tok.eos_id] + ids).sum()   # one window: EOS, then every token
  assert res["num_tokens"] == len(ids) and res["num_bytes"] == len(short.encode()) and res["num_windows"] == 1
  assert res["nll_sum"] == pytest.approx(nll, rel=1e-6)
  assert res["perplexity"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-6)
  assert res["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(short.encode()), rel=1e-6)
  long_doc = " ".join(random.Random(1).choice(WORDS) for _ in range(150)) + " é"   # many windows, 2-byte char
  docs = [long_doc, short]
  runs = [perplexity(scorers(b, p), tok, docs) for b, p in ((1, False), (32, False), (32, True), (3, True))]
  assert runs[0]["num_windows"] > 5 and runs[0]["num_bytes"] == sum(len(d.encode()) for d in docs)
  for r in runs[1:]:
    assert r["perplexity"] == pytest.approx(runs[0]["perplexity"], rel=1e-6)
    assert r["num_tokens"] == runs[0]["num_tokens"] == sum(len(tok.encode(d)) for d in docs)
  total = sum(loglikelihood_rolling(scorers(), tok, docs))
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


# ------------------------------------------------------------------ train.eval_tasks
def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_eval_tasks_config_errors_name_the_entry(pretrained, tmp_path):
  from research.config import validate_config
  pre_cfg, _ = pretrained
  path = _write_jsonl(tmp_path / "mc.jsonl", _items(n=2))
  for tasks, message in [
      (("mcq:" + path,), r"train.eval_tasks\[0\]: 'mcq:.*': task kind 'mcq' is not one of perplexity, mc, classify"),
      (("mc",), r"train.eval_tasks\[0\]: 'mc' is not \[NAME=\]KIND:FILE"),
      (("mc:" + path, "mc:" + path), r"train.eval_tasks\[1\]: the name 'mc' is also entry 0's"),
      (("mc:" + str(tmp_path / "none.jsonl"),), r"train.eval_tasks\[0\]=.*: no such file: the data .*none.jsonl"),
      (("classify:" + path,), r"a classify task does not fit task.name=lm, which takes perplexity \| mc"),
      (("mc:" + path + ";num_fewshot=2",), r"num_fewshot > 0 needs fewshot_data=FILE"),
      (("mc:" + path + ";shots=2",), r"option 'shots=2' is not key=value with key one of num_fewshot, fewshot_data"),
  ]:
    cfg = pre_cfg.copy_and_resolve_references()
    cfg.model.vocab_size = 320
    cfg.train.eval_tasks = tasks
    with pytest.raises(ConfigError, match=message):
      validate_config(cfg, 8)


def test_eval_tasks_run_on_the_training_parameters_as_on_the_checkpoint(pretrained, tmp_path):
  """A finetuning run (8 devices: the parameters and rows on the run's mesh) logs every task at each
  evaluation; its final values are the checkpoint's through scripts/eval.py's path."""
  from research.train.trainer import train
  pre_cfg, pre_dir = pretrained
  mc = _write_jsonl(tmp_path / "mc.jsonl", _items(n=12))
  doc = tmp_path / "doc.txt"
  doc.write_text(" ".join(random.Random(2).choice(WORDS) for _ in range(60)))
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.finetune.init_from = pre_dir
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every = 2, 1, 1
  cfg.checkpoint.every_steps, cfg.checkpoint.best_metric, cfg.checkpoint.best_mode = 2, "eval_hs_acc_norm", "max"
  cfg.train.eval_tasks = ("mc:" + mc, f"hs=mc:{mc};num_fewshot=1;fewshot_data={mc};seed=3", "perplexity:validation",
                          "txt=perplexity:" + str(doc))
  workdir = str(tmp_path / "run")
  logs = []
  summary = train(cfg, workdir, log=logs.append)
  assert any(str(line).startswith("eval_tasks: mc (mc, ") for line in logs)
  evals = [m for m in _metrics(workdir) if "eval_loss" in m]
  keys = {"eval_mc_acc", "eval_mc_acc_norm", "eval_hs_acc", "eval_hs_acc_norm", "eval_perplexity_perplexity",
          "eval_perplexity_bits_per_byte", "eval_txt_perplexity", "eval_txt_bits_per_byte"}
  assert [m["step"] for m in evals] == [1, 2] and all(keys <= set(m) for m in evals)
  final = summary["final_eval"]
  quiet = dict(log=lambda *a: None)
  on_disk = evaluate_checkpoint(workdir, "mc", mc, **quiet)
  assert (on_disk["acc"], on_disk["acc_norm"]) == (final["eval_mc_acc"], final["eval_mc_acc_norm"])
  few = evaluate_checkpoint(workdir, "mc", mc, num_fewshot=1, fewshot_data=mc, seed=3, **quiet)
  assert (few["acc"], few["acc_norm"]) == (final["eval_hs_acc"], final["eval_hs_acc_norm"])
  val = evaluate_checkpoint(workdir, "perplexity", "validation", **quiet)
  assert val["bits_per_byte"] == pytest.approx(final["eval_perplexity_bits_per_byte"], rel=1e-6)
  assert evaluate_checkpoint(workdir, "perplexity", str(doc), **quiet)["perplexity"] == pytest.approx(
      final["eval_txt_perplexity"], rel=1e-6)
  # the validation split's perplexity is the run's eval_loss on the same text, with more context
  assert abs(math.log(final["eval_perplexity_perplexity"]) - final["eval_loss"]) < 0.3


def test_classify_task_is_the_finetuning_runs_evaluation(pretrained, tmp_path):
  """train.eval_tasks=classify on the validation file gives the run's own eval_* figures; the
  checkpoint's through scripts/eval.py's path the same."""
  from research.train.trainer import train
  pre_cfg, pre_dir = pretrained
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  rng = random.Random(0)
  words = {"sea": "wave salt ship tide".split(), "land": "hill field oak road".split()}
  for name, n in (("train.jsonl", 64), ("val.jsonl", 20)):
    labels = [rng.choice(sorted(words)) for _ in range(n)]
    _write_jsonl(data_dir / name, [{"text": " ".join(rng.choice(words[l]) for _ in range(3)), "label": l}
                                   for l in labels])
  val = str(data_dir / "val.jsonl")
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.task.name, cfg.data.packing, cfg.data.path, cfg.data.val_files = "classify", "pad", str(data_dir), ("val.jsonl",)
  cfg.finetune.init_from, cfg.classify.class_weights = pre_dir, "balanced"
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.eval_batches, cfg.train.log_every = 4, 2, 0, 2
  cfg.checkpoint.every_steps, cfg.optimizer.learning_rate, cfg.optimizer.warmup_steps = 4, 1e-2, 1
  cfg.train.eval_tasks = ("classify:" + val,)
  workdir = str(tmp_path / "run")
  train(cfg, workdir, log=lambda *a: None)
  evals = [m for m in _metrics(workdir) if "eval_loss" in m]
  assert [m["step"] for m in evals] == [2, 4]
  for m in evals:
    for k in ("loss", "accuracy", "precision", "recall", "f1"):
      assert m[f"eval_classify_{k}"] == pytest.approx(m[f"eval_{k}"], rel=1e-5, abs=1e-6), k
  result = evaluate_checkpoint(workdir, "classify", val, batch_size=3, log=lambda *a: None)
  report = json.load(open(os.path.join(workdir, "eval", "4.json")))
  assert result["confusion_matrix"] == report["confusion_matrix"] and result["labels"] == ["land", "sea"]
  assert result["f1"] == pytest.approx(report["f1"]) and result["loss"] == pytest.approx(report["loss"], rel=1e-5)
  assert set(result["per_class"]) == {"land", "sea"} and result["num_examples"] == 20
  with pytest.raises(DataError, match=r"not a classifier"):
    evaluate_checkpoint(pre_dir, "classify", val, log=lambda *a: None)
  with pytest.raises(DataError, match=r"a classifier checkpoint \(task.name=classify\); its task is --task=classify"):
    evaluate_checkpoint(workdir, "mc", val, log=lambda *a: None)


def test_generation_items_and_their_errors(tmp_path):
  from research.data.corpus import DataError
  from research.evals.data import read_targets
  (tmp_path / "g.jsonl").write_text('{"context": "KING.", "target": "x"}\n{"context": "", "target": "y"}\n')
  with pytest.raises(DataError, match=r"g.jsonl:2: .*'context' must be a non-empty string"):
    read_targets(str(tmp_path / "g.jsonl"))
  (tmp_path / "g.jsonl").write_text('{"context": "KING.", "target": "x"}\n\n{"context": "Q", "answer": "y"}\n')
  with pytest.raises(DataError, match=r"g.jsonl:3: .*'target' must be a string"):
    read_targets(str(tmp_path / "g.jsonl"))
