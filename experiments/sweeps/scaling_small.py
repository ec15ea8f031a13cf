"""A small IsoFLOP grid for scaling laws: 3 compute budgets x 5 model sizes, each run trained on the
tokens its budget buys, under 15 minutes on 2 CPU cores; scripts/report.py fits Chinchilla's
approach 3, L(N, D) = E + A/N^alpha + B/D^beta, and approach 2 (the IsoFLOP minima), with bootstrap
intervals, and compares them with the published values.

  python scripts/sweep.py --sweep=experiments/sweeps/scaling_small.py --workdir=/tmp/scaling_small --parallel=2

Data: the default corpus (Shakespeare's plays) read as bytes (256 symbols), so that the model's size
is its transformer blocks rather than a 4096-piece embedding table. Models: 2 layers of width 16-64,
2 heads (12k-130k parameters, embeddings included). Budget C is training FLOPs as
research/models/counting.py counts them (6 N_matmul per token plus attention); a run's steps =
C / (FLOPs per token x 2,048 tokens per step). At these budgets (1e11-1e12 FLOPs, 1e-8 to 1e-7 of
Chinchilla's smallest IsoFLOP budget) the fit says how this code measures a law, not what the law is at scale:
README's scaling-law section says how far it lands from the published values.
"""
from research.models import apply_preset
from research.models.counting import flops_per_token
from research.sweeps import Sweep, choice

BATCH, SEQ = 16, 128
WIDTHS = (16, 24, 32, 48, 64)
BUDGETS = (1e11, 3e11, 1e12)


def _model(width: int) -> dict:
  return {"model.num_layers": 2, "model.embed_dim": width, "model.num_heads": 2}


def _steps(budget: float, width: int) -> int:
  from research.config import base_config
  m = base_config().model
  apply_preset(m, "gpt2-124m")          # the default run's architecture, as experiments/default.py
  m.update(vocab_size=256, num_layers=2, embed_dim=width, num_heads=2, max_seq_len=SEQ)
  return max(10, round(budget / (flops_per_token(m, SEQ) * BATCH * SEQ)))


def derive(params: dict) -> dict:
  steps = _steps(params["flops_budget"], params["model.embed_dim"])
  return {**_model(params["model.embed_dim"]), "train.num_steps": steps,
          "optimizer.warmup_steps": max(1, steps // 10), "checkpoint.every_steps": max(100, steps // 4)}


def get_sweep():
  return Sweep(
      base="experiments/default.py",
      space={"flops_budget": choice(*BUDGETS), "model.embed_dim": choice(*WIDTHS)},
      sampler="grid",
      metric="eval_loss",
      derive=derive,
      overrides={"data.tokenizer": "byte", "data.vocab_size": 256, "model.max_seq_len": SEQ, "train.seq_len": SEQ,
                 "train.batch_size": BATCH, "optimizer.learning_rate": 3e-3, "optimizer.final_learning_rate": 3e-4,
                 "train.loss_chunks": 1, "train.eval_every": 0, "train.eval_batches": 20, "train.log_every": 50,
                 "train.sample_at_end": 0},
  )
