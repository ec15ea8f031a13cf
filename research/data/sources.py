"""Data sources: random-access sequences of documents for the train and eval splits.

A source is either a local corpus (built once into array_record by `local_builder`) or a prepared
TFDS dataset (`tfds:NAME`, read with `tfds.data_source`, no TensorFlow). Several sources with weights
make a mixture (`data.mixture`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from research.data.corpus import DataError, spec_from_config


@dataclasses.dataclass
class Source:
  name: str
  train: Sequence[Any]       # records: dicts with a text feature (bytes or str)
  validation: Sequence[Any]
  feature: str
  fingerprint: str          # identifies the data (for caches keyed on it, e.g. a trained tokenizer)
  weight: float = 1.0
  skipped_records: int = 0   # bad records skipped when the local corpus was built


def text_of(record: Any, feature: str) -> str:
  value = record[feature] if isinstance(record, dict) else record
  return value.decode("utf-8") if isinstance(value, bytes) else value


def open_tfds(name: str, data_cfg) -> Source:
  import tensorflow_datasets as tfds
  splits = {}
  for role, split in (("train", data_cfg.tfds_train_split), ("validation", data_cfg.tfds_eval_split)):
    try:
      splits[role] = tfds.data_source(name, split=split, data_dir=data_cfg.tfds_data_dir or None,
                                      download=False, builder_kwargs={"file_format": "array_record"})
    except (ValueError, KeyError, AssertionError, NotImplementedError) as e:
      reason = str(e).strip("'\"").splitlines()[0]
      raise DataError(f"data.tfds_name={name} (data.tfds_data_dir={data_cfg.tfds_data_dir or 'default'}, "
                      f"split {split!r}): {reason}") from None
  if len(splits["train"]) and data_cfg.tfds_text_feature not in splits["train"][0]:
    fields = ", ".join(sorted(splits["train"][0]))
    raise DataError(f"data.tfds_text_feature={data_cfg.tfds_text_feature!r} is not a feature of {name}; "
                    f"it has: {fields}")
  # The version is in full_name (name/config/version) and the directory read in data_dir; a dataset
  # prepared anew at the same version shows only in its size.
  info = splits["train"].dataset_info
  fingerprint = (f"tfds:{info.full_name}:{data_cfg.tfds_train_split}:{data_cfg.tfds_text_feature}:"
                 f"{len(splits['train'])}:{info.data_dir}")
  return Source(f"tfds:{name}", splits["train"], splits["validation"], data_cfg.tfds_text_feature, fingerprint)


def open_local(path: str, data_cfg, data_dir: str, log=print, memo_file: str | None = None,
               records=None) -> Source:
  from research.data.local_builder import build_local_corpus
  spec = spec_from_config(data_cfg, path, memo_file=memo_file, records=records)
  builder = build_local_corpus(spec, data_dir, log=log)
  skipped = builder.skipped_records()
  return Source(path, builder.as_data_source(split="train"), builder.as_data_source(split="validation"),
                "text", spec.fingerprint, skipped_records=sum(skipped.values()))


def open_sources(data_cfg, cache_dir: str, log=print, records=None) -> list[Source]:
  """The configured source(s): `data.mixture` entries, else `data.tfds_name`, else `data.path`.
  `records` (research/data/records.py): a structured task's check; its records come from local files."""
  entries = list(data_cfg.mixture) or [(f"tfds:{data_cfg.tfds_name}" if data_cfg.tfds_name else data_cfg.path, 1.0)]
  sources = []
  for i, entry in enumerate(entries):
    if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], (int, float)) or entry[1] <= 0:
      raise DataError(f"data.mixture[{i}]={tuple(entry)!r} must be (source, weight > 0), where source is "
                      "a local path/glob or tfds:NAME")
    spec, weight = entry
    if spec.startswith("tfds:"):
      if records is not None:
        raise DataError(f"{spec}: this task reads records with fields from local .jsonl/.csv files "
                        "(data.path), not TFDS datasets")
      source = open_tfds(spec[len("tfds:"):], data_cfg)
    else:
      source = open_local(spec, data_cfg, os.path.join(cache_dir, "tfds"), log=log,
                          memo_file=os.path.join(cache_dir, "file_digests.json"), records=records)
    source.weight = float(weight)
    sources.append(source)
  return sources
