"""Learning rate x width on the default corpus: 3 x 3 grid, 9 short runs, under 15 minutes on 2 CPU cores.

  python scripts/sweep.py --sweep=experiments/sweeps/lr_width.py --workdir=/tmp/lr_width --parallel=2

The default run's model and data (experiments/default.py: Shakespeare's plays, SentencePiece 4096)
made small enough for a sweep on a laptop: 2 layers, sequence 128, 300 steps of 16 rows (614k
tokens). The table, curves, parallel coordinates and importances of a real sweep; README's sweep
section has its result. For a sweep at the default run's own size, drop the overrides.
"""
from research.sweeps import Sweep, choice, loguniform


def get_sweep():
  return Sweep(
      base="experiments/default.py",
      space={"optimizer.learning_rate": loguniform(1e-4, 1e-2, grid=(5e-4, 1.5e-3, 4.5e-3)),
             "model.embed_dim": choice(64, 128, 256)},
      sampler="grid",
      metric="eval_loss",
      direction="minimize",
      num_steps=300,
      overrides={"model.num_layers": 2, "model.num_heads": 4, "model.max_seq_len": 128, "train.seq_len": 128,
                 "optimizer.warmup_steps": 30, "optimizer.final_learning_rate": 5e-5,
                 "train.eval_every": 100, "train.eval_batches": 10, "train.log_every": 25,
                 "train.sample_at_end": 0, "checkpoint.every_steps": 100},
  )
