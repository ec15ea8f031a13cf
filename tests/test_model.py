"""The decoder LM: shapes, causality, exact parameter counts of the presets, FLOPs by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import PRESETS, DecoderLM, count_params, flops_per_token, preset_config


def _model(name, **overrides):
  return DecoderLM(preset_config(name, **overrides), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_forward_shape_and_dtype(name):
  model = _model(name)
  tokens = jnp.arange(2 * 16, dtype=jnp.int32).reshape(2, 16) % 256
  logits = model(tokens)
  assert logits.shape == (2, 16, 256)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_causal(name, dtype):
  """Changing token t never changes the logits before t."""
  model = _model(name, dtype=dtype)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 20), 0, 256)
  base = np.asarray(model(tokens))
  for t in (5, 13, 19):
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % 256)
    out = np.asarray(model(changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.abs(out[:, t:] - base[:, t:]).max() > 0


def test_gpt2_124m_has_exactly_124439808_parameters():
  cfg = preset_config("gpt2-124m")
  assert (cfg.vocab_size, cfg.max_seq_len) == (50257, 1024)
  model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert actual == 124_439_808
  assert count_params(cfg) == 124_439_808


# Published totals (tied/untied as released), checked against the analytic count and the real model.
PUBLISHED = {"gpt2-355m": 354_823_168, "gpt2-774m": 774_030_080, "gpt2-1.5b": 1_557_611_200,
             "llama-1b": 1_100_048_384, "llama3.2-1b": 1_235_814_400, "llama3-8b": 8_030_261_248,
             "llama3-70b": 70_553_706_496}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_counts_match_model(name):
  cfg = preset_config(name)
  model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert actual == count_params(cfg)
  if name in PUBLISHED:
    assert actual == PUBLISHED[name]


def test_llama_has_no_biases_and_untied_head():
  model = nnx.eval_shape(lambda: DecoderLM(preset_config("llama-tiny"), rngs=nnx.Rngs(0)))
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  assert not any(p.endswith("bias") for p in paths)
  assert "lm_head/kernel" in paths
  assert not any(p.startswith("pos_embed") for p in paths)


def test_flops_per_token_by_hand():
  # 2 layers, D=32, H=4, Dh=8, F=128, V=256, L=64, GPT-2 style.
  cfg = preset_config("gpt2-tiny")
  per_layer = 4 * 32 * 32 + 2 * 32 * 128      # q, k, v, o + up, down
  n_matmul = 2 * per_layer + 32 * 256         # + output head
  attention = 12 * 2 * 4 * 8 * 64 / 2         # QK^T and AV, fwd+bwd, causal half
  assert flops_per_token(cfg, 64) == 6 * n_matmul + attention
  from research.models import counting   # the registry's entry point counts causal attention only
  assert counting.flops_per_token(cfg, 64, causal=False) == 6 * n_matmul + 2 * attention


def test_measured_peak_is_the_best_size(monkeypatch):
  from research.train import mfu
  asked = []
  rates = {64: 2.0, 128: 1.0}   # the smaller size is the faster one, as 1024^3 is on a Zen 4 CPU
  monkeypatch.setattr(mfu, "_measure", lambda devices, dtype, n, repeats: asked.append(n) or rates[n])
  assert mfu.measure_matmul_peak(jax.devices()[:2], "bfloat16", sizes=(64, 128)) == 2.0
  assert sorted(asked) == [64, 128]


def test_dropout_only_with_rng():
  model = _model("gpt2-tiny", dropout=0.5)
  tokens = jnp.zeros((1, 8), jnp.int32)
  a, b = model(tokens), model(tokens)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = model(tokens, dropout_rng=jax.random.PRNGKey(0))
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_segments_isolate_documents(name):
  """With segment ids and restarted positions, a packed row equals each document run alone."""
  model = _model(name)
  doc_a = jax.random.randint(jax.random.PRNGKey(2), (1, 7), 0, 256)
  doc_b = jax.random.randint(jax.random.PRNGKey(3), (1, 9), 0, 256)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segments = jnp.asarray([[1] * 7 + [2] * 9])
  positions = jnp.asarray([list(range(7)) + list(range(9))])
  out = np.asarray(model(packed, positions=positions, segment_ids=segments))
  np.testing.assert_allclose(out[:, :7], np.asarray(model(doc_a)), atol=1e-5)
  np.testing.assert_allclose(out[:, 7:], np.asarray(model(doc_b)), atol=1e-5)


@pytest.mark.parametrize("equation, x_shape, w_shape", [
    ("...a,abc->...bc", (2, 5, 16), (16, 4, 8)),    # Dense to heads
    ("...a,abc->...bc", (1, 5, 16), (16, 4, 8)),    # odd token count: the unsplit weight gradient
    ("...a,abc->...bc", (2, 5, 64), (64, 2, 8)),    # K > M: dy is the transposed operand
    ("...ab,abc->...c", (2, 5, 4, 8), (4, 8, 16)),  # Dense from heads
    ("bld,vd->blv", (2, 5, 16), (24, 16)),          # tied output head
    ("bld,vd->blv", (2, 5, 16), (8, 16)),           # tied head narrower than D: dy is transposed
])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_gradients_match_float32_autodiff(equation, x_shape, w_shape, dtype, with_bias):
  """The matmul's hand-written backward pass (and the bias added in it) against autodiff of an f32 einsum."""
  from research.models.layers import matmul
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), w_shape)
  n_in = len(equation.split(",")[0]) - 3                     # x's contracted axes after '...'
  b_shape = w_shape[:1] if equation == "bld,vd->blv" else w_shape[n_in:]
  b = jax.random.normal(jax.random.PRNGKey(2), b_shape) if with_bias else None
  f = lambda x, w, b: (matmul(equation, x, w, dtype, bias=b).astype(jnp.float32) ** 2).sum()
  ref = lambda x, w, b: ((jnp.einsum(equation, x, w) + (0 if b is None else b)) ** 2).sum()
  argnums = (0, 1, 2) if with_bias else (0, 1)
  for got, want in zip(jax.jit(jax.grad(f, argnums))(x, w, b), jax.grad(ref, argnums)(x, w, b)):
    assert got.shape == want.shape
    tol = 0.05 if dtype == jnp.bfloat16 else 1e-4
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("name", ["gelu_tanh", "gelu", "relu", "swiglu", "geglu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_activations_match_float32_autodiff(name, dtype):
  """The f32 activations (value and hand-routed backward) against jax.nn autodiff in float32."""
  from research.models.activations import ACTIVATIONS, geglu, swiglu
  ours, ref = {
      "gelu_tanh": (ACTIVATIONS["gelu_tanh"], lambda x: jax.nn.gelu(x, approximate=True)),
      "gelu": (ACTIVATIONS["gelu"], lambda x: jax.nn.gelu(x, approximate=False)),
      "relu": (ACTIVATIONS["relu"], jax.nn.relu),
      "swiglu": (swiglu, lambda g, u: jax.nn.silu(g) * u),
      "geglu": (geglu, lambda g, u: jax.nn.gelu(g, approximate=True) * u),
  }[name]
  rng = np.random.default_rng(0)
  gated = name in ("swiglu", "geglu")
  xs = [jnp.asarray(rng.normal(size=(4, 6, 32)) * 3, dtype) for _ in range(2 if gated else 1)]
  w = jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.float32)
  loss = lambda f: lambda *a: (f(*a).astype(jnp.float32) * w).sum()
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  assert ours(*xs).dtype == dtype
  np.testing.assert_allclose(np.asarray(ours(*xs), np.float32),
                             np.asarray(ref(*(x.astype(jnp.float32) for x in xs)).astype(dtype), np.float32),
                             rtol=tol, atol=tol)
  argnums = tuple(range(len(xs)))
  got = jax.jit(jax.grad(loss(ours), argnums))(*xs)
  want = jax.grad(loss(ref), argnums)(*(x.astype(jnp.float32) for x in xs))
  for g, r in zip(got, want):
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), rtol=tol, atol=tol * np.abs(r).max())


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_causal_attention_matches_jax_reference(kv_heads):
  from research.models.attention import causal_attention
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 12, kv_heads, 8)), jnp.float32) for _ in range(2))
  seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  mask = seg[:, None, :, None] == seg[:, None, None, :]
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")
  np.testing.assert_allclose(causal_attention(q, k, v, seg), ref, atol=1e-5)
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(causal_attention(q, k, v), ref, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("loss", ["weighted", "squared"])
def test_causal_attention_gradients_match_jax_reference(kv_heads, dtype, loss):
  """The written-out backward pass (attention_xla._attend_bwd) against autodiff of JAX's attention.

  'squared' makes the output's cotangent an elementwise function of the output, which XLA CPU once
  laid out transposed for the bf16 dP matmul: a DotThunk 'BF16 x BF16 = F32' crash (not a wrong
  number), fixed by the barrier on d_out in _attend_bwd."""
  from research.models.attention import causal_attention
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(2, 12, kv_heads, 8)), dtype) for _ in range(2))
  w = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), jnp.float32)
  seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  mask = seg[:, None, :, None] == seg[:, None, None, :]
  reduce = (lambda out: (out * w).sum()) if loss == "weighted" else (lambda out: (out ** 2).sum())
  ours = lambda q, k, v: reduce(causal_attention(q, k, v, seg).astype(jnp.float32))
  ref = lambda q, k, v: reduce(jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                                            implementation="xla"))
  tol = 1e-5 if dtype == jnp.float32 else 0.05
  f32 = lambda *xs: [x.astype(jnp.float32) for x in xs]
  # Under jit, as in training: layouts (and the crash above) are a compile-time matter.
  got_grads = jax.jit(jax.grad(ours, (0, 1, 2)))(q, k, v)
  for got, want in zip(got_grads, jax.grad(ref, (0, 1, 2))(*f32(q, k, v))):
    assert got.dtype == dtype and got.shape == want.shape
    got = got.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol * np.abs(want).max())


