"""Parameter count and training FLOPs per token, from the model config alone (the one place).

FLOPs convention (as PaLM/MaxText): a multiply-add is 2 FLOPs, training is 3x the forward pass.
  matmul term:    6 * N_matmul, where N_matmul counts every weight matrix the token passes through,
                  including the output head (tied or not) but not the embedding lookups, biases or norms.
  attention term: 12 * num_layers * num_heads * head_dim * seq_len, HALVED for causal attention
                  (only the lower triangle of QK^T and AV is useful work), i.e. 6 * layers * H*Dh * L.
"""
from __future__ import annotations

GATED = ("swiglu", "geglu")   # MLPs with a gate projection beside `up` (research/models/activations.py)


def _dims(cfg):
  d, h = cfg.embed_dim, cfg.num_heads
  k = cfg.num_kv_heads or h
  dh = cfg.head_dim or d // h
  f = cfg.mlp_dim or 4 * d
  return d, h, k, dh, f


def _layer_matrix_params(cfg) -> int:
  d, h, k, dh, f = _dims(cfg)
  attn = d * h * dh + 2 * d * k * dh + h * dh * d
  mlp = (3 if cfg.mlp_activation in GATED else 2) * d * f
  return attn + mlp


def count_params(cfg) -> int:
  """Exact number of parameters `DecoderLM(cfg)` creates."""
  d, h, k, dh, f = _dims(cfg)
  total = cfg.vocab_size * d
  if cfg.position == "learned":
    total += cfg.max_seq_len * d
  norm = d * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)
  per_layer = _layer_matrix_params(cfg) + 2 * norm
  if cfg.use_bias:
    per_layer += h * dh + 2 * k * dh + d  # q, k, v, o biases
    per_layer += f * (2 if cfg.mlp_activation in GATED else 1) + d  # up (+gate), down biases
  elif cfg.get("qkv_bias", False):
    per_layer += h * dh + 2 * k * dh      # q, k, v biases alone
  total += cfg.num_layers * per_layer + norm
  if not cfg.tie_embeddings:
    total += d * cfg.vocab_size
  return total


def flops_per_token(cfg, seq_len: int, causal: bool = True) -> float:
  """Training FLOPs (forward + backward) per token at sequence length `seq_len`."""
  d, h, k, dh, f = _dims(cfg)
  n_matmul = cfg.num_layers * _layer_matrix_params(cfg) + d * cfg.vocab_size
  attention = 12 * cfg.num_layers * h * dh * seq_len
  if causal:
    attention /= 2
  return 6.0 * n_matmul + attention
