"""Early stopping (any task): the counter on scripted metric sequences, and a run that stops, keeps
its best step, ends with its parameters, and stays stopped when the command is run again."""
import json
import os

import numpy as np
import pytest

from research.config import ConfigError, validate_config
from research.train.early_stopping import EarlyStopping


def _run(stopper, values, start=1, every=1):
  """The step that stopped the run (None: it did not), and the steps it had to keep."""
  kept = []
  for i, value in enumerate(values):
    step = start + i * every
    if stopper.observe(step, {"eval_f1": value}):
      kept.append(step)
    if stopper.stopped:
      return step, kept
  return None, kept


def test_patience_counts_evaluations_without_improvement():
  stopper = EarlyStopping("eval_f1", "max", patience=2)
  assert _run(stopper, [0.5, 0.6, 0.6, 0.55, 0.9]) == (4, [1, 2, 4])  # 0.6 again is no improvement
  assert (stopper.best_step, stopper.best_value, stopper.waited) == (2, 0.6, 2)
  stopper = EarlyStopping("eval_f1", "max", patience=2)
  assert _run(stopper, [0.5, 0.4, 0.7, 0.6, 0.8, 0.7, 0.75]) == (7, [1, 3, 5, 7])  # a new best resets the count


def test_min_mode_min_delta_and_nan():
  stopper = EarlyStopping("eval_f1", "min", patience=3, min_delta=0.1)
  # 2.95 and 2.92 beat 3.0 by less than min_delta; nan never improves
  assert _run(stopper, [float("nan"), 3.0, 2.95, 2.92, 2.85, 2.8, 2.79, 2.78]) == (8, [2, 5, 8])
  assert (stopper.best_step, stopper.best_value) == (5, 2.85)


def test_state_round_trip_continues_exactly():
  values = [0.3, 0.5, 0.4, 0.45, 0.41, 0.6]
  whole = EarlyStopping("eval_f1", "max", patience=3)
  expected = _run(whole, values)
  first = EarlyStopping("eval_f1", "max", patience=3)
  _run(first, values[:3])
  resumed = EarlyStopping("eval_f1", "max", patience=3, state=json.loads(json.dumps(first.state())))
  stop, kept = _run(resumed, values[3:], start=4)
  assert stop == expected[0] and resumed.state() == whole.state()
  final = EarlyStopping("eval_f1", "max", patience=1, state={"best_value": 0.5, "best_step": 1, "waited": 0})
  assert not final.observe(9, {"eval_f1": 0.4}, can_stop=False) and not final.stopped  # the last evaluation


def test_patience_needs_evaluations(tiny_cfg):
  tiny_cfg.train.early_stopping_patience, tiny_cfg.train.eval_every = 2, 0
  with pytest.raises(ConfigError, match="train.early_stopping_patience=2 counts evaluations.*set train.eval_every"):
    validate_config(tiny_cfg, 8)


def test_a_run_stops_restores_its_best_step_and_stays_stopped(tiny_cfg, tmp_path, monkeypatch):
  """The LM's eval loss is replaced by a scripted sequence, keyed by the real loss so that the best
  parameters evaluated again score their scripted value again."""
  from research.checkpoint.loading import checkpoint_steps
  from research.tasks.lm import LanguageModeling
  from research.train.trainer import train
  script, seen = iter([5.0, 4.0, 4.5, 4.2, 3.0]), {}
  real_metrics = LanguageModeling.metrics

  def scripted(self, sums):
    real = real_metrics(self, sums)
    key = round(real["loss"], 5)
    if key not in seen:
      seen[key] = next(script)
    return {**real, "loss": seen[key]}

  monkeypatch.setattr(LanguageModeling, "metrics", scripted)
  cfg = tiny_cfg
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.sample_at_end = 30, 4, 0
  cfg.train.early_stopping_patience = 2
  cfg.checkpoint.every_steps, cfg.checkpoint.keep_last, cfg.checkpoint.async_save = 100, 1, False
  workdir = str(tmp_path / "run")
  logs = []
  summary = train(cfg, workdir, log=logs.append)
  # evaluations at 4, 8, 12: 5.0, 4.0 (best), 4.5, 4.2 (two without improvement) -> stop at 16
  assert summary["stopped"] == "early_stopping" and summary["steps"] == 16 and summary["best_step"] == 8
  assert summary["final_eval"]["eval_loss"] == 4.0  # the best step's parameters, evaluated again
  assert cfg.checkpoint.keep_best == 1 and checkpoint_steps(os.path.join(workdir, "checkpoints")) == [8, 16]
  text = "\n".join(map(str, logs))
  assert "early stopping: stopped at step 16, 2 evaluation(s) without improving eval_loss" in text
  assert "restored the parameters of step 8" in text
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(r["step"] for r in records) == 16
  again = train(cfg, workdir, log=logs.append)  # the same command: the run is over, nothing trains
  assert (again["steps"], again["best_step"], again["final_eval"]["eval_loss"]) == (16, 8, 4.0)
  assert checkpoint_steps(os.path.join(workdir, "checkpoints")) == [8, 16]
  assert np.isfinite(again["final_eval"]["eval_perplexity"])
