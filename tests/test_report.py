"""Reports (research/sweeps/report.py, scripts/report.py) on sweep directories the tests write by
hand in the worker's layout (sweep.json, trials/<id>/{trial.json, metrics.jsonl, summary.json})
and on a real tiny training run."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from research.sweeps import scaling
from research.sweeps.report import ReportError, kind_of, write_run_report, write_sweep_report
from research.sweeps.table import format_number, read_trials
from tests.helpers import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
SPACE = {"optimizer.learning_rate": {"kind": "loguniform", "low": 1e-4, "high": 1e-2, "values": None, "log": False,
                                     "step": 1, "when": None},
         "model.arch": {"kind": "choice", "low": None, "high": None, "values": ["gpt2", "llama"], "log": False,
                        "step": 1, "when": None}}


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _trial(sweep_dir, trial_id, params, status, final=None, steps=40, parameters=37760, tokens=None,
           metrics=True, summary=True, torn=False, record=True):
  """One trial dir: a loss curve falling to about `final`, evals every 10 steps."""
  d = os.path.join(sweep_dir, "trials", trial_id)
  os.makedirs(d, exist_ok=True)
  tokens = tokens if tokens is not None else steps * 256
  end = final if final is not None else 4.0
  if metrics:
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
      for step in range(5, steps + 1, 5):
        loss = end + 2.0 * math.exp(-step / 10)
        f.write(json.dumps({"step": step, "loss": loss, "learning_rate": 3e-3, "grad_norm": 1.0,
                            "tokens_per_sec": 1e4, "mfu": 0.01, "step_time_ms": 20.0, "tokens_seen": step * 256,
                            "time": 1.0 + step}) + "\n")
        if step % 10 == 0:
          f.write(json.dumps({"step": step, "eval_loss": loss + 0.05, "eval_perplexity": math.exp(loss + 0.05),
                              "time": 1.5 + step}) + "\n")
      if torn:
        f.write('{"step": 45, "loss": 3.')
  if summary and status == "complete":
    _write_json(os.path.join(d, "summary.json"), {
        "final_eval": {"eval_loss": final, "eval_perplexity": math.exp(final)}, "steps": steps, "tokens_seen": tokens,
        "train_seconds": 2.0, "total_seconds": 20.0, "parameters": parameters, "flops_per_token": 2e5,
        "compute": {"tokens_seen": tokens, "total_flops": 6.0 * parameters * tokens, "device_hours": 0.04,
                    "cost_per_device_hour": None, "estimated_cost": None}})
  if record:
    _write_json(os.path.join(d, "trial.json"), {
        "trial_id": trial_id, "number": int(trial_id[1:]), "params": params, "seed": 0, "overrides": params,
        "status": status, "error": "exit 1: error: out of memory" if status == "failed" else None,
        "metric": "eval_loss", "direction": "minimize", "final": final,
        "best": None if final is None else final - 0.01, "best_step": None if final is None else steps,
        "steps": steps, "tokens": tokens, "wall_seconds": 20.0, "attempts": 1, "devices": 1,
        "device_hours": 0.04, "cost": None, "parameters": parameters if status == "complete" else None})
  return d


@pytest.fixture
def hp_sweep(tmp_path):
  """7 trials of learning rate x arch: 4 complete, 1 pruned, 1 failed (no metrics), 1 killed before
  its record was written (a torn metrics.jsonl, no trial.json)."""
  d = str(tmp_path / "sweep")
  _write_json(os.path.join(d, "sweep.json"), {
      "name": "lr_arch", "base": "experiments/default.py", "space": SPACE, "sampler": "random",
      "metric": "eval_loss", "direction": "minimize", "num_trials": 7, "num_steps": 40, "pruner": "median",
      "seeds": [0]})
  _trial(d, "t0", {"optimizer.learning_rate": 3e-3, "model.arch": "gpt2"}, "complete", 3.6)
  _trial(d, "t1", {"optimizer.learning_rate": 1e-3, "model.arch": "llama"}, "complete", 3.2)
  _trial(d, "t2", {"optimizer.learning_rate": 3e-4, "model.arch": "gpt2"}, "complete", 3.9)
  _trial(d, "t3", {"optimizer.learning_rate": 5e-3, "model.arch": "llama"}, "complete", 3.4)
  _trial(d, "t4", {"optimizer.learning_rate": 1e-4, "model.arch": "gpt2"}, "pruned", 4.5, steps=20)
  _trial(d, "t5", {"optimizer.learning_rate": 9e-3, "model.arch": "llama"}, "failed", metrics=False)
  _trial(d, "t6", {}, "running", 4.2, steps=15, torn=True, record=False)
  return d


def _valid_png(path):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG and len(data) > 5000, path


def test_table_order_columns_and_values(hp_sweep):
  logged = []
  result = write_sweep_report(hp_sweep, log=logged.append, bootstrap=0)
  with open(os.path.join(hp_sweep, "trials.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["trial_id"] for r in rows] == ["t1", "t3", "t0", "t2", "t4", "t6", "t5"]   # complete, others, failed
  assert [r["status"] for r in rows] == ["complete"] * 4 + ["pruned", "unknown", "failed"]
  assert list(rows[0])[:5] == ["trial_id", "number", "status", "optimizer.learning_rate", "model.arch"]
  assert {"final", "best", "best_step", "steps", "tokens", "wall_seconds", "device_hours", "cost", "error"} <= set(rows[0])
  assert float(rows[0]["final"]) == 3.2 and rows[0]["model.arch"] == "llama"
  assert float(rows[0]["optimizer.learning_rate"]) == pytest.approx(1e-3)
  assert rows[-1]["error"].startswith("exit 1") and rows[-1]["final"] == "" and rows[-1]["steps"] == "40"
  killed = rows[-2]      # no trial.json: read from its torn metrics.jsonl
  assert killed["steps"] == "15" and killed["tokens"] == str(15 * 256) and float(killed["best"]) == pytest.approx(
      4.2 + 2.0 * math.exp(-1) + 0.05)
  text = logged[0]
  assert "lr_arch: 7 trials" in text and "3.2000" in text and "0.001" in text and "out of memory" in text
  assert result["scaling"] is None and any("scaling: not fitted" in line for line in logged)
  assert format_number(3e-3) == "0.003" and format_number(3e-5) == "3.0e-05" and format_number(7680) == "7,680"
  assert format_number(4.25, "final") == "4.2500" and format_number(None) == "-"


def test_every_chart_is_drawn(hp_sweep):
  logged = []
  result = write_sweep_report(hp_sweep, log=logged.append, bootstrap=0)
  names = {os.path.basename(p) for p in result["plots"]}
  assert names == {"metric_vs_optimizer.learning_rate.png", "metric_vs_model.arch.png", "loss_curves.png",
                   "parallel_coordinates.png", "importances.png"}, logged
  for path in result["plots"]:
    assert os.path.dirname(path) == os.path.join(hp_sweep, "plots")
    _valid_png(path)


def test_charts_that_cannot_be_drawn_are_skipped(tmp_path):
  d = str(tmp_path / "sweep")
  _write_json(os.path.join(d, "sweep.json"), {"name": "one", "space": SPACE, "metric": "eval_loss",
                                              "direction": "minimize"})
  _trial(d, "t0", {"optimizer.learning_rate": 3e-3, "model.arch": "gpt2"}, "complete", 3.6)
  logged = []
  result = write_sweep_report(d, log=logged.append, bootstrap=0)
  assert any("skipped importances.png: needs 2 or more completed trials" in line for line in logged), logged
  assert "parallel_coordinates.png" in {os.path.basename(p) for p in result["plots"]}


def test_importances_need_no_sklearn(hp_sweep):
  """Optuna's importance package tries to import scikit-learn on import (for fANOVA) and goes on
  without it; here it is made unimportable, as where it is not installed, and the chart still draws."""
  code = ("import sys; sys.modules['sklearn'] = None; "   # None in sys.modules: `import sklearn` raises ImportError
          "from research.sweeps.report import write_sweep_report; "
          f"r = write_sweep_report({hp_sweep!r}, log=print, bootstrap=0); "
          "assert any(p.endswith('importances.png') for p in r['plots']), r['plots']; "
          "print(sorted(m for m in sys.modules if m.startswith(('sklearn', 'torch', 'tensorflow', 'transformers'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout + out.stderr
  assert out.stdout.splitlines()[-1] == "['sklearn']"     # only the blocking entry


@pytest.fixture
def fast_fits(monkeypatch):
  """Approach 3 from 2 starting points instead of 243 (~0.5 s each on a busy 2-core CPU): the fits'
  own accuracy is test_scaling_laws's; this file tests what the report does with them."""
  monkeypatch.setattr(scaling, "_starts", lambda coarse: [(5., 5., 0., 0.5, 0.5), (8., 8., 0.5, 0.3, 0.3)])


