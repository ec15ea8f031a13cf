"""The data iterators' states in a checkpoint: one per data stream, all in one JSON item.

Orbax's JSON handler writes from the primary process only, so the streams of all processes are
gathered first; on restore each process takes its own streams (so a run may resume on another
process count), and a different number of streams, or a change to any setting that shapes the
batch stream, is refused rather than silently resuming elsewhere.
"""
from __future__ import annotations

import json

import jax
import numpy as np

from research.checkpoint.manager import CheckpointError

# Settings that define which batches come in which order; resuming across a change is not exact.
# Files are named by path here; their contents are checked by the fingerprints in the checkpoint's
# meta (research/checkpoint/resume_checks.py). Eval-only settings (tfds_eval_split) and ones that do
# not change the batches (read_threads, cache_dir) may change.
STREAM_KEYS = ("seed", "train.batch_size", "train.seq_len", "data.path", "data.format", "data.text_field",
               "data.doc_split", "data.val_files", "data.val_fraction", "data.skip_bad_records", "data.tfds_name",
               "data.tfds_data_dir", "data.tfds_train_split", "data.tfds_text_feature", "data.mixture",
               "data.packing", "data.shuffle_rows", "data.num_workers", "data.tokenizer", "data.vocab_size",
               "data.spm_model_type",
               "data.spm_model_file", "data.spm_max_documents", "data.bpe_vocab_file", "data.bpe_merges_file",
               "data.tiktoken_file", "data.tiktoken_pattern", "data.tokenizer_dir", "task.name",
               "sft.template", "sft.train_on", "sft.system_prompt", "sft.prompt_field", "sft.response_field",
               "sft.messages_field")


def gather_states(local_state: dict) -> dict:
  """{'streams': {stream index: state}} of every process merged into one (a collective when n > 1)."""
  n = jax.process_count()
  if n == 1:
    return {"streams": dict(local_state["streams"])}
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
  buffer = np.zeros(int(lengths.max()), np.uint8)
  buffer[:len(data)] = data
  gathered = np.asarray(multihost_utils.process_allgather(buffer)).reshape(n, -1)
  merged = {}
  for i in range(n):
    merged.update(json.loads(bytes(gathered[i, :lengths[i]]))["streams"])
  return {"streams": merged}


def saved_num_streams(saved: dict) -> int | None:
  """How many data streams the checkpoint's iterator state holds (None: a state without streams)."""
  return len(saved["streams"]) if isinstance(saved, dict) and "streams" in saved else None


def local_state(saved: dict, num_streams: int) -> dict:
  """This process's streams out of a checkpoint's merged state; any process count that divides
  the number of streams can resume it."""
  found = saved_num_streams(saved)
  if found != num_streams:
    raise CheckpointError(f"the checkpoint's data iterator has {found} stream(s) and this run has "
                          f"{num_streams} (data.streams); set --config.data.streams={found} to resume it "
                          "(or --fresh)")
  return saved


def config_value(cfg: dict, dotted: str):
  """cfg['a']['b'] for 'a.b' (None when absent); sequences as lists, so JSON round trips compare equal."""
  for part in dotted.split("."):
    cfg = cfg.get(part) if isinstance(cfg, dict) else None
  return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


# A checkpoint older than a stream key ran with the behaviour that key's absence meant.
ABSENT_MEANS = {"data.shuffle_rows": 0, "data.tokenizer_dir": "", "task.name": "lm", "sft.template": "auto",
                "sft.train_on": "response", "sft.system_prompt": "", "sft.prompt_field": "prompt",
                "sft.response_field": "response", "sft.messages_field": "messages"}


def check_same_stream(saved_config: dict, config: dict) -> None:
  """Raises CheckpointError naming every stream-defining key that changed since the checkpoint."""
  def saved(k):
    value = config_value(saved_config, k)
    return ABSENT_MEANS.get(k) if value is None else value

  changed = [f"{k}: checkpoint {saved(k)!r} vs now {config_value(config, k)!r}"
             for k in STREAM_KEYS if json.dumps(saved(k)) != json.dumps(config_value(config, k))]
  if changed:
    raise CheckpointError("the data settings changed since the checkpoint, so resuming would not continue the "
                          f"same batches ({'; '.join(changed)}); restore them or start over with --fresh")
