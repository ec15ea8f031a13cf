"""optimizer.l1: the penalty l1 * sum |w| on the chosen parameters, added to the loss by the train
step, checked against a hand computation of its value and of the gradient the update follows."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from research.config import ConfigError
from research.models.layers import Dense
from research.train.optimizer import make_l1_penalty
from research.train.state import TrainState
from research.train.step import make_train_step


class _Linear(nnx.Module):
  def __init__(self):
    self.layer = Dense((3,), (2,), ("embed",), ("mlp",), use_bias=True, init_std=1.0, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))


class _SquaredError:
  """loss_sum = sum of weight * (x W + b - y)^2; weight_sum = sum of weights."""

  def loss(self, model, batch, rng):
    err = model.layer(batch["x"]) - batch["y"]
    w = batch["w"]
    loss_sum = (w[:, None] * err ** 2).sum()
    return loss_sum, w.sum(), {}


def _opt_cfg(l1, patterns=()):
  return ml_collections.ConfigDict({"l1": l1, "l1_patterns": patterns, "no_decay": (r"/bias$",)})


def test_l1_penalty_value_and_gradient_in_the_step():
  model = _Linear()
  graphdef, state = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(state)
  params["layer"]["kernel"] = params["layer"]["kernel"].at[0, 0].set(0.0)  # sign(0) = 0: no pull
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
           "w": jnp.asarray([1.0, 2.0, 0.5, 0.0])}
  coeff, kernel = 0.01, np.asarray(params["layer"]["kernel"])

  def step_with(l1):
    penalty = make_l1_penalty(_opt_cfg(l1), params)  # default: where weight decay applies (the kernel)
    step = make_train_step(graphdef, optax.sgd(1.0), optax.constant_schedule(1.0), _SquaredError(), l1_penalty=penalty)
    s = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.sgd(1.0).init(params),
                   rng=jax.random.PRNGKey(0), skipped_steps=jnp.zeros((), jnp.int32))
    new, metrics = jax.jit(step)(s, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new.params)  # sgd(1): p - grad
    return grads, metrics

  plain, plain_metrics = step_with(0.0)
  penalised, metrics = step_with(coeff)
  assert "l1_penalty" not in plain_metrics
  assert float(metrics["l1_penalty"]) == pytest.approx(coeff * np.abs(kernel).sum(), rel=1e-6)
  assert float(metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-6)  # the data loss
  # the gradient of mean loss + l1 * sum |kernel|: plus l1 * sign(w) on the kernel, nothing on the bias
  np.testing.assert_allclose(penalised["layer"]["kernel"] - plain["layer"]["kernel"], coeff * np.sign(kernel),
                             atol=1e-6)
  np.testing.assert_allclose(penalised["layer"]["bias"], plain["layer"]["bias"], atol=1e-7)
  # the data gradient is the weighted mean over the batch (the step divides by the weight sum)
  x, y, w = (np.asarray(batch[k], np.float64) for k in ("x", "y", "w"))
  err = x @ kernel + np.asarray(params["layer"]["bias"]) - y
  np.testing.assert_allclose(plain["layer"]["kernel"], x.T @ (2 * w[:, None] * err) / w.sum(), rtol=1e-4, atol=1e-6)


def test_l1_patterns_choose_the_parameters_and_a_typo_is_an_error():
  params = nnx.to_pure_dict(nnx.state(_Linear(), nnx.Param))
  value, grads = make_l1_penalty(_opt_cfg(0.5, (r"bias$",)), params)(params)
  assert float(value) == 0.0 and not np.asarray(grads["layer"]["kernel"]).any()  # the bias starts at zero
  assert make_l1_penalty(_opt_cfg(0.0), params) is None
  with pytest.raises(ConfigError, match=r"optimizer.l1_patterns: '\^head/' matches no trainable parameter"):
    make_l1_penalty(_opt_cfg(0.5, (r"^head/",)), params)
