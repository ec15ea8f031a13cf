"""Published architectures as model-config overrides.

GPT-2 sizes from Radford et al. 2019 (and the released checkpoints: vocab 50257, context 1024).
Llama: TinyLlama-1.1B (Llama 2 architecture, untied head), Llama 3.2 1B, Llama 3 8B / 70B shapes,
and tiny sizes for tests.
"""
from __future__ import annotations

import ml_collections

from research.config.base import model_defaults

_GPT2 = dict(family="gpt2", vocab_size=50257, max_seq_len=1024, mlp_activation="gelu_tanh",
             norm="layernorm", norm_eps=1e-5, use_bias=True, position="learned", tie_embeddings=True,
             num_kv_heads=0, head_dim=0, mlp_dim=0)
_LLAMA = dict(family="llama", mlp_activation="swiglu", norm="rmsnorm", use_bias=False,
              position="rope", tie_embeddings=False, dropout=0.0)

PRESETS: dict[str, dict] = {
    "gpt2-124m": dict(_GPT2, num_layers=12, embed_dim=768, num_heads=12),
    "gpt2-355m": dict(_GPT2, num_layers=24, embed_dim=1024, num_heads=16),
    "gpt2-774m": dict(_GPT2, num_layers=36, embed_dim=1280, num_heads=20),
    "gpt2-1.5b": dict(_GPT2, num_layers=48, embed_dim=1600, num_heads=25),
    "gpt2-tiny": dict(_GPT2, vocab_size=256, max_seq_len=64, num_layers=2, embed_dim=32, num_heads=4),
    # TinyLlama-1.1B: the Llama 2 architecture at 1.1B parameters, untied head.
    "llama-1b": dict(_LLAMA, vocab_size=32000, max_seq_len=2048, num_layers=22, embed_dim=2048,
                     num_heads=32, num_kv_heads=4, mlp_dim=5632, norm_eps=1e-5, rope_theta=10000.0),
    "llama3.2-1b": dict(_LLAMA, vocab_size=128256, max_seq_len=131072, num_layers=16, embed_dim=2048,
                        num_heads=32, num_kv_heads=8, mlp_dim=8192, norm_eps=1e-5, rope_theta=500000.0,
                        tie_embeddings=True),
    "llama3-8b": dict(_LLAMA, vocab_size=128256, max_seq_len=8192, num_layers=32, embed_dim=4096,
                      num_heads=32, num_kv_heads=8, mlp_dim=14336, norm_eps=1e-5, rope_theta=500000.0),
    "llama3-70b": dict(_LLAMA, vocab_size=128256, max_seq_len=8192, num_layers=80, embed_dim=8192,
                       num_heads=64, num_kv_heads=8, mlp_dim=28672, norm_eps=1e-5, rope_theta=500000.0),
    "llama-tiny": dict(_LLAMA, vocab_size=256, max_seq_len=64, num_layers=2, embed_dim=32, num_heads=4,
                       num_kv_heads=2, mlp_dim=64, norm_eps=1e-5, rope_theta=10000.0),
}


def apply_preset(model_cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Overwrites the architecture keys of `model_cfg` with preset `name` (in place; returns it)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
  model_cfg.update(PRESETS[name])
  return model_cfg


def preset_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """A full model config for preset `name`, with keyword overrides applied last."""
  cfg = apply_preset(model_defaults(), name)
  cfg.update(overrides)
  return cfg
