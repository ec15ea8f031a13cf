"""Published model shapes at sequence 8192, set up for planning pod runs with
`scripts/train.py --dry_run --target=...` (and `--autofit`).

  python scripts/train.py --config=experiments/pod_plan.py:llama3-8b --dry_run --target=v5p:4x4x4

Variants: gpt2-1.5b (GPT-2 XL; learned positions extended to 8192), llama3-8b, llama3-70b (vocab,
widths and GQA as published). bf16 compute, f32 parameters and Adam state, scan over layers with full
remat, FSDP over every chip (mesh (1, -1, 1)), a global batch of 64 x 8192 tokens (0.5M; attention_impl=xla materialises [B, H, L, L] scores, so
larger per-chip batches at 8192 run out of memory: the planner says so). The
vocabulary is the preset's, so no tokenizer is needed to plan; to train, point data.* at a corpus
tokenized with that vocabulary.
"""
from research.config import ConfigError, base_config
from research.models import apply_preset

MODELS = ("gpt2-1.5b", "llama3-8b", "llama3-70b")


def get_config(arg: str = "llama3-8b"):
  name = arg or "llama3-8b"
  if name not in MODELS:
    raise ConfigError(f"experiments/pod_plan.py: unknown variant {name!r}; choose one of {', '.join(MODELS)}")
  c = base_config()
  apply_preset(c.model, name)
  c.model.max_seq_len = 8192
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True
  c.model.remat = "full"
  c.train.seq_len = 8192
  c.train.batch_size = 64
  c.train.num_steps = 10000
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 1000
  c.mesh.shape = (1, -1, 1)
  return c
