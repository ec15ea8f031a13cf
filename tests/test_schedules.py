"""Learning-rate schedules at chosen steps."""
import pytest

from research.config import base_config
from research.train import make_schedule


def _opt(kind, **kw):
  c = base_config().optimizer
  c.schedule, c.learning_rate, c.final_learning_rate, c.warmup_steps = kind, 1.0, 0.1, 10
  c.update(kw)
  return c


def _at(schedule, *steps):
  return [float(schedule(s)) for s in steps]


def test_warmup_is_linear_from_zero():
  for kind in ("warmup_cosine", "warmup_linear", "wsd", "constant"):
    s = make_schedule(_opt(kind), 110)
    assert _at(s, 0, 5, 10) == pytest.approx([0.0, 0.5, 1.0])


def test_cosine():
  s = make_schedule(_opt("warmup_cosine"), 110)
  # halfway through the 100 decay steps: final + (peak - final) / 2
  assert _at(s, 60, 110, 200) == pytest.approx([0.55, 0.1, 0.1], abs=1e-6)


def test_linear():
  s = make_schedule(_opt("warmup_linear"), 110)
  assert _at(s, 35, 60, 110, 150) == pytest.approx([0.775, 0.55, 0.1, 0.1], abs=1e-6)


def test_wsd_holds_then_decays():
  s = make_schedule(_opt("wsd", wsd_decay_fraction=0.2), 110)
  # stable until step 90 (the last 20 of 100 post-warmup steps decay), then linear to 0.1 at 110
  assert _at(s, 50, 90, 100, 110, 120) == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1], abs=1e-6)


def test_constant_and_decay_steps():
  assert _at(make_schedule(_opt("constant"), 110), 50, 1000) == pytest.approx([1.0, 1.0])
  s = make_schedule(_opt("warmup_linear", decay_steps=60), 110)
  assert _at(s, 35, 60, 100) == pytest.approx([0.55, 0.1, 0.1], abs=1e-6)


def test_no_warmup():
  s = make_schedule(_opt("warmup_cosine", warmup_steps=0), 100)
  assert _at(s, 0, 100) == pytest.approx([1.0, 0.1], abs=1e-6)
