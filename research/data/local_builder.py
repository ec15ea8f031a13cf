"""A TFDS builder for local corpora: built once into array_record, then read like any TFDS dataset.

Each corpus (its files and split settings, see `CorpusSpec.fingerprint`) gets its own builder config,
so a changed file or setting builds a new dataset instead of reusing a stale one. TFDS writes into a
temporary directory and renames it when complete: a killed build never leaves a half dataset behind.
No TensorFlow is needed because we ask for array_record.
"""
from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

from research.data.cache_lock import cache_lock
from research.data.corpus import CorpusSpec, DataError, SkipCounter, iter_split

SPLITS = ("train", "validation")


class LocalTextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Documents of local .txt/.jsonl files; features: text (str), source (file:index)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, spec: CorpusSpec, data_dir: str):
    self._spec = spec
    self._skipped = {s: SkipCounter() for s in SPLITS}
    super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=spec.fingerprint),
                     file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=f"Local corpus {self._spec.path}",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for key, text in iter_split(self._spec, split, self._skipped[split]):
      yield key, {"text": text, "source": key}

  def skipped_records(self) -> dict:
    path = os.path.join(self.data_dir, "skipped_records.json")
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
    return {s: 0 for s in SPLITS}


def build_local_corpus(spec: CorpusSpec, data_dir: str, log=print) -> LocalTextCorpus:
  """Builds the corpus into `data_dir` unless it is already there; returns the builder. Runs that
  start at once on one cache (a sweep's parallel trials) build it once: the others wait for it."""
  builder = LocalTextCorpus(spec, data_dir)
  if builder.is_prepared():
    return _checked(spec, builder)
  with cache_lock(os.path.dirname(builder.data_dir)):
    builder = LocalTextCorpus(spec, data_dir)   # built while this one waited: read it
    if not builder.is_prepared():
      _build(spec, builder, log)
  return _checked(spec, builder)


def _build(spec: CorpusSpec, builder: LocalTextCorpus, log) -> None:
  log(f"data: building {spec.path} ({len(spec.files)} file(s)) into {builder.data_dir}")
  tfds.disable_progress_bar()
  try:
    builder.download_and_prepare(file_format="array_record")
  except AssertionError as e:  # TFDS refuses a split without examples
    for split in SPLITS:
      if f'split "{split}"' in str(e) and "No examples" in str(e):
        raise_empty(spec, split)
    raise
  counts = {s: builder._skipped[s].count for s in SPLITS}
  with open(os.path.join(builder.data_dir, "skipped_records.json"), "w") as f:
    json.dump(counts, f)
  for s in SPLITS:
    if builder._skipped[s].count:
      log(f"data: skipped {builder._skipped[s].count} bad record(s) in {s} "
          f"(data.skip_bad_records); first: {builder._skipped[s].first}")


def _checked(spec: CorpusSpec, builder: LocalTextCorpus) -> LocalTextCorpus:
  for split in SPLITS:
    if builder.info.splits[split].num_examples == 0:
      raise_empty(spec, split)
  return builder


def raise_empty(spec: CorpusSpec, split: str):
  hint = "adjust data.val_files or data.val_fraction" if split == "validation" else "check data.path"
  raise DataError(f"data.path={spec.path}: the {split} split has no documents; {hint}")
