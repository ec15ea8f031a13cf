"""What a resumed run must share with its checkpoint, checked in one place before training goes on.

A resume continues one run, so anything that would make the continued run differ from an
uninterrupted one is refused with one line naming it (and both values); `--fresh` starts over:
- the data stream's settings (data_state.STREAM_KEYS),
- the model: every model.* key but a few that leave the results as they are (MODEL_KEYS_FREE),
  finetune.freeze (what trains), task.name and classify.* (a classifier's head and its labels' order),
  lora.* (the adapters),
  and train.microbatches when dropout draws masks per microbatch,
- the tokenizer and the data themselves: fingerprints saved in the checkpoint's meta (a file
  edited in place keeps its path, so a path in the config says nothing about its contents).
Checkpoints written before a check existed lack what it compares and are accepted.
"""
from __future__ import annotations

import json

from research.checkpoint.data_state import check_same_stream, config_value
from research.checkpoint.manager import CheckpointError

# model.* keys a resumed run may change, because the results stay the same up to float rounding
# (as they do on another mesh):
#   remat           recomputes the same forward pass in the backward pass instead of storing it
#   attention_impl  xla and cudnn compute the same attention (a run may move between GPU and CPU/TPU)
#   vocab_multiple  only rounds vocab_size=0 up; the resolved model.vocab_size is compared itself
# Everything else (dtype, param_dtype, norm_eps, rope_theta, mlp_activation, dropout, init_std, ...)
# either changes the math or makes the saved config misdescribe the run, and is refused.
MODEL_KEYS_FREE = ("remat", "attention_impl", "vocab_multiple")

# train.* and optimizer.* keys are not refused: train.loss_chunks is numerically the plain path,
# train.nonfinite=skip is how a run stopped by a NaN goes on, and a longer num_steps or a lower
# learning rate on resume are deliberate; `changed_settings` lists them for the log instead.
LOGGED_SECTIONS = ("train", "optimizer")


def _differs(saved_config: dict, config: dict, key: str) -> bool:
  return json.dumps(config_value(saved_config, key)) != json.dumps(config_value(config, key))


def _both(saved_config: dict, config: dict, key: str) -> str:
  return f"{key}: checkpoint {config_value(saved_config, key)!r} vs now {config_value(config, key)!r}"


def check_same_model(saved_config: dict, config: dict) -> None:
  """Raises CheckpointError naming every model setting that changed since the checkpoint."""
  saved_model = saved_config.get("model") or {}
  keys = [f"model.{k}" for k in (config.get("model") or {}) if k not in MODEL_KEYS_FREE and k in saved_model]
  # Accumulation sums token-weighted losses, so the microbatch count only reorders a sum, unless
  # dropout is on: each microbatch draws its own masks, so another count trains on other masks.
  if config_value(config, "model.dropout") and "train" in saved_config:
    keys.append("train.microbatches")
  if "finetune" in saved_config:  # which parameters train decides the optimizer state's very shape
    keys.append("finetune.freeze")
  if "task" in saved_config:  # the objective, and a classifier's head and label order
    keys.append("task.name")
    keys += [f"classify.{k}" for k in (config.get("classify") or {}) if k in (saved_config.get("classify") or {})]
  if "lora" in saved_config:      # the adapters' shapes, places and function
    keys += [f"lora.{k}" for k in ("rank", "alpha", "dropout", "targets")]
  changed = [_both(saved_config, config, k) for k in keys if _differs(saved_config, config, k)]
  if changed:
    raise CheckpointError(f"the model settings changed since the checkpoint ({'; '.join(changed)}), so resuming "
                          "would continue another model; restore them or start over with --fresh")


def check_same_data(saved_meta: dict, tokenizer: str, sources: list[str]) -> None:
  """Raises CheckpointError when the tokenizer's or the sources' fingerprints differ from the
  checkpoint's (absent from older checkpoints: accepted)."""
  saved_tokenizer = saved_meta.get("tokenizer")
  if saved_tokenizer is not None and saved_tokenizer != tokenizer:
    raise CheckpointError(f"the tokenizer changed since the checkpoint (checkpoint {saved_tokenizer} vs now "
                          f"{tokenizer}), so the same text would be other token ids; restore it or start over "
                          "with --fresh")
  saved_sources = saved_meta.get("data_sources")
  if saved_sources is not None and list(saved_sources) != list(sources):
    raise CheckpointError(f"the data changed since the checkpoint (source fingerprints: checkpoint {saved_sources} "
                          f"vs now {list(sources)}): a file was edited, added or removed, so resuming would "
                          "not continue the same batches; restore it or start over with --fresh")


def changed_settings(saved_config: dict, config: dict) -> list[str]:
  """'key: checkpoint X vs now Y' for each train.*/optimizer.* key that changed (allowed, logged)."""
  keys = [f"{s}.{k}" for s in LOGGED_SECTIONS for k in (config.get(s) or {})]
  return [_both(saved_config, config, k) for k in keys if _differs(saved_config, config, k)]


def check_resumable(saved_meta: dict, config: dict, tokenizer: str, sources: list[str]) -> list[str]:
  """All the checks above; returns the allowed changes for the log."""
  saved_config = saved_meta["config"]
  check_same_model(saved_config, config)
  check_same_stream(saved_config, config)
  check_same_data(saved_meta, tokenizer, sources)
  return changed_settings(saved_config, config)