@pytest.mark.parametrize("budget_param", [True, False])
def test_scaling_sweep_recovers_the_law(tmp_path, fast_fits, budget_param):
  """Chinchilla-law points on 3 budgets x 5 sizes; without a flops_budget param the budgets are
  6 N D, which vary by up to 2% within a budget (as rounded step counts make them)."""
  law = scaling.LawFit(**scaling.CHINCHILLA)
  rng = np.random.default_rng(0)
  d = str(tmp_path / "scaling")
  _write_json(os.path.join(d, "sweep.json"), {"name": "scaling", "space": {
      "flops_budget": {"kind": "choice", "values": [1e18, 1e19, 1e20]},
      "model.embed_dim": {"kind": "choice", "values": [1, 2, 3, 4, 5]}}, "metric": "eval_loss",
      "direction": "minimize"})
  i = 0
  for budget in (1e18, 1e19, 1e20):
    n_opt = law.optimal(budget)[0]
    for k, factor in enumerate(np.logspace(-1, 1, 5)):
      n = float(n_opt * factor)
      tokens = int(budget / (6 * n) * (1 + 0.01 * (k - 2)))     # steps round tokens: C agrees within 5%
      loss = float(law.loss(n, tokens) * np.exp(rng.normal(0, 0.001)))
      params = {"flops_budget": budget, "model.embed_dim": k + 1} if budget_param else {"model.embed_dim": k + 1}
      _trial(d, f"t{i}", params, "complete", loss, parameters=int(n),
             tokens=tokens, metrics=False)
      i += 1
  logged = []
  result = write_sweep_report(d, log=logged.append, bootstrap=4)
  with open(os.path.join(d, "scaling.json")) as f:
    fits = json.load(f)
  a3 = fits["approach3"]
  assert a3["alpha"] == pytest.approx(0.34, rel=0.05) and a3["beta"] == pytest.approx(0.28, rel=0.05)
  assert set(a3["intervals"]) >= {"alpha", "beta", "E"}
  assert fits["approach2"]["n_exponent"] == pytest.approx(law.n_exponent, abs=0.03)
  assert len(fits["optimal"]) == 3
  assert fits["budget_source"] == ("the flops_budget param" if budget_param else "6 N D, within 5% grouped")
  assert any(line.startswith("  fitted / published: alpha") for line in logged)
  _valid_png(os.path.join(d, "plots", "scaling.png"))
  assert result["scaling"]["approach2"]["minima"]


