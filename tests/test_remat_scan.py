"""Remat policies and scan over layers compute exactly what the plain model computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import DecoderLM, preset_config
from research.models.layout import stack_layers, to_layout, unstack_layers
from research.models.remat import POLICIES
from research.tasks.lm import loss_sums


def _batch(vocab, b=4, l=16, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, l + 1)).astype(np.int32)
  segments = np.repeat(np.array([[1] * (l // 2) + [2] * (l - l // 2)]), b, axis=0).astype(np.int32)
  positions = np.concatenate([np.arange(l // 2), np.arange(l - l // 2)])[None].repeat(b, 0).astype(np.int32)
  return {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
          "weights": jnp.ones((b, l), jnp.float32), "positions": jnp.asarray(positions),
          "segment_ids": jnp.asarray(segments)}


def _loss_and_grads(cfg, params, batch, rng=None):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
  fn = jax.jit(jax.value_and_grad(lambda p: (lambda s: s[0] / s[1])(loss_sums(nnx.merge(graphdef, p), batch, rng))))
  return fn(params)


def _plain(name, **overrides):
  cfg = preset_config(name, num_layers=3, dropout=0.1, **overrides)
  params = nnx.to_pure_dict(nnx.state(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  return cfg, params


def _close(a, b, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5), a, b)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_remat_policies_match_plain(name, policy):
  cfg, params = _plain(name)
  batch, rng = _batch(cfg.vocab_size), jax.random.PRNGKey(3)
  loss, grads = _loss_and_grads(cfg, params, batch, rng)
  cfg_r = preset_config(name, num_layers=3, dropout=0.1, remat=policy)
  loss_r, grads_r = _loss_and_grads(cfg_r, params, batch, rng)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  _close(grads_r, grads)


@pytest.mark.parametrize("remat", ["none", "full", "dots_saveable"])
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_scan_matches_plain(name, remat):
  cfg, params = _plain(name)
  batch, rng = _batch(cfg.vocab_size), jax.random.PRNGKey(3)
  loss, grads = _loss_and_grads(cfg, params, batch, rng)
  cfg_s = preset_config(name, num_layers=3, dropout=0.1, scan_layers=True, remat=remat)
  stacked = stack_layers(params)
  shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(DecoderLM(cfg_s, rngs=nnx.Rngs(0)), nnx.Param)))
  assert jax.tree.map(jnp.shape, stacked) == shapes  # the stacked layout is what the scan model builds
  loss_s, grads_s = _loss_and_grads(cfg_s, stacked, batch, rng)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  _close(unstack_layers(grads_s), grads)


def test_layout_round_trip():
  _, params = _plain("llama-tiny")
  back = to_layout(to_layout(params, True), False)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  _close(back, params, atol=0)
  assert to_layout(params, False) is params


def _lowered_grad(cfg, batch):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
  params = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  return jax.jit(jax.grad(lambda p, b: loss_sums(nnx.merge(graphdef, p), b, None)[0])).lower(params, batch)


def _train_step_memory(cfg, batch):
  return _lowered_grad(cfg, batch).compile().memory_analysis().temp_size_in_bytes


def test_remat_needs_less_temporary_memory():
  # With scan_layers (XLA CPU hoists the recomputation of unrolled layers, so there remat saves
  # nothing on CPU; GPU/TPU schedulers are memory-aware).
  batch = _batch(256, b=8, l=128)
  kw = dict(num_layers=6, vocab_size=256, max_seq_len=128, scan_layers=True)
  plain = _train_step_memory(preset_config("gpt2-tiny", **kw), batch)
  dots = _train_step_memory(preset_config("gpt2-tiny", remat="dots_saveable", **kw), batch)
  full = _train_step_memory(preset_config("gpt2-tiny", remat="full", **kw), batch)
  assert full < dots < 0.8 * plain, (full, dots, plain)
  assert full < 0.4 * plain, (full, plain)


def test_scan_program_does_not_grow_with_depth():
  """The scan really replaces unrolled layers: the lowered program of 24 scanned layers is as long as
  that of 2, while unrolled layers each add their ops. (What that does to compile time is measured
  by `scripts/benchmark.py --mode=compile`, not asserted here.)"""
  batch = _batch(256, b=2, l=16)
  program = {(layers, scan): _lowered_grad(preset_config("llama-tiny", num_layers=layers, scan_layers=scan),
                                           batch).as_text()
             for layers, scan in ((2, True), (24, True), (2, False), (4, False))}
  lines = {k: text.count("\n") for k, text in program.items()}
  assert "stablehlo.while" in program[(2, True)]
  assert lines[(24, True)] == lines[(2, True)], lines
  assert lines[(4, False)] > 1.5 * lines[(2, False)], lines
