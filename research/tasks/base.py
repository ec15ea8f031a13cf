"""What an objective is: the `Task` protocol every training objective implements.

A task owns, for one objective, everything the shared trainer, step, data pipeline and checkpoint
manager must not know:
  batch_spec(cfg)   the batch's keys, shapes, dtypes and logical axes (the one place the program, the
                    benchmark, --dry_run, the planner and the tests read the batch schema from)
  row_format(cfg)   how records become rows in the Grain pipeline (research/data/rows.py)
  prepare(cfg, tok) complete the config (e.g. the vocabulary from the tokenizer): the one place
  loss(model, batch, rng) -> (loss_sum, weight_sum, sums): summable statistics, so gradient
                    accumulation, several hosts and evaluation average exactly
  metrics(sums)     summed statistics -> named metrics; evaluation writes eval_<name> for each
  eval_report(sums) more than scalars (per-class figures, a confusion matrix): eval/<step>.json
  at_end(...)       what the run reports when training ends (samples, baselines)

Shape legend: B batch, L length.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
  """One batch array: its dimensions ('batch', 'length' or a fixed int), dtype and logical axes."""
  dims: tuple
  dtype: Any
  axes: tuple

  def shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
    size = {"batch": batch_size, "length": seq_len}
    return tuple(size[d] if isinstance(d, str) else int(d) for d in self.dims)


def token_field(dtype=np.int32) -> Field:
  """A [B, L] array, split over the batch axes like every activation."""
  return Field(("batch", "length"), np.dtype(dtype), ("act_batch", None))


class Task:
  """Base class: a task overrides what its objective needs. Instances are bound to one config."""

  name = ""
  metric_names: tuple[str, ...] = ()   # the keys metrics() returns, in order; "loss" among them

  def __init__(self, cfg):
    self.cfg = cfg

  def prepare(self, cfg, tokenizer, data=None) -> None:
    """Completes `cfg` once the tokenizer is known (None: a dry run with an explicit vocabulary);
    `data` is the run's DataPipeline when it was opened (e.g. to read the labels), else None."""

  def prepare_reads_data(self) -> bool:
    """Whether prepare() needs the data even when the run reads no batches (a dry run): a classifier
    whose labels come from the training split."""
    return False

  def adopt_checkpoint(self, cfg, saved_cfg, log) -> None:
    """Takes what this task needs from the config of the checkpoint a finetuning run starts from (or,
    resuming, its own), beside its architecture (e.g. a classifier's labels); nothing by default."""

  def describe(self) -> list[str]:
    """Lines for the start of the run's log about what prepare() found (labels, truncations)."""
    return []

  def model_extensions(self) -> tuple:
    """Callables (model, rngs) -> None that add this task's parameters to the backbone in place (a
    classifier head); () for tasks that use the backbone as it is."""
    return ()

  def extension_params(self) -> int:
    """The parameters model_extensions() add (exact, from the config): the trainer checks the
    architecture's count plus these against the built model."""
    return 0

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token of this task's model (the architecture's count, research/models:
    backbone and language-model head)."""
    from research.models import flops_per_token
    return flops_per_token(self.cfg.model, seq_len)

  def batch_spec(self) -> dict[str, Field]:
    raise NotImplementedError

  def row_format(self):
    raise NotImplementedError

  def loss(self, model, batch: dict, dropout_rng) -> tuple[jax.Array, jax.Array, dict]:
    raise NotImplementedError

  def metrics(self, sums: dict[str, float]) -> dict[str, float]:
    raise NotImplementedError

  def eval_report(self, sums: dict) -> dict | None:
    """A JSON-able report of one evaluation beyond its scalar metrics, written to eval/<step>.json
    (None: nothing to write)."""
    return None

  def report_figures(self, report: dict, step: int) -> dict[str, bytes]:
    """Figures of the run's final evaluation report: file name -> PNG bytes, written under eval/."""
    return {}

  def synthetic_batch(self, rows: int, seq_len: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random rows in the batch spec's layout, for benchmarks and tests without data."""
    raise NotImplementedError

  def final_line(self, final: dict, end: dict) -> str:
    """The run's last result line, from the final evaluation and at_end's entries."""
    return "final " + ", ".join(f"{k} {v:.4f}" for k, v in final.items())

  def at_end(self, host_params, graphdef, data, log) -> dict:
    """Summary entries when training ends (e.g. samples); {} by default. host_params() gathers the
    parameters to this host (a collective: call it on every process, or not at all)."""
    return {}
