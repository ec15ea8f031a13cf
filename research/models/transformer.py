"""`DecoderLM`: a pre-norm decoder-only transformer, every switch taken from the model config.

GPT-2: learned positions, LayerNorm with bias, GELU(tanh) MLP, biases, tied embedding.
Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied head (Mistral: plus a
sliding window; Qwen2: plus q/k/v biases). Gemma: RMSNorm times (1 + w), embeddings times sqrt(D),
GeGLU MLP, tied head.

Shape legend: B batch, L length, D embed_dim, F mlp_dim, V vocab.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.models.activations import ACTIVATIONS, GATED
from research.models.attention import CausalSelfAttention
from research.models.layers import DTYPES, Dense, Embedding, Norm, dropout, matmul
from research.models.lora import lora_rng
from research.models.remat import checkpoint_name, remat
from research.sharding import constrain

class MLP(nnx.Module):

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim or 4 * cfg.embed_dim
    common = dict(use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gated = cfg.mlp_activation in GATED
    self.up = Dense((d,), (f,), ("embed",), ("mlp",), init_std=cfg.init_std, **common)
    self.gate = (Dense((d,), (f,), ("embed",), ("mlp",), init_std=cfg.init_std, **common)
                 if self.gated else None)
    self.down = Dense((f,), (d,), ("mlp",), ("embed",), init_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5,
                      **common)
    self.act = GATED[cfg.mlp_activation] if self.gated else ACTIVATIONS[cfg.mlp_activation]

  def __call__(self, x_BxLxD: jax.Array, adapter_rng: jax.Array | None = None) -> jax.Array:
    h_BxLxF = self.up(x_BxLxD, rng=lora_rng(adapter_rng, 4))
    if self.gated:
      h_BxLxF = self.act(self.gate(x_BxLxD, rng=lora_rng(adapter_rng, 5)), h_BxLxF)
    else:
      h_BxLxF = self.act(h_BxLxF)
    h_BxLxF = constrain(h_BxLxF, ("act_batch", "act_length", "act_mlp"))
    return self.down(h_BxLxF, rng=lora_rng(adapter_rng, 6))


class Block(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); dropout on each branch's output."""

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs):
    norm = dict(kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, param_dtype=param_dtype, rngs=rngs,
                scale_offset=cfg.get("norm_scale_offset", 0.0))
    self.attn_norm = Norm(cfg.embed_dim, **norm)
    self.attn = CausalSelfAttention(cfg, dtype, param_dtype, rngs)
    self.mlp_norm = Norm(cfg.embed_dim, **norm)
    self.mlp = MLP(cfg, dtype, param_dtype, rngs)
    self.rate = cfg.dropout

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, rng, cache=None):
    """With `cache` (decoding: a LayerCache) returns (x, the updated cache)."""
    rng_attn, rng_mlp = (None, None) if rng is None else jax.random.split(rng)
    # Adapter dropout keys are folded from `rng` itself (lora_rng), so the split above, and every
    # run without adapters, draws the masks it always did.
    h = self.attn(self.attn_norm(x_BxLxD), positions_BxL, segment_ids_BxL, rng, cache=cache)
    if cache is not None:
      h, cache = h
    h = checkpoint_name(h, "attn_out")
    x_BxLxD = x_BxLxD + dropout(h, self.rate, rng_attn)
    h = checkpoint_name(self.mlp(self.mlp_norm(x_BxLxD), rng), "mlp_out")
    x_BxLxD = x_BxLxD + dropout(h, self.rate, rng_mlp)
    x_BxLxD = constrain(x_BxLxD, ("act_batch", "act_length", "act_embed"))
    return x_BxLxD if cache is None else (x_BxLxD, cache)


