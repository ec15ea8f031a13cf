"""The GPU speed checks (targets and results: PERFORMANCE.md, GPU), as configs for
`scripts/benchmark.py` (synthetic tokens, so no corpus or tokenizer is needed):

  python scripts/benchmark.py --config=experiments/gpu_bench.py:gpt2-124m --steps=20
  python scripts/benchmark.py --config=experiments/gpu_bench.py:llama-1b --steps=20

Variants: gpt2-124m (GPT-2 small, sequence 1024, vocabulary 50257) and llama-1b (TinyLlama 1.1B:
Llama 2 architecture, sequence 2048, vocabulary 32000). bf16 compute with f32 parameters and Adam
state, cuDNN flash attention (`model.attention_impl=cudnn`, GPU only), no remat, one device. The
batch sizes fit one H100 (80 GB) with room to spare; sweep `--config.train.batch_size` and
`--config.model.remat` for the best tokens/s. The vocabularies are the published ones (50257,
32000); llm.c and nanoGPT pad GPT-2's to 50304 for speed (`--config.model.vocab_size=50304`), and the
MFU counts the vocabulary the run uses. On a CPU, `scripts/train.py --dry_run --target=h100
--target_devices=1 --config.mesh.shape="(1,1,1)"` gives the analytic memory estimate (the tests check
both fit one H100).
"""
from research.config import ConfigError, base_config
from research.models import apply_preset

MODELS = {"gpt2-124m": dict(seq_len=1024, batch_size=32),
          "llama-1b": dict(seq_len=2048, batch_size=8)}


def get_config(arg: str = "gpt2-124m"):
  name = arg or "gpt2-124m"
  if name not in MODELS:
    raise ConfigError(f"experiments/gpu_bench.py: unknown variant {name!r}; choose one of {', '.join(MODELS)}")
  c = base_config()
  apply_preset(c.model, name)
  c.model.dtype = "bfloat16"
  c.model.attention_impl = "cudnn"
  c.model.dropout = 0.0
  c.model.max_seq_len = max(c.model.max_seq_len, MODELS[name]["seq_len"])
  c.train.seq_len = MODELS[name]["seq_len"]
  c.train.batch_size = MODELS[name]["batch_size"]
  c.train.num_steps = 100
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 10
  c.mesh.shape = (-1, 1, 1)
  return c