# ----------------------------------------------------------------------------------------------
# Switches for imported architectures (Qwen2, Gemma, Mistral, Llama 3.1), all off by default.

_SWITCHES = {"qkv_bias": dict(qkv_bias=True), "norm_scale_offset": dict(norm_scale_offset=1.0),
             "embed_scale": dict(embed_scale=True), "geglu": dict(mlp_activation="geglu"),
             "geglu_biases": dict(mlp_activation="geglu", use_bias=True),
             "llama3_rope": dict(rope_scaling="llama3", rope_original_max_len=16, rope_scaling_factor=4.0),
             "sliding_window": dict(sliding_window=5)}


@pytest.mark.parametrize("switch", sorted(_SWITCHES))
def test_switch_counts_match_model(switch):
  cfg = preset_config("llama-tiny", **_SWITCHES[switch])
  model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
  paths = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert sum(int(np.prod(s)) for s in paths.values()) == count_params(cfg)
  if switch == "qkv_bias":
    assert {p.rsplit("/", 2)[-2] for p in paths if p.endswith("bias")} == {"q", "k", "v"}


def test_switches_off_by_default():
  from research.config.base import model_defaults
  m = model_defaults()
  assert (m.qkv_bias, m.norm_scale_offset, m.embed_scale, m.rope_scaling, m.sliding_window) == (
      False, 0.0, False, "none", 0)


