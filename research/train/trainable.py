"""Trainable and frozen parameters: `finetune.freeze` (regexes over paths such as
'blocks/0/attn/q/kernel') splits the parameter tree in two. The train state keeps every parameter in
`params`; only the trainable part gets a gradient, optimizer state and updates, so a frozen backbone
costs no Adam moments and no gradient memory.

With LoRA (lora.rank > 0) the rule turns around: only the adapters and the parameters the checkpoint
lacks (finetune.init_new: a task's head) train; every other parameter, the base, is frozen
(`run_partition`)."""
from __future__ import annotations

import re

from research.config import ConfigError


class Partition:
  """Splits nested parameter dicts into (trainable, frozen) by path, and joins them back.

  freeze_patterns: paths matching any are frozen. train_only (None: everything trains): when given,
  paths matching none of these are frozen too."""

  def __init__(self, freeze_patterns=(), train_only=None):
    self.patterns = tuple(freeze_patterns)
    self._regexes = [re.compile(p) for p in self.patterns]
    self.train_only = None if train_only is None else tuple(train_only)
    self._train_regexes = [re.compile(p) for p in self.train_only or ()]

  def is_frozen(self, path: str) -> bool:
    if self.train_only is not None and not any(r.search(path) for r in self._train_regexes):
      return True
    return any(r.search(path) for r in self._regexes)

  def split(self, params: dict) -> tuple[dict, dict]:
    """(trainable, frozen): nested dicts with the same keys as `params`, each holding its own leaves."""
    trainable, frozen = self._split(params, ())
    return trainable or {}, frozen or {}

  def _split(self, tree, prefix):
    if isinstance(tree, dict):
      a, b = {}, {}
      for k, v in tree.items():
        x, y = self._split(v, prefix + (str(k),))
        if x is not None:
          a[k] = x
        if y is not None:
          b[k] = y
      return a or None, b or None
    return (None, tree) if self.is_frozen("/".join(prefix)) else (tree, None)

  def check(self, abstract_params: dict) -> None:
    """Every pattern freezes something, and something is left to train: a typo is an error, not a
    run that silently trains everything (or nothing)."""
    paths = list(_paths(abstract_params, ()))
    for pattern, regex in zip(self.patterns, self._regexes):
      if not any(regex.search(p) for p in paths):
        raise ConfigError(f"finetune.freeze: {pattern!r} matches no parameter (paths look like {paths[0]!r}, "
                          f"{paths[-1]!r})")
    if (self.patterns or self.train_only is not None) and all(self.is_frozen(p) for p in paths):
      only = "" if self.train_only is None else " (with lora.rank > 0 only the adapters and finetune.init_new train)"
      raise ConfigError(f"finetune.freeze={self.patterns!r} freezes every parameter{only}; nothing would train")


def run_partition(cfg) -> Partition:
  """The run's split: finetune.freeze, and with lora.rank > 0 only the adapters and
  finetune.init_new's parameters train."""
  if cfg.lora.rank > 0:
    return Partition(cfg.finetune.freeze, train_only=lora_own(cfg).train_only)
  return Partition(cfg.finetune.freeze)


def lora_own(cfg) -> Partition:
  """A LoRA run's split into (its own parameters: the adapters and finetune.init_new's, which its
  checkpoints hold, frozen or not; the base's, which they do not)."""
  from research.models.lora import ADAPTER_PATTERN
  return Partition(train_only=(ADAPTER_PATTERN,) + tuple(cfg.finetune.init_new))


def join(trainable: dict, frozen: dict) -> dict:
  """The inverse of `Partition.split`: one nested dict with the leaves of both."""
  if not frozen:
    return trainable
  out = dict(trainable)
  for k, v in frozen.items():
    out[k] = join(out[k], v) if isinstance(v, dict) and k in out else v
  return out


def _paths(tree, prefix):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _paths(v, prefix + (str(k),))
  else:
    yield "/".join(prefix)
