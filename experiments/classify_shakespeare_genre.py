"""Which kind of play is a speech from? Comedy, history or tragedy, the First Folio's own three
categories, classified from the text of one speech, finetuned from the default run's model.

Data: the speeches (research/data/speeches.py) of the 36 Folio plays of the default corpus
(`*_gut.txt`, modern spelling), each labelled with its play's Folio category (FOLIO_GENRES below) and
written once into the cache as labelled jsonl, {"text", "label", "play", "speaker", "line"} per line:
train.jsonl and val.jsonl, split by play, so no play is in both. The validation plays are one of
each kind: Hamlet and Twelfth Night (also held out of the default run's pretraining) and Henry V
(whose text, unlabelled, was in it). Speeches of fewer than MIN_WORDS words ("Ay, my lord.") are
left out: they carry no genre.
Model: the default run's (finetune.init_from=runs/default: its architecture, tokenizer and weights),
with a classifier head (`cls_head`, fresh) on the last token's hidden state; all parameters train.
Early stopping on the validation macro F1; the run ends with the best step's parameters, and
reports the majority-class baseline beside its own accuracy and macro F1.

  python scripts/train.py --config=experiments/default.py --workdir=runs/default
  python scripts/train.py --config=experiments/classify_shakespeare_genre.py --workdir=runs/genre
  python scripts/train.py --config=experiments/classify_shakespeare_genre.py:pooling=mean --workdir=runs/genre_mean
  python scripts/train.py --config=experiments/classify_shakespeare_genre.py:lora_rank=8 --workdir=runs/genre_lora
  # your own labelled files instead (a text and a label per line):
  python scripts/train.py --config=experiments/classify_shakespeare_genre.py --workdir=runs/mine \
      --config.data.path=DIR --config.data.val_files=val.jsonl
  python scripts/predict.py --checkpoint=runs/genre --input=speeches.txt --out=genres.jsonl
"""
import glob
import hashlib
import json
import os

from experiments.default import get_config as default_config
from experiments.default import shakespeare_texts
from research.config.cli import parse_variant
from research.data.pipeline import default_cache_dir
from research.data.speeches import play_name, speeches, write_jsonl_once

# The First Folio's (1623) categories, by the corpus file's play name, in the Folio's order.
# Decisions where the Folio itself wavers:
# - Troilus and Cressida is missing from the Folio's Catalogue; it was printed late, between the
#   histories and the tragedies, its first page headed "The Tragedie of Troylus and Cressida": a
#   tragedy here, as that heading says.
# - Cymbeline is a tragedy: the Folio prints it last among the tragedies ("The Tragedie of
#   Cymbeline"), whatever later editors call it (a romance).
FOLIO_GENRES = {
    "tempest": "comedy", "two_gentlemen_of_verona": "comedy", "merry_wives_of_windsor": "comedy",
    "measure_for_measure": "comedy", "comedy_of_errors": "comedy", "much_ado_about_nothing": "comedy",
    "loves_labours_lost": "comedy", "midsummer_nights_dream": "comedy", "merchant_of_venice": "comedy",
    "as_you_like_it": "comedy", "taming_of_the_shrew": "comedy", "alls_well_that_ends_well": "comedy",
    "twelfth_night": "comedy", "winters_tale": "comedy",
    "john": "history", "richard_ii": "history", "henry_iv_part_1": "history", "henry_iv_part_2": "history",
    "henry_v": "history", "henry_vi_part_1": "history", "henry_vi_part_2": "history",
    "henry_vi_part_3": "history", "richard_iii": "history", "henry_viii": "history",
    "troilus_and_cressida": "tragedy", "coriolanus": "tragedy", "tragedy_of_titus_andronicus": "tragedy",
    "romeo_and_juliet": "tragedy", "timon_of_athens": "tragedy", "julius_caesar": "tragedy",
    "macbeth": "tragedy", "hamlet": "tragedy", "lear": "tragedy", "othello": "tragedy",
    "antony_and_cleopatra": "tragedy", "cymbeline": "tragedy",
}
# Works of the corpus that are not Folio plays: Pericles (not in the Folio) and the poems.
NOT_IN_THE_FOLIO = ("pericles", "sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
                    "rape_of_lucrece")