def test_norm_scale_offset_starts_as_identity_scale():
  """(1 + w) norms start with w = 0, so the model starts as the plain one (scales of 1)."""
  plain, offset = _model("llama-tiny"), _model("llama-tiny", norm_scale_offset=1.0)
  assert float(jnp.abs(offset.final_norm.scale[...]).max()) == 0.0
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 10), 0, 256)
  np.testing.assert_allclose(np.asarray(offset(tokens)), np.asarray(plain(tokens)), atol=1e-6)


def test_embed_scale_multiplies_embeddings_by_sqrt_d():
  plain, scaled = _model("llama-tiny"), _model("llama-tiny", embed_scale=True)
  tokens = jnp.asarray([[3, 5, 7]])
  plain.embed.embedding[...] = plain.embed.embedding[...] * np.float32(32 ** 0.5)
  np.testing.assert_allclose(np.asarray(scaled(tokens)), np.asarray(plain(tokens)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 12])
def test_sliding_window_attention_matches_jax_reference(window):
  from research.models.attention import causal_attention
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32) for _ in range(2))
  seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  mask = seg[:, None, :, None] == seg[:, None, None, :]
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=(window - 1, 0),
                                     implementation="xla")
  np.testing.assert_allclose(causal_attention(q, k, v, seg, sliding_window=window), ref, atol=1e-5)


