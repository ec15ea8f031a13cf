"""GPT-2 (transformers' GPT2LMHeadModel): learned positions, LayerNorm, GELU MLP, biases everywhere.

Its weights are Conv1D ([in, out], x @ W: our layout already), and q, k, v are one fused c_attn
([D, 3D], q | k | v along the output axis). A model of ours without biases exports with zero biases
(the same function). The causal-mask buffers old checkpoints carry (h.<i>.attn.bias, .masked_bias)
are skipped.
"""
from __future__ import annotations

import math

from research.hf.config_map import HFConfig, common_model_keys, refuse
from research.hf.tensor_map import Tensor, ignoring, output_head, same

ARCHITECTURE = "GPT2LMHeadModel"
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def from_hf(c: HFConfig, family: str = "gpt2") -> dict:
  d, h = c.req("n_embd"), c.req("n_head")
  if d % h:
    raise c.fail("n_head", f"must divide n_embd={d}")
  activation = c.opt("activation_function", "gelu_new", str)
  if activation not in _ACTIVATIONS:
    raise c.fail("activation_function", f"supported: {', '.join(_ACTIVATIONS)}")
  for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if c.opt(key, want, bool) != want:
      raise c.fail(key, f"only {key}={str(want).lower()} is supported")
  inner = c.opt("n_inner", 0, int)
  max_len = c.req("n_positions") if c.has("n_positions") else c.req("n_ctx")
  return dict(common_model_keys(family), vocab_size=c.req("vocab_size"), max_seq_len=max_len,
              num_layers=c.req("n_layer"), embed_dim=d, num_heads=h, num_kv_heads=0, head_dim=0,
              mlp_dim=0 if inner in (0, 4 * d) else inner, mlp_activation=_ACTIVATIONS[activation],
              norm="layernorm", norm_eps=c.opt("layer_norm_epsilon", 1e-5, float), use_bias=True,
              qkv_bias=False, norm_scale_offset=0.0, embed_scale=False, position="learned",
              rope_scaling="none", sliding_window=0, tie_embeddings=c.opt("tie_word_embeddings", True, bool),
              init_std=c.opt("initializer_range", 0.02, float))


def to_hf(cfg, family: str = "gpt2") -> dict:
  if cfg.position != "learned":
    raise refuse("position", cfg.position, ARCHITECTURE, "it has learned positions; Llama has RoPE")
  for key, want in (("norm", "layernorm"), ("norm_scale_offset", 0.0), ("embed_scale", False),
                    ("sliding_window", 0)):
    if cfg.get(key) != want:
      raise refuse(key, cfg.get(key), ARCHITECTURE, f"it needs {key}={want!r}")
  if cfg.mlp_activation not in _TO_HF_ACTIVATION:
    raise refuse("mlp_activation", cfg.mlp_activation, ARCHITECTURE,
                 f"its MLP is not gated: {', '.join(_TO_HF_ACTIVATION)}")
  d, h = cfg.embed_dim, cfg.num_heads
  if cfg.num_kv_heads not in (0, h):
    raise refuse("num_kv_heads", cfg.num_kv_heads, ARCHITECTURE, "it has no grouped-query attention")
  if cfg.head_dim not in (0, d // h) or d % h:
    raise refuse("head_dim", cfg.head_dim, ARCHITECTURE, "its heads split embed_dim: head_dim = embed_dim / num_heads")
  return dict(architectures=[ARCHITECTURE], model_type="gpt2", vocab_size=cfg.vocab_size,
              n_positions=cfg.max_seq_len, n_embd=d, n_layer=cfg.num_layers, n_head=h,
              n_inner=cfg.mlp_dim or None, activation_function=_TO_HF_ACTIVATION[cfg.mlp_activation],
              layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
              scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
              tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, use_cache=True,
              bos_token_id=None, eos_token_id=None)


def _bias(hf: str, ours, shape: tuple[int, ...], present: bool) -> Tensor:
  return same(hf, ours, shape) if present else Tensor(hf, (math.prod(shape),), ())


def tensors(cfg) -> list[Tensor]:
  d, h, v, n = cfg.embed_dim, cfg.num_heads, cfg.vocab_size, cfg.max_seq_len
  dh, f = d // h, cfg.mlp_dim or 4 * d
  bias, qkv_bias = cfg.use_bias, cfg.use_bias or cfg.get("qkv_bias", False)
  out = [same("transformer.wte.weight", ("embed", "embedding"), (v, d), (v, d)),
         same("transformer.wpe.weight", ("pos_embed", "embedding"), (n, d), (n, d))]
  for i in range(cfg.num_layers):
    b, pre = ("blocks", i), f"transformer.h.{i}."
    attn = b + ("attn",)
    qkv = tuple(attn + (name, "kernel") for name in "qkv")
    out += [same(pre + "ln_1.weight", b + ("attn_norm", "scale"), (d,)),
            _bias(pre + "ln_1.bias", b + ("attn_norm", "bias"), (d,), bias),
            Tensor(pre + "attn.c_attn.weight", (d, 3 * d), qkv, ((d, h, dh),) * 3, axis=1),
            Tensor(pre + "attn.c_attn.bias", (3 * d,), tuple(p[:-1] + ("bias",) for p in qkv), ((h, dh),) * 3)
            if qkv_bias else Tensor(pre + "attn.c_attn.bias", (3 * d,), ()),
            same(pre + "attn.c_proj.weight", attn + ("o", "kernel"), (h, dh, d), (d, d)),
            _bias(pre + "attn.c_proj.bias", attn + ("o", "bias"), (d,), bias),
            same(pre + "ln_2.weight", b + ("mlp_norm", "scale"), (d,)),
            _bias(pre + "ln_2.bias", b + ("mlp_norm", "bias"), (d,), bias),
            same(pre + "mlp.c_fc.weight", b + ("mlp", "up", "kernel"), (d, f), (d, f)),
            _bias(pre + "mlp.c_fc.bias", b + ("mlp", "up", "bias"), (f,), bias),
            same(pre + "mlp.c_proj.weight", b + ("mlp", "down", "kernel"), (f, d), (f, d)),
            _bias(pre + "mlp.c_proj.bias", b + ("mlp", "down", "bias"), (d,), bias)]
  out += [same("transformer.ln_f.weight", ("final_norm", "scale"), (d,)),
          _bias("transformer.ln_f.bias", ("final_norm", "bias"), (d,), bias)]
  return out + output_head(cfg, d, v)


def ignored(cfg):
  """Tensors a file may hold that no parameter reads: the causal-mask buffers, the tied head."""
  return ignoring(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$", cfg)
