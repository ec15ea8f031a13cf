"""Classification metrics from a confusion matrix, the one statistic evaluation sums.

confusion_CxC[i, j] counts validation examples of true class i predicted as j. Everything else
follows from it, exactly, however the examples were split over batches, devices and hosts:
accuracy, and per class precision tp / predicted, recall tp / true, F1 2tp / (2tp + fp + fn).
Macro averages are over the classes that occur among the true labels or the predictions (as
scikit-learn's defaults average), and a ratio with nothing to divide is 0 (scikit-learn's
zero_division=0).
"""
from __future__ import annotations

import io

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class(confusion_CxC) -> dict[str, np.ndarray]:
  """precision, recall, f1 and support (true examples) per class, float64 [C]."""
  m = np.asarray(confusion_CxC, np.float64)
  tp, true, predicted = np.diag(m), m.sum(1), m.sum(0)
  return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, true),
          "f1": _ratio(2 * tp, true + predicted), "support": true}


def classification_metrics(confusion_CxC) -> dict[str, float]:
  """accuracy and macro precision, recall, F1."""
  m = np.asarray(confusion_CxC, np.float64)
  scores = per_class(m)
  present = (m.sum(0) + m.sum(1)) > 0
  macro = {k: float(scores[k][present].mean()) if present.any() else 0.0 for k in ("precision", "recall", "f1")}
  return {"accuracy": float(np.trace(m) / max(m.sum(), 1.0)), **macro}


def majority_baseline(true_counts_C, majority: int) -> dict[str, float]:
  """The metrics of predicting class `majority` for every example whose true classes are counted."""
  counts = np.asarray(true_counts_C, np.float64)
  confusion = np.zeros((len(counts), len(counts)))
  confusion[:, majority] = counts
  return classification_metrics(confusion)


def report(confusion_CxC, labels) -> dict:
  """What eval/<step>.json holds: the macro figures, each class's, and the matrix with its labels."""
  m = np.asarray(confusion_CxC, np.float64)
  scores = per_class(m)
  return {**classification_metrics(m), "labels": list(labels),
          "per_class": {label: {k: float(scores[k][i]) for k in scores} for i, label in enumerate(labels)},
          "confusion_matrix": m.astype(np.int64).tolist(),
          "confusion_matrix_axes": "rows: true label, columns: predicted label (in `labels` order)"}


def confusion_png(confusion_CxC, labels, title: str) -> bytes:
  """The confusion matrix as a PNG: counts in each cell, shaded by the share of the true class."""
  import matplotlib
  matplotlib.use("Agg")  # no display: write files only
  import matplotlib.pyplot as plt
  m = np.asarray(confusion_CxC, np.float64)
  share = _ratio(m, m.sum(1, keepdims=True).repeat(m.shape[1], 1))
  size = 1.2 + 0.6 * len(labels)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
  ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
  fig.colorbar(image, ax=ax, label="share of the true label")
  fig.tight_layout()
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=100)
  plt.close(fig)
  return out.getvalue()
