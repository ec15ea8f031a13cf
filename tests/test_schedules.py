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


@pytest.mark.parametrize("kw, num_steps, expect, note", [
    (dict(warmup_steps=100), 30, 3, "optimizer.warmup_steps=100 does not fit before train.num_steps=30; "
                                    "warming up over 3 steps (a tenth) instead"),
    (dict(warmup_steps=100, decay_steps=2000), 30, 3, "before train.num_steps=30;"),
    (dict(warmup_steps=30, decay_steps=20), 100, 2, "before the decay end optimizer.decay_steps=20;"),
    (dict(warmup_steps=100, schedule="constant"), 50, 5, "before train.num_steps=50;"),
    (dict(warmup_steps=10), 30, 10, None),
    (dict(warmup_steps=0), 5, 0, None),
])
def test_fit_warmup(kw, num_steps, expect, note):
  from research.train.schedules import fit_warmup
  warmup, message = fit_warmup(_opt("warmup_cosine", **kw), num_steps)
  assert warmup == expect
  assert message is None if note is None else note in message and "\n" not in message


@pytest.mark.parametrize("name, extra", [("default", []), ("nanogpt_shakespeare_char", ["--config.data.path=x.txt"])])
def test_short_run_of_any_experiment_validates(name, extra):
  from research.config import validate_config
  from research.config.cli import load_config
  from research.train.schedules import fit_warmup
  from tests.conftest import ROOT
  cfg = load_config(f"{ROOT}/experiments/{name}.py", ["--config.train.num_steps=30", *extra])
  cfg.optimizer.warmup_steps, note = fit_warmup(cfg.optimizer, cfg.train.num_steps)
  assert note and cfg.optimizer.warmup_steps == 3
  validate_config(cfg, 1)


def test_trainer_fits_the_warmup_and_says_so(tiny_cfg, tmp_path):
  from research.train.trainer import train
  tiny_cfg.model.vocab_size = 256  # a dry run with an explicit vocabulary builds no data
  tiny_cfg.optimizer.warmup_steps = 100
  logs = []
  train(tiny_cfg, str(tmp_path), log=logs.append, dry_run=True)
  assert "optimizer.warmup_steps=100 does not fit before train.num_steps=30; warming up over 3 steps" in logs[0]
