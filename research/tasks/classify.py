"""Sequence classification (`task.name=classify`): one label per text, a head on any backbone.

Records: .jsonl/.csv with a text (`data.text_field`) and a label (`data.label_field`, a string or an
integer; stored as its string); an empty text or a missing field stops with the file and line.
Labels: `classify.labels`, or the training split's, sorted (numerically when all are integers);
`prepare` writes them (and the training count of each) into the config, so every checkpoint's
saved config maps class indices back to names. A validation label outside them stops with its
file and line.
Rows (research/data/labelled.py): one example per row: [BOS when the tokenizer wants it] text ids
EOS, truncated to train.seq_len (its first seq_len - 1 tokens and EOS), padded on the right
(`data.packing=pad`).
Model: the backbone's hidden states -> `ClassifierHead` (research/models/heads.py) at `cls_head`:
pooling (`classify.pooling`), dropout (`classify.dropout`), Dense to the classes.
Loss: cross-entropy per example, times its class weight (`classify.class_weights=balanced`),
summed; the statistics evaluation sums are the loss and the confusion matrix, from which come
accuracy and macro precision, recall and F1 (classification_metrics.py); each evaluation's
per-class figures and matrix go to eval/<step>.json, the final one's matrix also as a PNG.

Shape legend: B batch, L length, D embed_dim, C classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.config import ConfigError
from research.models.heads import HEAD_NAME, ClassifierHead, head_flops_per_example, head_params
from research.tasks import classification_metrics as cm
from research.tasks.base import Field, Task, token_field
from research.tasks.lm import resolve_vocab

TRUNCATION_SAMPLE = 20_000  # texts per split tokenized at the start to count those longer than a row
# The data side (records, rows: research/data/labelled.py, with Grain) is imported where it is used,
# so that building a classifier's model (the train benchmark, the planner) needs no data stack.


class Classification(Task):
  name = "classify"
  metric_names = ("loss", "accuracy", "precision", "recall", "f1")

  def __init__(self, cfg):
    super().__init__(cfg)
    self._notes: list[str] = []

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(self.cfg.classify.labels)

  def class_weights(self) -> np.ndarray:
    """[C] float32: 1 each, or n / (C * n_c) from the training counts (classify.class_weights=balanced)."""
    c = self.cfg.classify
    if c.class_weights == "none" or not c.label_counts:
      return np.ones(len(self.labels), np.float32)
    counts = np.maximum(np.asarray(c.label_counts, np.float64), 1.0)
    return (counts.sum() / (len(counts) * counts)).astype(np.float32)

  # ---------------------------------------------------------------- config and data
  def prepare(self, cfg, tokenizer, data=None) -> None:
    from research.data.corpus import DataError
    from research.data.labelled import label_order, split_records
    from research.data.records import WHERE
    if tokenizer is not None:
      resolve_vocab(cfg, tokenizer)
    if cfg.finetune.init_from and not any(p.startswith(f"^{HEAD_NAME}") for p in cfg.finetune.init_new):
      # A backbone's checkpoint has no head: it starts fresh (a classifier's checkpoint brings its own).
      cfg.finetune.init_new = tuple(cfg.finetune.init_new) + (f"^{HEAD_NAME}/",)
    if data is None:
      if not cfg.classify.labels:
        raise ConfigError("task.name=classify without data needs classify.labels: the head's classes come "
                          "from the training split otherwise")
      return
    train = [r for s in data.sources for r in split_records(s.train)]
    validation = [r for s in data.sources for r in split_records(s.validation)]
    fixed = tuple(cfg.classify.labels)
    labels = list(fixed) if fixed else label_order(r["label"] for r in train)
    source = "classify.labels" if fixed else "the training split"
    known = set(labels)
    for split, records in (("training", train), ("validation", validation)):
      for r in records:
        if r["label"] not in known:
          shown = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
          raise DataError(f"{r[WHERE]}: label {r['label']!r} of the {split} split is not one of the "
                          f"{len(labels)} labels of {source} ({shown})")
    if len(labels) < 2:
      raise DataError(f"{source} holds one label ({labels[0]!r}); classification needs two or more")
    counts = {label: 0 for label in labels}
    for r in train:
      counts[r["label"]] += 1
    cfg.classify.labels = tuple(labels)
    cfg.classify.label_counts = tuple(counts[label] for label in labels)
    self._notes = [f"classify: {len(labels)} labels from {source}; training examples "
                   + ", ".join(f"{label} {n:,}" for label, n in counts.items())
                   + f"; {len(validation):,} validation examples; pooling {cfg.classify.pooling}, class weights "
                   + cfg.classify.class_weights]
    self._notes += [_truncation_note(split, records, tokenizer, cfg.train.seq_len)
                    for split, records in (("training", train), ("validation", validation))]

  def prepare_reads_data(self) -> bool:
    return not self.cfg.classify.labels

  def adopt_checkpoint(self, cfg, saved_cfg, log) -> None:
    """A classifier's checkpoint (finetune.init_from, or a finetuning run's own on resume) brings its
    labels: its head's classes are in their order."""
    if saved_cfg.task.name == self.name and saved_cfg.classify.labels and not cfg.classify.labels:
      cfg.classify.labels = tuple(saved_cfg.classify.labels)
      log(f"classify: the checkpoint's {len(cfg.classify.labels)} labels: {', '.join(cfg.classify.labels)}")

  def describe(self) -> list[str]:
    return self._notes

  def model_extensions(self) -> tuple:
    m, c = self.cfg.model, self.cfg.classify
    if not c.labels:
      raise ConfigError("task.name=classify: the labels are not known yet (complete the config first: "
                        "research.train.setup.complete_config)")

    def add_head(model, rngs):
      setattr(model, HEAD_NAME, ClassifierHead(m.embed_dim, len(c.labels), c.pooling, c.dropout, m.init_std,
                                               m.dtype, m.param_dtype, rngs))

    return (add_head,)

  def extension_params(self) -> int:
    return head_params(self.cfg.model.embed_dim, len(self.labels), self.cfg.classify.pooling)

  def flops_per_token(self, seq_len: int) -> float:
    """The backbone's without the language-model head (never run here), plus the classifier head's."""
    m = self.cfg.model
    head = head_flops_per_example(m.embed_dim, len(self.labels), self.cfg.classify.pooling, seq_len)
    return super().flops_per_token(seq_len) - 6.0 * m.embed_dim * m.vocab_size + head / seq_len

  def batch_spec(self) -> dict[str, Field]:
    per_row = lambda dtype: Field(("batch",), np.dtype(dtype), ("act_batch",))
    return {"inputs": token_field(), "mask": token_field(), "label": per_row(np.int32),
            "weight": per_row(np.float32)}

  def row_format(self):
    from research.data.labelled import EncodeExample, LabelledText, padded_rows
    from research.data.records import Records
    from research.data.rows import RowFormat
    # The labels are read from the data after the pipeline opens (prepare), before any row is made:
    # the encoder reads them when the pipeline builds its maps.
    return RowFormat(encode=lambda tokenizer, feature: EncodeExample(tokenizer, feature, self.labels),
                     rows=padded_rows,
                     records=Records(f"classify:{self.cfg.data.text_field}:{self.cfg.data.label_field}",
                                     LabelledText(self.cfg.data.text_field, self.cfg.data.label_field),
                                     text=lambda r: r["text"]))

  # ---------------------------------------------------------------- loss and metrics
  def logits(self, model, batch, dropout_rng) -> jax.Array:
    """[B, C] float32."""
    x_BxLxD = model.hidden_states(batch["inputs"], dropout_rng=dropout_rng)
    head_rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, 0x5EAD)
    return getattr(model, HEAD_NAME)(x_BxLxD, batch["mask"], head_rng)

  def loss(self, model, batch, dropout_rng):
    logits_BxC = self.logits(model, batch, dropout_rng)
    num_classes = logits_BxC.shape[-1]
    weight_B = batch["weight"].astype(jnp.float32)
    label_B = batch["label"]
    losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, label_B)
    loss_sum = (losses_B * jnp.asarray(self.class_weights())[label_B] * weight_B).sum()
    weight_sum = weight_B.sum()
    true_BxC = jax.nn.one_hot(label_B, num_classes, dtype=jnp.float32) * weight_B[:, None]
    predicted_BxC = jax.nn.one_hot(jnp.argmax(logits_BxC, -1), num_classes, dtype=jnp.float32)
    confusion_CxC = true_BxC.T @ predicted_BxC
    return loss_sum, weight_sum, {"loss_sum": loss_sum, "weight_sum": weight_sum, "confusion": confusion_CxC}

  def metrics(self, sums):
    return {"loss": float(sums["loss_sum"] / max(float(sums["weight_sum"]), 1.0)),
            **cm.classification_metrics(sums["confusion"])}

  def eval_report(self, sums) -> dict:
    return {"loss": self.metrics(sums)["loss"], **cm.report(sums["confusion"], self.labels)}

  def report_figures(self, report: dict, step: int) -> dict[str, bytes]:
    title = f"step {step}: accuracy {report['accuracy']:.3f}, macro F1 {report['f1']:.3f}"
    return {f"confusion_{step}.png": cm.confusion_png(report["confusion_matrix"], report["labels"], title)}

  def synthetic_batch(self, rows, seq_len, rng):
    return {"inputs": rng.integers(0, self.cfg.model.vocab_size, (rows, seq_len)).astype(np.int32),
            "mask": np.ones((rows, seq_len), np.int32),
            "label": rng.integers(0, len(self.labels), rows).astype(np.int32),
            "weight": np.ones(rows, np.float32)}

  # ---------------------------------------------------------------- end of run
  def at_end(self, host_params, graphdef, data, log) -> dict:
    """The majority-class baseline: the training split's most frequent label, predicted for every
    validation example that evaluation reads (the first train.eval_batches batches, in order)."""
    from research.data.labelled import split_records
    t = self.cfg.train
    majority = int(np.argmax(np.asarray(self.cfg.classify.label_counts)))
    index = {label: i for i, label in enumerate(self.labels)}
    records = [r for s in data.sources for r in split_records(s.validation)]
    true_counts = np.zeros(len(self.labels))
    for r in records[:t.eval_batches * t.batch_size or None]:
      true_counts[index[r["label"]]] += 1
    baseline = cm.majority_baseline(true_counts, majority)
    return {"labels": list(self.labels), "majority_baseline": {"label": self.labels[majority], **baseline}}

  def final_line(self, final, end) -> str:
    b = end["majority_baseline"]
    return (f"final eval accuracy {final['eval_accuracy']:.4f}, macro F1 {final['eval_f1']:.4f} (loss "
            f"{final['eval_loss']:.4f}) vs the majority class {b['label']!r}: accuracy {b['accuracy']:.4f}, "
            f"macro F1 {b['f1']:.4f}")


def _truncation_note(split: str, records: list[dict], tokenizer, seq_len: int) -> str:
  """How many texts are longer than a row (counted on up to TRUNCATION_SAMPLE of them)."""
  from research.data.rows import Tokenize
  sample = records[:TRUNCATION_SAMPLE]
  tokenize = Tokenize(tokenizer, "text")
  lengths = np.asarray([len(tokenize.map({"text": r["text"]})) for r in sample])
  longer = int((lengths > seq_len).sum())
  of = f"{len(sample):,}" + (f" (the first of {len(records):,})" if len(records) > len(sample) else "")
  return (f"classify: {longer:,} of {of} {split} texts ({100 * longer / max(len(sample), 1):.1f}%) are longer "
          f"than train.seq_len={seq_len} tokens and are truncated; median length "
          f"{int(np.median(lengths)) if len(lengths) else 0}, max {int(lengths.max()) if len(lengths) else 0}")
