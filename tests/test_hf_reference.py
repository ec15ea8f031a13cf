"""`DecoderLM` against Hugging Face's PyTorch reference implementations of GPT-2 and Llama.

Our randomly initialised parameters (perturbed so that norm scales and biases are not the trivial
ones and zeros) are copied into a `transformers` model built from a config made in code (nothing
is downloaded), the same token batch goes through both on the CPU in float32, and the logits must
agree. This checks the architecture switches (learned positions / RoPE rotate-half, LayerNorm /
RMSNorm, GELU(tanh) / SwiGLU, grouped-query attention, tied / untied head) and that our parameter
layout maps onto the published one.

Needs torch and transformers (test-only); skipped without them.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from research.models import DecoderLM, preset_config  # noqa: E402

VOCAB = 97          # not a multiple of anything, so a transposed [D, V] / [V, D] cannot slip through
MAX_LEN = 64
BATCH, LENGTH = 2, 16
INIT_STD = 0.2      # larger than the default 0.02 so that logits are O(1), not nearly uniform
RTOL_OF_SCALE = 1e-4


# ----------------------------------------------------------------------------------------------
# Our side.


def _build_ours(preset: str, seed: int = 0):
  """Our model with float32 compute and params, norm scales / biases perturbed away from 1 / 0."""
  cfg = preset_config(preset, vocab_size=VOCAB, max_seq_len=MAX_LEN, init_std=INIT_STD,
                      dtype="float32", param_dtype="float32", dropout=0.0)
  model = DecoderLM(cfg, rngs=nnx.Rngs(seed))
  _, state = nnx.split(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed + 1)

  def perturb(path, leaf):
    leaf = np.asarray(leaf)
    name = path[-1].key
    if name == "scale":
      return (leaf + 0.2 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    if name == "bias":
      return (leaf + 0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return leaf

  pure = jax.tree_util.tree_map_with_path(perturb, pure)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  params = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.split(model, nnx.Param)[1]))
  return cfg, model, params


def _our_logits(model, tokens: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
  with jax.default_matmul_precision("highest"):
    kw = {} if positions is None else {"positions": jax.numpy.asarray(positions)}
    logits = model(jax.numpy.asarray(tokens), **kw)
  assert logits.dtype == jax.numpy.float32
  return np.asarray(logits)


def _t(x: np.ndarray):
  return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def _load(hf_model, sd: dict) -> None:
  """Loads every tensor of the HF model from `sd` (missing or extra names fail)."""
  expected = set(hf_model.state_dict())
  assert set(sd) == expected, (sorted(expected - set(sd)), sorted(set(sd) - expected))
  for name, value in sd.items():
    assert tuple(value.shape) == tuple(hf_model.state_dict()[name].shape), name
  hf_model.load_state_dict(sd, strict=True)


def _hf_logits(hf_model, tokens: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
  kw = {} if positions is None else {"position_ids": torch.from_numpy(positions.astype(np.int64))}
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)), use_cache=False, **kw)
  return out.logits.float().numpy()


def _tokens(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, size=(BATCH, LENGTH), dtype=np.int32)


def _positions(kind: str) -> np.ndarray | None:
  if kind == "default":
    return None
  # Offset and different per row: exercises the `positions` argument (learned table / RoPE angles).
  return (np.arange(LENGTH, dtype=np.int32)[None, :] + np.array([[3], [MAX_LEN - LENGTH]], np.int32))


def _compare(ours: np.ndarray, ref: np.ndarray) -> float:
  assert ours.shape == ref.shape == (BATCH, LENGTH, VOCAB)
  assert np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))
  scale = float(np.max(np.abs(ref)))
  assert scale > 1.0, f"logits too small to be a meaningful comparison (max |logit| {scale})"
  diff = float(np.max(np.abs(ours - ref)))
  print(f"max |ours - hf| = {diff:.3e}, max |logit| = {scale:.3f}")
  assert diff <= RTOL_OF_SCALE * scale, f"max |ours - hf| = {diff:.3e} (max |logit| {scale:.3f})"
  return diff


# ----------------------------------------------------------------------------------------------
# GPT-2.


def _gpt2_state_dict(cfg, p: dict) -> dict:
  """Ours -> transformers.GPT2LMHeadModel. HF's Conv1D keeps weights as [in, out] (x @ W)."""
  d = cfg.embed_dim
  sd = {
      "transformer.wte.weight": p["embed"]["embedding"],
      "transformer.wpe.weight": p["pos_embed"]["embedding"],
      "transformer.ln_f.weight": p["final_norm"]["scale"],
      "transformer.ln_f.bias": p["final_norm"]["bias"],
      "lm_head.weight": p["embed"]["embedding"],  # tied
  }
  for i in range(cfg.num_layers):
    b, pre = p["blocks"][i], f"transformer.h.{i}."
    attn = b["attn"]
    qkv_w = [attn[n]["kernel"].reshape(d, -1) for n in ("q", "k", "v")]    # [D, H*Dh] each
    qkv_b = [attn[n]["bias"].reshape(-1) for n in ("q", "k", "v")]
    sd.update({
        pre + "ln_1.weight": b["attn_norm"]["scale"],
        pre + "ln_1.bias": b["attn_norm"]["bias"],
        pre + "attn.c_attn.weight": np.concatenate(qkv_w, axis=1),          # [D, 3D], q|k|v
        pre + "attn.c_attn.bias": np.concatenate(qkv_b),
        pre + "attn.c_proj.weight": attn["o"]["kernel"].reshape(-1, d),      # [H*Dh, D]
        pre + "attn.c_proj.bias": attn["o"]["bias"],
        pre + "ln_2.weight": b["mlp_norm"]["scale"],
        pre + "ln_2.bias": b["mlp_norm"]["bias"],
        pre + "mlp.c_fc.weight": b["mlp"]["up"]["kernel"],                   # [D, F]
        pre + "mlp.c_fc.bias": b["mlp"]["up"]["bias"],
        pre + "mlp.c_proj.weight": b["mlp"]["down"]["kernel"],               # [F, D]
        pre + "mlp.c_proj.bias": b["mlp"]["down"]["bias"],
    })
  return {k: _t(v) for k, v in sd.items()}