VALIDATION_PLAYS = ("hamlet", "twelfth_night", "henry_v")
MIN_WORDS = 10


def labelled_speeches(texts_dir: str) -> dict[str, list[dict]]:
  """{'train': records, 'val': records}: every speech of every Folio play, labelled with its category."""
  splits = {"train": [], "val": []}
  for path in sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt"))):
    play = play_name(path)
    if play in NOT_IN_THE_FOLIO:
      continue
    if play not in FOLIO_GENRES:
      raise ValueError(f"{path}: {play!r} is neither in FOLIO_GENRES nor in NOT_IN_THE_FOLIO; say which")
    split = "val" if play in VALIDATION_PLAYS else "train"
    splits[split] += [{"text": s.text, "label": FOLIO_GENRES[play], "play": play, "speaker": s.speaker,
                       "line": s.line} for s in speeches(path, min_words=MIN_WORDS)]
  return splits


def write_data(cache_dir: str) -> str:
  """The labelled jsonl directory (written once; its name changes with the labelling settings)."""
  settings = json.dumps([FOLIO_GENRES, VALIDATION_PLAYS, MIN_WORDS, "speeches-v1"], sort_keys=True)
  directory = os.path.join(cache_dir, "labelled", f"shakespeare_genre-{hashlib.sha256(settings.encode()).hexdigest()[:12]}")
  if not all(os.path.exists(os.path.join(directory, f"{s}.jsonl")) for s in ("train", "val")):
    for split, records in labelled_speeches(shakespeare_texts()).items():
      write_jsonl_once(os.path.join(directory, f"{split}.jsonl"), records)
  return directory


# Variants (`--config=...:key=value`): pooling, and lora_rank > 0 for LoRA adapters on the backbone's
# attention and MLP kernels (the base frozen; the head, which the checkpoint lacks, trains whole).
VARIANTS = {"pooling": "last", "lora_rank": 0}


def get_config(arg=None):
  variant = parse_variant(arg, VARIANTS)
  c = default_config()
  c.task.name = "classify"
  c.finetune.init_from = "runs/default"  # its architecture, tokenizer and weights; the head starts fresh
  c.data.path = write_data(c.data.cache_dir or default_cache_dir())
  c.data.val_files = ("val.jsonl",)
  c.data.packing = "pad"                 # one speech per row
  c.data.doc_split = "file"
  c.classify.pooling = variant["pooling"]
  c.classify.dropout = 0.1
  c.classify.class_weights = "balanced"  # 14 comedies, 10 histories, 12 tragedies of unequal length

  c.train.num_steps = 600
  c.train.batch_size = 32
  c.train.seq_len = 64                   # a speech of 10+ words is ~45 tokens at the median
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.eval_batches = 0               # the whole validation split
  c.train.eval_at_start = False
  c.train.loss_chunks = 0                # no next-token head here
  c.train.sample_at_end = 0
  c.train.early_stopping_patience = 4
  c.checkpoint.best_metric = "eval_f1"
  c.checkpoint.best_mode = "max"
  c.checkpoint.keep_best = 1
  c.checkpoint.every_steps = 100

  c.optimizer.learning_rate = 3e-4
  c.optimizer.final_learning_rate = 3e-5
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 0.1         # L2 (decoupled); optimizer.l1 adds an L1 penalty when wanted
  if variant["lora_rank"]:
    c.lora.rank = variant["lora_rank"]
    c.lora.alpha = 2.0 * variant["lora_rank"]
    c.optimizer.learning_rate = 1e-3     # adapters and a fresh head take a larger step than the full model
    c.optimizer.final_learning_rate = 1e-4
  return c