def stacked_blocks(cfg, dtype, param_dtype, rngs: nnx.Rngs) -> Block:
  """One Block whose parameters have a leading [num_layers] axis (logical name 'layers'), each
  layer initialised from its own key, for `jax.lax.scan`."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Block(cfg, dtype, param_dtype, rngs)

  blocks = make(rngs)
  for _, variable in nnx.iter_graph(blocks):
    if isinstance(variable, nnx.Param):
      variable.set_metadata("logical_axes", ("layers",) + tuple(variable.get_metadata()["logical_axes"]))
  return blocks


class DecoderLM(nnx.Module):
  """model(tokens_BxL) -> logits_BxLxV (float32).

  `positions` default to 0..L-1; with packed rows pass per-document positions and `segment_ids`
  so that attention stays inside each document. `dropout_rng=None` means evaluation.
  With cfg.scan_layers the blocks are one stacked Block run by `jax.lax.scan` (parameters
  'blocks/...' with a leading layer axis, instead of 'blocks/<i>/...'); cfg.remat wraps each block.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    if cfg.vocab_size <= 0:
      raise ValueError("model.vocab_size must be resolved (> 0) before building the model")
    self.cfg = cfg
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    self.dtype = dtype
    self.embed = Embedding(cfg.vocab_size, cfg.embed_dim, "vocab", cfg.init_std, param_dtype, rngs)
    self.pos_embed = (Embedding(cfg.max_seq_len, cfg.embed_dim, "positions", cfg.init_std, param_dtype, rngs)
                      if cfg.position == "learned" else None)
    if cfg.scan_layers:
      self.blocks = stacked_blocks(cfg, dtype, param_dtype, rngs)
    else:
      self.blocks = nnx.List([Block(cfg, dtype, param_dtype, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = Norm(cfg.embed_dim, cfg.norm, cfg.norm_eps, cfg.use_bias, param_dtype, rngs,
                           scale_offset=cfg.get("norm_scale_offset", 0.0))
    # Gemma: sqrt(D) rounded to the compute dtype first, as transformers casts its normaliser.
    self.embed_multiplier = float(np.float32(cfg.embed_dim ** 0.5)) if cfg.get("embed_scale", False) else None
    self.lm_head = (None if cfg.tie_embeddings else
                    Dense((cfg.embed_dim,), (cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                          init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs))

  def __call__(self, tokens_BxL: jax.Array, *, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None) -> jax.Array:
    x_BxLxD = self.hidden_states(tokens_BxL, positions=positions, segment_ids=segment_ids,
                                 dropout_rng=dropout_rng)
    return self.logits(x_BxLxD)

  def logits(self, x_BxLxD: jax.Array) -> jax.Array:
    """The output head on hidden states ([B, L, D] -> [B, L, V] float32)."""
    # Logits leave the f32 accumulator as f32: rounding them to the compute dtype first cost the
    # softmax precision and a [B, L, V] convert each way.
    w, transposed = self.head_weight()
    equation = "bld,vd->blv" if transposed else self.lm_head.equation
    logits_BxLxV = matmul(equation, x_BxLxD, w, self.dtype, jnp.float32)
    return constrain(logits_BxLxV, ("act_batch", "act_length", "act_vocab"))

  def head_weight(self) -> tuple[jax.Array, bool]:
    """(the output head's weight, transposed): the tied [V, D] table (True) or the [D, V] kernel
    (bias-free). The one place that knows which head the model has."""
    if self.lm_head is None:
      return self.embed.embedding[...], True
    return self.lm_head.kernel[...], False

  def hidden_states(self, tokens_BxL: jax.Array, *, positions: jax.Array | None = None,
                    segment_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, L, D] in the compute dtype: the blocks' output after the final norm (the head's input)."""
    x_BxLxD, positions = self._embed(tokens_BxL, positions, dropout_rng)
    n = self.cfg.num_layers
    rngs = None if dropout_rng is None else jax.random.split(dropout_rng, n + 1)
    x_BxLxD = self._run_blocks(x_BxLxD, positions, segment_ids, None if rngs is None else rngs[:n])
    return self.final_norm(x_BxLxD)

  def cached_hidden_states(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache,
                           rows: jax.Array | None = None, span: int | None = None):
    """Decoding (research/models/kv_cache.py): (hidden states [B, T, D], the updated KVCache).
    `rows` given: a prefill of those cache rows (positions from 0); None: a decode step of every row,
    attending to the cache's first `span` positions (static; None: all)."""
    x_BxTxD, _ = self._embed(tokens_BxT, positions_BxT, None)
    from research.models.kv_cache import KVCache, LayerCache
    if not self.cfg.scan_layers:
      ks, vs = [], []
      for i, block in enumerate(self.blocks):
        x_BxTxD, layer = block(x_BxTxD, positions_BxT, None, None, cache=cache.layer(i, rows, span))
        ks.append(layer.k)
        vs.append(layer.v)
      return self.final_norm(x_BxTxD), KVCache(tuple(ks), tuple(vs))
    graphdef, state = nnx.split(self.blocks)

    def body(x, layer):
      state_i, k_i, v_i = layer
      x, out = nnx.merge(graphdef, state_i)(x, positions_BxT, None, None, cache=LayerCache(k_i, v_i, rows, span))
      return x, (out.k, out.v)

    x_BxTxD, (k, v) = jax.lax.scan(body, x_BxTxD, (state, cache.k, cache.v))
    return self.final_norm(x_BxTxD), KVCache(k, v)

  def _embed(self, tokens_BxL, positions, dropout_rng):
    """(embedded tokens [B, L, D] in the compute dtype, positions [B, L])."""
    b, l = tokens_BxL.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    # Gather from a table whole along D (as FSDP gathers weights anyway): a lookup into a D-sharded
    # table makes XLA's partitioner replicate the result ("involuntary full rematerialization").
    lookup_VxD = constrain(self.embed.embedding[...], ("vocab", None))
    x_BxLxD = jnp.take(lookup_VxD, tokens_BxL, axis=0).astype(self.dtype)
    if self.embed_multiplier is not None:
      x_BxLxD = x_BxLxD * jnp.asarray(self.embed_multiplier, self.dtype)
    if self.pos_embed is not None:
      pos_table = constrain(self.pos_embed.embedding[...], ("positions", None))
      x_BxLxD = x_BxLxD + jnp.take(pos_table, positions, axis=0).astype(self.dtype)
    n = self.cfg.num_layers
    rngs = None if dropout_rng is None else jax.random.split(dropout_rng, n + 1)
    x_BxLxD = dropout(x_BxLxD, self.cfg.dropout, None if rngs is None else rngs[n])
    return constrain(x_BxLxD, ("act_batch", "act_length", "act_embed")), positions

  def _run_blocks(self, x_BxLxD, positions_BxL, segment_ids_BxL, rngs_N):
    """The blocks in order, each under the remat policy; a lax.scan when they are stacked."""

    def apply(graphdef, state, x, rng):
      return nnx.merge(graphdef, state)(x, positions_BxL, segment_ids_BxL, rng)

    policy = self.cfg.remat
    if not self.cfg.scan_layers:
      for i, block in enumerate(self.blocks):
        graphdef, state = nnx.split(block)
        step = remat(lambda s, x, r, g=graphdef: apply(g, s, x, r), policy)
        x_BxLxD = step(state, x_BxLxD, None if rngs_N is None else rngs_N[i])
      return x_BxLxD
    graphdef, state = nnx.split(self.blocks)

    def body(x, layer):
      state_i, rng_i = layer
      return apply(graphdef, state_i, x, rng_i), None

    x_BxLxD, _ = jax.lax.scan(remat(body, policy, prevent_cse=False), x_BxLxD, (state, rngs_N))
    return x_BxLxD
