"""The jitted train step: gradient accumulation, the non-finite guard, determinism, weight decay mask."""
import jax
import numpy as np
import pytest

from research.sharding import make_mesh
from research.train import weight_decay_mask
from research.train.program import build_program


def _program(cfg, microbatches=1, shape=(-1, 1, 1)):
  cfg.model.vocab_size = 256
  cfg.train.microbatches = microbatches
  cfg.mesh.shape = shape
  return build_program(cfg, make_mesh(shape))


def _batch(seed=0, batch=8, length=32):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 256, (batch, length + 1)).astype(np.int32)
  weights = np.ones((batch, length), np.float32)
  weights[-1, 20:] = 0.0  # some padding, so accumulation must weight by tokens, not by rows
  segments = np.ones((batch, length), np.int32)
  segments[:, length // 2:] = 2  # two packed documents per row
  positions = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])[None].repeat(batch, 0)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights,
          "positions": positions.astype(np.int32), "segment_ids": segments}


@pytest.mark.parametrize("microbatches,loss_chunks", [(2, 0), (4, 0), (2, 4)])
def test_accumulation_equals_large_batch(tiny_cfg, microbatches, loss_chunks):
  tiny_cfg.train.loss_chunks = loss_chunks  # 4: the fused head + loss inside the accumulation loop
  results = []
  for m in (1, microbatches):
    program = _program(tiny_cfg, m, shape=(2, 2, 2))
    state = program.init_state()
    step = program.compile_train_step()
    for i in range(2):
      state, metrics = step(state, program.put_batch(_batch(i)))
    results.append((float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state.params)))
  (l1, g1, p1), (l2, g2, p2) = results
  np.testing.assert_allclose(l2, l1, rtol=1e-6)
  np.testing.assert_allclose(g2, g1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)


def test_nonfinite_update_is_not_applied(tiny_cfg):
  program = _program(tiny_cfg)
  state = program.init_state()
  step = program.compile_train_step()
  before = jax.device_get(state.params)
  bad = _batch()
  bad["weights"][0, 0] = np.nan
  state, metrics = step(state, program.put_batch(bad))
  assert not bool(metrics["finite"])
  assert int(metrics["skipped_steps"]) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
  state, metrics = step(state, program.put_batch(_batch()))
  assert bool(metrics["finite"]) and int(metrics["skipped_steps"]) == 1
  # The schedule counts applied updates only: the first real update uses the step-0 rate.
  assert float(metrics["learning_rate"]) == pytest.approx(float(program.schedule(0)))


def test_same_seed_same_losses_bitwise(tiny_cfg):
  tiny_cfg.model.dropout = 0.1
  runs = []
  for _ in range(2):
    program = _program(tiny_cfg, shape=(2, 2, 2))
    state = program.init_state()
    step = program.compile_train_step()
    losses = []
    for i in range(3):
      state, metrics = step(state, program.put_batch(_batch(i)))
      losses.append(float(metrics["loss"]))
    runs.append(losses)
  assert runs[0] == runs[1]


def test_weight_decay_mask_defaults(tiny_cfg):
  program = _program(tiny_cfg)
  mask = weight_decay_mask(program.abstract_params, tiny_cfg.optimizer.no_decay)
  block = mask["blocks"][0]
  assert block["attn"]["q"]["kernel"] and block["mlp"]["up"]["kernel"]
  assert not block["attn"]["q"]["bias"] and not block["attn_norm"]["scale"] and not block["attn_norm"]["bias"]
  assert not mask["embed"]["embedding"] and not mask["pos_embed"]["embedding"]
  assert not mask["final_norm"]["scale"]
