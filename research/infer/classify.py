"""Predictions of a trained classifier (`task.name=classify`): each text's label and class
probabilities, from a checkpoint's saved config (its labels), tokenizer and parameters.

Texts are read from .jsonl (the field `text_field`), .csv (the column `text_field`) or .txt (one text
per non-empty line) and become rows exactly as in training (research/tasks/classify.py): [BOS] ids
EOS, truncated to the run's train.seq_len, padded. A workdir whose run stopped early resolves to its
best step (summary.json's best_step), the parameters the run ended with.

Shape legend: B batch, L length, C classes.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from research.data.corpus import DataError
from research.data.labelled import example_row
from research.data.rows import Tokenize
from research.infer.texts import read_texts  # noqa: F401  (predict_file's reader, re-exported)
from research.tasks.classify import Classification


def resolve_checkpoint(path: str) -> tuple[str, str]:
  """(the checkpoint to read, why): a step directory as given; a workdir with a summary.json naming
  early stopping's best_step: that step; otherwise the newest step (research.load_model's choice)."""
  summary = epath.Path(path) / "summary.json"
  if summary.exists():
    best = json.loads(summary.read_text()).get("best_step")
    step_dir = epath.Path(path) / "checkpoints" / str(best)
    if best is not None and step_dir.exists():
      return str(step_dir), f"the best step {best} of early stopping (summary.json)"
  from research.checkpoint.loading import resolve_step_dir
  directory, step = resolve_step_dir(path)
  return f"{directory}/{step}", f"step {step}"


class Classifier:
  """A checkpoint's classifier: probabilities(texts) -> [N, C], labels in class order."""

  def __init__(self, checkpoint: str, batch_size: int = 32):
    from research import load_model, load_tokenizer
    self.path, self.source = resolve_checkpoint(checkpoint)
    model, self.cfg = load_model(self.path)
    if self.cfg.task.name != Classification.name:
      raise DataError(f"{self.path}: a checkpoint of task.name={self.cfg.task.name!r}, not a classifier")
    self.task = Classification(self.cfg)
    self.labels = self.task.labels
    self.tokenize = Tokenize(load_tokenizer(self.path), "text")
    self.seq_len, self.batch_size = self.cfg.train.seq_len, batch_size
    graphdef, params = nnx.split(model)

    @jax.jit
    def probabilities(params, batch):
      return jax.nn.softmax(self.task.logits(nnx.merge(graphdef, params), batch, None), axis=-1)

    self._params, self._probabilities = params, probabilities

  def rows(self, texts: list[str]) -> dict:
    rows = [example_row(self.tokenize.map({"text": t}), 0, self.seq_len) for t in texts]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def probabilities(self, texts: list[str]) -> np.ndarray:
    """[N, C] float32; batches of a fixed shape (the last padded), so the forward compiles once."""
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start:start + self.batch_size]
      batch = self.rows(chunk + [chunk[-1]] * (self.batch_size - len(chunk)))
      probs_BxC = self._probabilities(self._params, {k: jnp.asarray(v) for k, v in batch.items()})
      out.append(np.asarray(probs_BxC)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


def predict_file(checkpoint: str, input_path: str, out_path: str, text_field: str | None = None,
                 batch_size: int = 32, log=print) -> int:
  """Writes one JSON line per text of `input_path`: {"text", "label", "probabilities": {label: p}}.
  text_field defaults to the run's data.text_field. Returns the number of texts."""
  if not os.path.isfile(input_path):
    raise DataError(f"{input_path}: no such file (the texts to classify)")
  from research.checkpoint.loading import read_config
  path, source = resolve_checkpoint(checkpoint)
  texts = read_texts(input_path, text_field or read_config(path).data.text_field)  # bad input: before the weights
  classifier = Classifier(path, batch_size)
  log(f"predict: {len(texts):,} texts of {input_path} with {classifier.path} ({source}), "
      f"labels {', '.join(classifier.labels)}")
  probs_NxC = classifier.probabilities(texts)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w", encoding="utf-8") as f:
    for text, probs in zip(texts, probs_NxC):
      record = {"text": text, "label": classifier.labels[int(np.argmax(probs))],
                "probabilities": {label: float(p) for label, p in zip(classifier.labels, probs)}}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return len(texts)