def _gpt2_reference(cfg):
  hf_cfg = transformers.GPT2Config(
      vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.embed_dim,
      n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=None, activation_function="gelu_new",
      layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, use_cache=False,
      attn_implementation="eager")
  return transformers.GPT2LMHeadModel(hf_cfg).float().eval()


@pytest.mark.parametrize("positions_kind", ["default", "offset"])
def test_gpt2_matches_transformers(positions_kind):
  cfg, model, p = _build_ours("gpt2-tiny")
  assert (cfg.mlp_activation, cfg.norm, cfg.position, cfg.tie_embeddings, cfg.use_bias) == (
      "gelu_tanh", "layernorm", "learned", True, True)
  assert "lm_head" not in p and "pos_embed" in p
  hf = _gpt2_reference(cfg)
  _load(hf, _gpt2_state_dict(cfg, p))
  assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied in HF too
  tokens, positions = _tokens(1), _positions(positions_kind)
  _compare(_our_logits(model, tokens, positions), _hf_logits(hf, tokens, positions))


# ----------------------------------------------------------------------------------------------
# Llama.


def _llama_state_dict(cfg, p: dict) -> dict:
  """Ours -> transformers.LlamaForCausalLM. torch nn.Linear keeps weights as [out, in]."""
  d = cfg.embed_dim
  sd = {
      "model.embed_tokens.weight": p["embed"]["embedding"],
      "model.norm.weight": p["final_norm"]["scale"],
      "lm_head.weight": p["lm_head"]["kernel"].T,                          # [D, V] -> [V, D]
  }
  for i in range(cfg.num_layers):
    b, pre = p["blocks"][i], f"model.layers.{i}."
    attn, mlp = b["attn"], b["mlp"]
    sd.update({
        pre + "input_layernorm.weight": b["attn_norm"]["scale"],
        pre + "self_attn.q_proj.weight": attn["q"]["kernel"].reshape(d, -1).T,   # [H*Dh, D]
        pre + "self_attn.k_proj.weight": attn["k"]["kernel"].reshape(d, -1).T,   # [K*Dh, D]
        pre + "self_attn.v_proj.weight": attn["v"]["kernel"].reshape(d, -1).T,
        pre + "self_attn.o_proj.weight": attn["o"]["kernel"].reshape(-1, d).T,   # [D, H*Dh]
        pre + "post_attention_layernorm.weight": b["mlp_norm"]["scale"],
        pre + "mlp.gate_proj.weight": mlp["gate"]["kernel"].T,                   # silu branch
        pre + "mlp.up_proj.weight": mlp["up"]["kernel"].T,                       # linear branch
        pre + "mlp.down_proj.weight": mlp["down"]["kernel"].T,
    })
  return {k: _t(v) for k, v in sd.items()}


def _llama_reference(cfg):
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.embed_dim // cfg.num_heads,
      max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
      hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
      attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=None, use_cache=False,
      attn_implementation="eager")
  rope = getattr(hf_cfg, "rope_parameters", None) or {"rope_theta": hf_cfg.rope_theta}
  assert rope["rope_theta"] == cfg.rope_theta
  return transformers.LlamaForCausalLM(hf_cfg).float().eval()


@pytest.mark.parametrize("positions_kind", ["default", "offset"])
def test_llama_matches_transformers(positions_kind):
  cfg, model, p = _build_ours("llama-tiny")
  assert (cfg.mlp_activation, cfg.norm, cfg.position, cfg.tie_embeddings, cfg.use_bias) == (
      "swiglu", "rmsnorm", "rope", False, False)
  assert cfg.num_kv_heads == 2 and cfg.num_kv_heads < cfg.num_heads  # grouped-query attention
  assert "lm_head" in p and "pos_embed" not in p
  hf = _llama_reference(cfg)
  _load(hf, _llama_state_dict(cfg, p))
  tokens, positions = _tokens(2), _positions(positions_kind)
  _compare(_our_logits(model, tokens, positions), _hf_logits(hf, tokens, positions))