def test_budgets_cluster_within_five_percent():
  from research.sweeps.scaling_report import cluster_budgets
  out = cluster_budgets([1e18, 1.03e18, 0.99e18, 1e19, 1.04e19, 3e19])
  assert len(set(out[:3])) == 1 and out[0] == pytest.approx((1e18 * 1.03e18 * 0.99e18) ** (1 / 3))
  assert len(set(out[3:5])) == 1 and out[5] == 3e19


def test_run_report_on_a_real_run(pretrained, tmp_path):
  _, run_dir = pretrained
  logged = []
  result = write_run_report(run_dir, log=logged.append, out_dir=str(tmp_path))
  names = {os.path.basename(p) for p in result["plots"]}
  assert {"loss.png", "learning_rate.png", "throughput.png"} <= names, logged
  for path in result["plots"]:
    _valid_png(path)
  assert logged[0].startswith(f"run {run_dir}: completed") and any("device-hours" in line for line in logged)
  assert any(line.startswith("  final eval: eval_loss") for line in logged), logged


def test_run_report_draws_eval_metrics(tmp_path):
  d = _trial(str(tmp_path), "t0", {}, "complete", 3.5, record=False)
  result = write_run_report(d, log=lambda s: None)
  assert {os.path.basename(p) for p in result["plots"]} == {"loss.png", "learning_rate.png", "throughput.png",
                                                          "eval_metrics.png"}


def test_script_end_to_end_and_bad_paths(hp_sweep, tmp_path):
  out_dir = str(tmp_path / "out")
  run = subprocess.run([sys.executable, "scripts/report.py", f"--workdir={hp_sweep}", f"--out={out_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert "lr_arch: 7 trials" in run.stdout and os.path.isfile(os.path.join(out_dir, "trials.csv"))
  assert len(os.listdir(os.path.join(out_dir, "plots"))) == 5
  assert not os.path.exists(os.path.join(hp_sweep, "trials.csv"))
  nowhere = str(tmp_path / "nowhere")
  bad = subprocess.run([sys.executable, "scripts/report.py", f"--workdir={nowhere}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert bad.stderr.startswith(f"error: {nowhere} does not exist; expected") and "metrics.jsonl" in bad.stderr
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ReportError, match="has neither sweep.json .* nor metrics.jsonl"):
    kind_of(str(empty))
  assert read_trials(hp_sweep)[0]["name"] == "lr_arch"
