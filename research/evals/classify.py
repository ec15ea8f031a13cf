"""The `classify` task: a classifier checkpoint's (task.name=classify) metrics on a labelled file,
the same figures its finetuning run's evaluation reports (research/tasks/classify.py: loss with the
run's class weights, accuracy, macro precision/recall/F1, per class, the confusion matrix, from
research/tasks/classification_metrics.py).

From a checkpoint the probabilities come from research/infer/classify.py's Classifier; in training
from `probability_runner`, the same head on the run's sharded parameters, over rows made as the
Classifier makes them (research/data/labelled.py's example_row).

Shape legend: N examples, B batch, C classes.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from research.data.corpus import DataError
from research.data.records import WHERE
from research.tasks import classification_metrics as cm

LOGGED = ("loss", "accuracy", "precision", "recall", "f1")


def label_indices(records: list[dict], labels: tuple[str, ...]) -> np.ndarray:
  """[N] class indices; a label the classifier does not know is an error naming file:line."""
  index = {label: i for i, label in enumerate(labels)}
  out = []
  for r in records:
    if r["label"] not in index:
      raise DataError(f"{r[WHERE]}: label {r['label']!r} is not one of the classifier's {len(labels)} labels "
                      f"({', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''})")
    out.append(index[r["label"]])
  return np.asarray(out, np.int64)


def classification_result(probs_NxC: np.ndarray, true_N: np.ndarray, task) -> dict:
  """The finetuning run's evaluation figures (task: research.tasks.classify.Classification)."""
  probs_NxC = np.asarray(probs_NxC, np.float64)
  num_classes = probs_NxC.shape[1]
  confusion_CxC = np.zeros((num_classes, num_classes))
  np.add.at(confusion_CxC, (true_N, probs_NxC.argmax(-1)), 1.0)
  weights_N = task.class_weights().astype(np.float64)[true_N]
  nll_N = -np.log(np.maximum(probs_NxC[np.arange(len(true_N)), true_N], np.finfo(np.float64).tiny))
  loss = float((weights_N * nll_N).sum() / max(len(true_N), 1))
  return {"num_examples": int(len(true_N)), "loss": loss, **cm.report(confusion_CxC, task.labels)}


def checkpoint_probabilities(classifier, records: list[dict]) -> np.ndarray:
  """[N, C] from research.infer.classify.Classifier."""
  return classifier.probabilities([r["text"] for r in records])


def probability_fn(graphdef, task):
  """(params, batch) -> [B, C] class probabilities, float32 (Classifier's function)."""

  def fn(params, batch):
    return jax.nn.softmax(task.logits(nnx.merge(graphdef, params), batch, None), axis=-1)

  return fn


def example_batches(tokenizer, texts: list[str], seq_len: int, batch_size: int) -> list[dict]:
  """Rows exactly as the Classifier makes them ([BOS] ids EOS, cut to seq_len, padded), in
  batches of batch_size (the last filled with copies of its last row, dropped after)."""
  from research.data.labelled import example_row
  from research.data.rows import Tokenize
  tokenize = Tokenize(tokenizer, "text")
  rows = [example_row(tokenize.map({"text": t}), 0, seq_len) for t in texts]
  batches = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
    batches.append({k: np.stack([r[k] for r in chunk]) for k in ("inputs", "mask")})
  return batches


def runner_probabilities(runner, batches: list[dict], n: int) -> np.ndarray:
  """[n, C] from a Runner of probability_fn over example_batches."""
  return np.concatenate([np.asarray(runner(b)) for b in batches])[:n]