def test_sliding_window_limits_what_a_token_sees():
  model = _model("llama-tiny", sliding_window=4)
  tokens = jax.random.randint(jax.random.PRNGKey(5), (1, 12), 0, 256)
  base = np.asarray(model(tokens))
  changed = np.asarray(model(tokens.at[:, 2].set((tokens[:, 2] + 1) % 256)))
  # token 2 reaches position 5 directly, and position 5+3 through two layers; nothing later
  assert np.abs(changed[:, 2:9] - base[:, 2:9]).max() > 0
  np.testing.assert_array_equal(changed[:, 9:], base[:, 9:])


def test_gemma_pieces_match_transformers():
  """GeGLU (gelu_pytorch_tanh gate), RMSNorm times (1 + w), sqrt(D) embeddings, in float32 and bf16."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers.models.gemma import modeling_gemma as hf
  from research.models.activations import geglu
  from research.models.layers import Norm
  rng = np.random.default_rng(0)
  gate, up = (rng.normal(size=(3, 5, 16)).astype(np.float32) * 3 for _ in range(2))
  want = torch.nn.functional.gelu(torch.from_numpy(gate), approximate="tanh") * torch.from_numpy(up)
  np.testing.assert_allclose(np.asarray(geglu(jnp.asarray(gate), jnp.asarray(up))), want.numpy(), atol=1e-5)
  x, w = rng.normal(size=(3, 5, 16)).astype(np.float32), rng.normal(size=(16,)).astype(np.float32) * 0.3
  ref = hf.GemmaRMSNorm(16, eps=1e-6)
  ref.weight.data = torch.from_numpy(w)
  ours = Norm(16, "rmsnorm", 1e-6, False, jnp.float32, nnx.Rngs(0), scale_offset=1.0)
  ours.scale[...] = jnp.asarray(w)
  for dtype, tdtype, tol in ((jnp.float32, torch.float32, 1e-6), (jnp.bfloat16, torch.bfloat16, 1e-2)):
    got = np.asarray(ours(jnp.asarray(x, dtype)).astype(jnp.float32))
    np.testing.assert_allclose(got, ref(torch.from_numpy(x).to(tdtype)).float().detach().numpy(), atol=tol)
  emb = hf.GemmaTextScaledWordEmbedding(8, 16, padding_idx=0, embed_scale=16 ** 0.5).to(torch.bfloat16)
  model = _model("llama-tiny", vocab_size=8, embed_dim=16, num_heads=2, num_kv_heads=1, embed_scale=True,
                 dtype="bfloat16")
  model.embed.embedding[...] = jnp.asarray(emb.weight.detach().float().numpy())
  tokens = np.asarray([[1, 2, 3]])
  # the embedding's output, before the blocks: sqrt(D) rounded to bf16 as transformers does
  lookup = jnp.take(model.embed.embedding[...], jnp.asarray(tokens), axis=0).astype(jnp.bfloat16)
  ours_embedded = lookup * jnp.asarray(model.embed_multiplier, jnp.bfloat16)
  theirs = emb(torch.from_numpy(tokens)).float().detach().numpy()
  np.testing.assert_array_equal(np.asarray(ours_embedded.astype(jnp.float32)), theirs)


def test_llama3_rope_frequencies_match_transformers():
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from research.models.attention import llama3_inv_freq
  scaling = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                 high_freq_factor=4.0, original_max_position_embeddings=64)
  hf_cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                                    max_position_embeddings=512, rope_parameters=scaling)
  want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
  got = llama3_inv_freq(128, 500000.0, 8.0, 1.0, 4.0, 64)
  plain = llama3_inv_freq(128, 500000.0, 1.0, 1.0, 4.0, 64)
  assert (got < plain).any() and (got == plain).any()   # low frequencies scaled, high ones kept
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
