"""Llama, Mistral, Qwen2 and Gemma: one tensor layout (model.layers.<i>.self_attn.q_proj, ...), four
config mappings.

What each adds to Llama (transformers 5.23's modeling_*.py):
  llama    attention_bias (q, k, v, o) and mlp_bias, taken together as model.use_bias
  mistral  sliding_window (every layer; ignored when it covers max_position_embeddings)
  qwen2    q/k/v biases alone (model.qkv_bias); a sliding window only when every layer has it
  gemma    RMSNorm times (1 + w), embeddings times sqrt(hidden_size), GeGLU (gelu_pytorch_tanh), tied
           head, head_dim independent of hidden_size
RoPE ('default' or Llama 3.1's 'llama3') works the same way in all four. HF's q_proj/k_proj rows are
already in the rotate-half order our RoPE uses, so no permutation is needed (the parity tests check it).
"""
from __future__ import annotations


from research.hf.config_map import HFConfig, common_model_keys, refuse, rope_from_hf, rope_to_hf
from research.hf.tensor_map import Tensor, ignoring, linear, output_head, same

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "gemma": "GemmaForCausalLM"}
_TIED_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "gemma": True}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu", "gelu_new")   # Gemma's config says gelu for the tanh GELU


def dims(cfg) -> tuple[int, int, int, int, int]:
  d, h = cfg.embed_dim, cfg.num_heads
  return d, h, cfg.num_kv_heads or h, cfg.head_dim or d // h, cfg.mlp_dim or 4 * d


# ----------------------------------------------------------------------------------------------
# config.json -> model.*


