"""A LoRA run's checkpoints (lora.rank > 0): they hold what the run trained (the adapters, and the
parameters finetune.init_new named, e.g. a task's head), not the frozen base. Their meta names the
base instead, as `lora_base` = {"path": the base's step directory, "fingerprint": of its
parameters}; every read of such a checkpoint (resume, load_model, export, finetune.init_from) reads
the base from that path and refuses it, naming both, when its fingerprint changed.

The fingerprint hashes the per-array checksums the base's meta already holds (checksums.py), which
reading the base verifies against its bytes, so checking it costs one small JSON read; a checkpoint
written before checksums were saved is hashed from its arrays.
"""
from __future__ import annotations

import hashlib
import json

from research.checkpoint.manager import CheckpointError

BASE_KEY = "lora_base"


def fingerprint(path: str) -> str:
  """'params-<sha256 prefix>' of the parameters of a checkpoint (workdir or step directory)."""
  from research.checkpoint.loading import read_meta, read_saved_params
  sums = {k: v for k, v in (read_meta(path).get("checksums") or {}).items() if k.startswith("params/")}
  if not sums:
    from research.checkpoint import checksums
    sums = checksums.tree_checksums({"params": read_saved_params(path)[0]})
  digest = hashlib.sha256(json.dumps(sorted(sums.items())).encode()).hexdigest()
  return f"params-{digest[:20]}"


def base_record(path: str) -> dict:
  """The meta entry of a LoRA run on the base at `path` (a resolved step directory)."""
  return {"path": path, "fingerprint": fingerprint(path)}


def check_base(record: dict, checkpoint: str) -> None:
  """Raises CheckpointError (one line, both paths) when the base `record` names cannot be read or
  is not the one `checkpoint`'s adapters were trained on."""
  path = record["path"]
  try:
    now = fingerprint(path)
  except CheckpointError as e:
    raise CheckpointError(f"{checkpoint}: its LoRA base {path} cannot be read ({e})") from None
  except OSError as e:
    raise CheckpointError(f"{checkpoint}: its LoRA base {path} cannot be read ({type(e).__name__}: {e})") from None
  if now != record["fingerprint"]:
    raise CheckpointError(f"{checkpoint}: its LoRA adapters were trained on the base {path} (fingerprint "
                          f"{record['fingerprint']}), whose parameters have changed since ({now}); restore that "
                          "base, or train the adapters again on this one")


def merged_config(cfg):
  """The config of the model a checkpoint's adapters merge into: lora.rank 0 (a copy; any other
  config as it is)."""
  if cfg.lora.rank == 0:
    return cfg
  cfg = cfg.copy_and_resolve_references()
  cfg.lora.rank = 0
  return cfg


def full_params(path: str, merge: bool = True) -> dict:
  """A checkpoint's parameters (host arrays, in its own layout). A LoRA run's: its base (checked,
  converted to the run's layout) overlaid with what it trained, the adapters merged into the
  kernels (`merge`) or kept beside them ('<dense>/lora/{a,b}')."""
  from research.checkpoint.loading import read_saved_params, with_defaults
  from research.models.layout import to_layout
  from research.models.lora import merge_params
  params, meta = read_saved_params(path)
  record = meta.get(BASE_KEY)
  if record is None:
    return params
  check_base(record, path)
  cfg = with_defaults(meta["config"])
  base = full_params(record["path"], merge=True)   # a base that is a LoRA run itself: its merged model
  joined = _overlay(to_layout(base, cfg.model.scan_layers), params)
  return merge_params(joined, cfg.lora) if merge else joined


def _overlay(base, trained):
  """`trained`'s leaves over `base`'s. Keys compare as strings: Orbax reads a per-layer checkpoint's
  layer keys as '0', '1', ..., layout.unstack_layers makes them ints."""
  if not isinstance(base, dict) or not isinstance(trained, dict):
    return trained
  out = {str(k): v for k, v in base.items()}
  for k, v in trained.items():
    out[str(k)] = _overlay(out[str(k)], v) if str(k) in out else v
  return out
