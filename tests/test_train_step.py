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


def _batch(program, seed=0, batch=8, length=32):
  """The task's random rows (its batch spec), with padding and two packed documents per row."""
  b = program.task.synthetic_batch(batch, length, np.random.default_rng(seed))
  b["weights"][-1, 20:] = 0.0  # some padding, so accumulation must weight by tokens, not by rows
  b["segment_ids"][:, length // 2:] = 2
  b["positions"] = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])[None].repeat(
      batch, 0).astype(np.int32)
  return b


@pytest.mark.parametrize("microbatches,loss_chunks", [(2, 0), (4, 0), (2, 4)])
def test_accumulation_equals_large_batch(tiny_cfg, microbatches, loss_chunks):
  tiny_cfg.train.loss_chunks = loss_chunks  # 4: the fused head + loss inside the accumulation loop
  results = []
  for m in (1, microbatches):
    program = _program(tiny_cfg, m, shape=(2, 2, 2))
    state = program.init_state()
    step = program.compile_train_step()
    for i in range(2):
      state, metrics = step(state, program.put_batch(_batch(program, i)))
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
  bad = _batch(program)
  bad["weights"][0, 0] = np.nan
  state, metrics = step(state, program.put_batch(bad))
  assert not bool(metrics["finite"])
  assert int(metrics["skipped_steps"]) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
  state, metrics = step(state, program.put_batch(_batch(program)))
  assert bool(metrics["finite"]) and int(metrics["skipped_steps"]) == 1
  # The schedule counts applied updates only: the first real update uses the step-0 rate.
  assert float(metrics["learning_rate"]) == pytest.approx(float(program.schedule(0)))


def test_nonfinite_parameters_from_finite_gradients_are_not_applied(tiny_cfg):
  # 1e39 is a finite Python float but overflows float32: loss and gradients are finite, the update is not.
  tiny_cfg.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=1e39, final_learning_rate=0.0)
  program = _program(tiny_cfg)
  state = program.init_state()
  step = program.compile_train_step()
  before = jax.device_get(state)
  state, metrics = step(state, program.put_batch(_batch(program)))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert not bool(metrics["finite"]) and not bool(metrics["update_finite"])
  assert int(metrics["skipped_steps"]) == 1
  jax.tree.map(np.testing.assert_array_equal, before.params, jax.device_get(state.params))
  jax.tree.map(np.testing.assert_array_equal, before.opt_state, jax.device_get(state.opt_state))


def test_skip_stops_the_run_past_max_consecutive_skips(tiny_cfg, tmp_path, capsys):
  from research.train.trainer import NonFiniteError, train
  tiny_cfg.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=1e39, final_learning_rate=0.0)
  tiny_cfg.train.update(nonfinite="skip", max_consecutive_skips=3, eval_every=0, sample_at_end=0)
  tiny_cfg.checkpoint.update(every_steps=0, save_at_end=False)
  with pytest.raises(NonFiniteError, match=r"^step 4: 4 steps in a row skipped for NaN/Inf, more than "
                     r"train.max_consecutive_skips=3; the run is not learning \(") as err:
    train(tiny_cfg, str(tmp_path), log=lambda *a: None)
  assert "\n" not in str(err.value)
  skipped = [line for line in capsys.readouterr().out.splitlines() if "the update was not applied" in line]
  assert len(skipped) == 3 and "are finite but the updated parameters are not" in skipped[0]


def test_same_seed_same_losses_bitwise(tiny_cfg):
  tiny_cfg.model.dropout = 0.1
  runs = []
  for _ in range(2):
    program = _program(tiny_cfg, shape=(2, 2, 2))
    state = program.init_state()
    step = program.compile_train_step()
    losses = []
    for i in range(3):
      state, metrics = step(state, program.put_batch(_batch(program, i)))
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