def from_hf(c: HFConfig, family: str) -> dict:
  d, h = c.req("hidden_size"), c.req("num_attention_heads")
  kv = c.opt("num_key_value_heads", h, int)
  head_dim = c.opt("head_dim", d // h, int)
  if kv <= 0 or h % kv:
    raise c.fail("num_key_value_heads", f"must divide num_attention_heads={h}")
  max_len = c.req("max_position_embeddings")
  out = dict(common_model_keys(family), vocab_size=c.req("vocab_size"), max_seq_len=max_len,
             num_layers=c.req("num_hidden_layers"), embed_dim=d, num_heads=h,
             num_kv_heads=0 if kv == h else kv, head_dim=0 if head_dim * h == d else head_dim,
             mlp_dim=c.req("intermediate_size"), norm="rmsnorm", norm_eps=c.opt("rms_norm_eps", 1e-6, float),
             position="rope", tie_embeddings=c.opt("tie_word_embeddings", _TIED_DEFAULT[family], bool),
             use_bias=False, qkv_bias=False, norm_scale_offset=0.0, embed_scale=False, sliding_window=0,
             mlp_activation="swiglu", init_std=c.opt("initializer_range", 0.02, float))
  out.update(rope_from_hf(c))
  if family == "gemma":
    key = "hidden_activation" if c.has("hidden_activation") else "hidden_act"
    if c.opt(key, "gelu_pytorch_tanh", str) not in _GELU_TANH:
      raise c.fail(key, f"Gemma's GeGLU is supported with {', '.join(_GELU_TANH)} (the tanh GELU)")
    if c.opt("attention_bias", False, bool):
      raise c.fail("attention_bias", "Gemma with attention biases is not supported (its MLP has none)")
    if c.opt("use_bidirectional_attention", False, bool):
      raise c.fail("use_bidirectional_attention", "only causal attention is supported")
    out.update(mlp_activation="geglu", norm_scale_offset=1.0, embed_scale=True)
  elif c.opt("hidden_act", "silu", str) != "silu":
    raise c.fail("hidden_act", "the gated MLP is supported with silu (SwiGLU)")
  if family == "llama":
    attention_bias, mlp_bias = c.opt("attention_bias", False, bool), c.opt("mlp_bias", False, bool)
    if attention_bias != mlp_bias:
      key = "attention_bias" if attention_bias else "mlp_bias"
      raise c.fail(key, "biases are supported on attention and MLP together (attention_bias = mlp_bias)")
    out["use_bias"] = attention_bias
  if family == "qwen2":
    out["qkv_bias"] = True
    out["sliding_window"] = _qwen2_window(c, out["num_layers"], max_len)
  if family == "mistral":
    window = c.opt("sliding_window", 0, int)
    out["sliding_window"] = window if 0 < window < max_len else 0
  return out


def _qwen2_window(c: HFConfig, layers: int, max_len: int) -> int:
  window = c.opt("sliding_window", 0, int) if c.opt("use_sliding_window", False, bool) else 0
  if not window:
    return 0
  types = c.values.get("layer_types") or ["sliding_attention" if i >= c.opt("max_window_layers", 28, int)
                                          else "full_attention" for i in range(layers)]
  if len(set(types)) > 1:
    key = "layer_types" if c.has("layer_types") else "max_window_layers"
    raise c.fail(key, "a sliding window on some layers only is not supported (all layers or none)")
  return window if types[0] == "sliding_attention" and window < max_len else 0


# ----------------------------------------------------------------------------------------------
# model.* -> config.json


def _require(cfg, architecture: str, **wanted) -> None:
  for key, want in wanted.items():
    value = cfg.get(key)
    if value != want:
      raise refuse(key, value, architecture, f"it needs {key}={want!r}")


def to_hf(cfg, family: str) -> dict:
  arch = ARCHITECTURES[family]
  _require(cfg, arch, position="rope", norm="rmsnorm")
  gemma = family == "gemma"
  _require(cfg, arch, mlp_activation="geglu" if gemma else "swiglu",
           norm_scale_offset=1.0 if gemma else 0.0, embed_scale=gemma)
  if family == "qwen2":
    _require(cfg, arch, use_bias=False, qkv_bias=True)
  elif family == "llama":
    if cfg.qkv_bias and not cfg.use_bias:
      raise refuse("qkv_bias", True, arch, "its attention_bias adds an output bias; Qwen2 has q/k/v biases alone")
  else:
    _require(cfg, arch, use_bias=False, qkv_bias=False)
  if family in ("llama", "gemma"):
    _require(cfg, arch, sliding_window=0)
  d, h, k, dh, f = dims(cfg)
  out = dict(architectures=[arch], model_type=family, vocab_size=cfg.vocab_size, hidden_size=d,
             intermediate_size=f, num_hidden_layers=cfg.num_layers, num_attention_heads=h,
             num_key_value_heads=k, head_dim=dh, max_position_embeddings=cfg.max_seq_len,
             rms_norm_eps=cfg.norm_eps, hidden_act="gelu_pytorch_tanh" if gemma else "silu",
             tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0, initializer_range=cfg.init_std,
             use_cache=True, **rope_to_hf(cfg))
  window = cfg.get("sliding_window", 0)
  if family == "llama":
    out.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
  elif family == "mistral":
    out.update(sliding_window=window or None)
  elif family == "qwen2":
    out.update(use_sliding_window=bool(window), sliding_window=window or None,
               max_window_layers=0 if window else cfg.num_layers,
               layer_types=["sliding_attention" if window else "full_attention"] * cfg.num_layers)
  else:
    out.update(hidden_activation="gelu_pytorch_tanh", attention_bias=False)
  return out


# ----------------------------------------------------------------------------------------------
# tensors


def tensors(cfg) -> list[Tensor]:
  d, h, k, dh, f = dims(cfg)
  v = cfg.vocab_size
  qkv_bias, all_bias = cfg.use_bias or cfg.get("qkv_bias", False), cfg.use_bias
  out = [same("model.embed_tokens.weight", ("embed", "embedding"), (v, d), (v, d))]
  for i in range(cfg.num_layers):
    b, pre = ("blocks", i), f"model.layers.{i}."
    attn, mlp = b + ("attn",), b + ("mlp",)
    out.append(same(pre + "input_layernorm.weight", b + ("attn_norm", "scale"), (d,)))
    for name, heads in (("q", h), ("k", k), ("v", k)):
      out.append(linear(pre + f"self_attn.{name}_proj.weight", attn + (name, "kernel"), (d, heads, dh), (heads * dh, d)))
      if qkv_bias:
        out.append(same(pre + f"self_attn.{name}_proj.bias", attn + (name, "bias"), (heads, dh)))
    out.append(linear(pre + "self_attn.o_proj.weight", attn + ("o", "kernel"), (h, dh, d), (d, h * dh)))
    if all_bias:
      out.append(same(pre + "self_attn.o_proj.bias", attn + ("o", "bias"), (d,)))
    out.append(same(pre + "post_attention_layernorm.weight", b + ("mlp_norm", "scale"), (d,)))
    for name, shape in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
      out.append(linear(pre + f"mlp.{name}_proj.weight", mlp + (name, "kernel"), shape, shape[::-1]))
      if all_bias:
        out.append(same(pre + f"mlp.{name}_proj.bias", mlp + (name, "bias"), (shape[1],)))
  out.append(same("model.norm.weight", ("final_norm", "scale"), (d,)))
  return out + output_head(cfg, d, v)


def ignored(cfg):
  """Tensors a file may hold that no parameter reads: RoPE buffers of old checkpoints, the tied head."""
  return ignoring(r"(^|\.)rotary_emb\.inv_freq$", cfg)
