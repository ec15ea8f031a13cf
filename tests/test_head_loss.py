"""The fused output head + cross-entropy equals the plain path (f32 logits + optax) in loss and
gradients, forward-only and under jax.grad, for tied and untied heads, any chunk count, and sharded."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research.models import DecoderLM, preset_config
from research.models.layers import matmul
from research.tasks.head_loss import head_cross_entropy
from research.tasks.lm import loss_sums
from tests.test_parallel import run_steps

B, L, D, V = 3, 8, 16, 40


def _inputs(dtype, transposed, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.normal(keys[0], (B, L, D)).astype(dtype)
  w = jax.random.normal(keys[1], (V, D) if transposed else (D, V)) * 0.3
  targets = jax.random.randint(keys[2], (B, L), 0, V)
  weights = (jax.random.uniform(keys[3], (B, L)) > 0.25).astype(jnp.float32)   # some padding
  return x, w, targets, weights


def _plain(x, w, targets, weights, transposed, dtype):
  equation = "bld,vd->blv" if transposed else "...a,ab->...b"
  logits = matmul(equation, x, w, dtype, jnp.float32)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("chunks", [1, 2, 8])
def test_matches_plain_path(dtype, transposed, chunks):
  x, w, targets, weights = _inputs(dtype, transposed)
  fused = lambda x, w: head_cross_entropy(x, w, targets, weights, transposed=transposed, dtype=dtype,
                                          chunks=chunks)
  plain = lambda x, w: _plain(x, w, targets, weights, transposed, dtype)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(jax.jit(fused)(x, w), jax.jit(plain)(x, w), rtol=1e-5)
  # Scaled loss: the backward multiplies the forward's gradients by the cotangent.
  grad = lambda f: jax.jit(jax.value_and_grad(lambda x, w: 0.5 * f(x, w), argnums=(0, 1)))(x, w)
  (loss_f, (dx_f, dw_f)), (loss_p, (dx_p, dw_p)) = grad(fused), grad(plain)
  np.testing.assert_allclose(loss_f, loss_p, rtol=1e-5)
  assert dx_f.dtype == x.dtype and dw_f.dtype == w.dtype and dw_f.shape == w.shape
  np.testing.assert_allclose(np.asarray(dx_f, np.float32), np.asarray(dx_p, np.float32), **tol)
  np.testing.assert_allclose(np.asarray(dw_f), np.asarray(dw_p), **tol)
  assert np.abs(np.asarray(dw_f)).max() > 1e-3     # a real gradient, not zeros on both sides


def test_chunks_must_divide_the_length():
  x, w, targets, weights = _inputs(jnp.float32, True)
  with pytest.raises(ValueError, match=r"train.loss_chunks=3 must be >= 1 and divide the sequence length 8"):
    head_cross_entropy(x, w, targets, weights, transposed=True, dtype=jnp.float32, chunks=3)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_model_loss_and_grads_match_unfused(name):
  """Through the whole model (tied GPT-2 table, untied Llama head): loss_chunks 0 vs 1 vs 4."""
  cfg = preset_config(name, num_layers=2, dropout=0.0)
  model = DecoderLM(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 17)).astype(np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
           "weights": jnp.asarray(rng.random((2, 16)) > 0.2, jnp.float32)}
  results = [jax.jit(jax.value_and_grad(lambda p: loss_sums(nnx.merge(graphdef, p), batch, None, c)[0]))(params)
             for c in (0, 1, 4)]
  for loss, grads in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, results[0][1])


def test_sharded_training_matches(tiny_cfg):
  """Tied head, loss in 4 chunks, on a (data, fsdp, tensor) = (2, 2, 2) mesh: the losses of the
  unfused path on one device."""
  cfg = tiny_cfg
  cfg.mesh.shape, cfg.train.loss_chunks = (1, 1, 1), 0
  reference, _ = run_steps(cfg, jax.devices()[:1])
  cfg.mesh.shape, cfg.train.loss_chunks = (2, 2, 2), 4
  losses, _ = run_steps(cfg, jax.devices())
  np.testing.assert_allclose(losses, reference, rtol=2e-5, atol=2e-5)
