"""Scaling-law fits (research/sweeps/scaling.py) recover known coefficients from synthetic runs."""
import numpy as np
import pytest

from research.sweeps.scaling import CHINCHILLA, LawFit, fit_approach2, fit_approach3

TRUE = LawFit(**CHINCHILLA)


def _widened(interval, value, factor=1.0):
  lo, hi = interval
  pad = factor * (hi - lo)
  return lo - pad <= value <= hi + pad


def test_approach3_recovers_chinchilla_coefficients():
  rng = np.random.default_rng(1)
  n, d = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6)))
  loss = TRUE.loss(n, d) * np.exp(rng.normal(0, 0.002, n.shape))
  fit = fit_approach3(n, d, loss, bootstrap=20, seed=0)
  assert fit.alpha == pytest.approx(0.34, rel=0.03) and fit.beta == pytest.approx(0.28, rel=0.03)
  assert fit.E == pytest.approx(1.69, rel=0.02) and fit.n_exponent == pytest.approx(TRUE.n_exponent, abs=0.01)
  for name in ("alpha", "beta", "E", "n_exponent"):
    lo, hi = fit.intervals[name]
    assert lo <= getattr(fit, name) <= hi and hi > lo
    assert _widened((lo, hi), getattr(TRUE, name)), (name, (lo, hi))
  n_opt, d_opt = fit.optimal(5.76e23)      # Chinchilla's budget: ~70B parameters, ~1.4T tokens
  true_n, true_d = TRUE.optimal(5.76e23)
  assert n_opt == pytest.approx(true_n, rel=0.5) and 6 * n_opt * d_opt == pytest.approx(5.76e23)


def test_approach2_recovers_the_compute_optimal_exponent():
  rng = np.random.default_rng(0)
  compute = np.repeat([1e18, 1e19, 1e20, 1e21], 7)
  n = TRUE.optimal(compute)[0] * np.tile(np.logspace(-1, 1, 7), 4)
  loss = TRUE.loss(n, compute / (6 * n)) * np.exp(rng.normal(0, 0.002, n.shape))
  fit = fit_approach2(compute, n, loss, bootstrap=100)
  lo, hi = fit.intervals["n_exponent"]
  assert lo <= TRUE.n_exponent <= hi and fit.n_exponent == pytest.approx(TRUE.n_exponent, abs=0.02)
  assert fit.d_exponent == pytest.approx(1 - fit.n_exponent) and len(fit.minima) == 4


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="at least 5 runs"):
    fit_approach3([1e7, 1e8], [1e9, 1e9], [3.0, 2.9])
  with pytest.raises(ValueError, match="positive and finite"):
    fit_approach3([1e7] * 5, [1e9] * 5, [3.0, 2.9, np.nan, 2.0, 1.0])
  with pytest.raises(ValueError, match="2 compute budgets"):
    fit_approach2([1e18] * 3, [1e7, 1e8, 1e9], [3.0, 2.5, 2.8])
