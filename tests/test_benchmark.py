"""`scripts/benchmark.py`'s modes: train (as a function: the JSON keys PERFORMANCE.md quotes, on
random tokens, with no corpus at all when the vocabulary is explicit, as the GPU checks run), compile,
quality. Not speed tests: nothing here asserts a time."""
import json
import os
import subprocess
import sys

import pytest

from research.config import ConfigError, base_config
from research.models import apply_preset
from research.perf.benchmark import benchmark_train
from tests.helpers import ROOT


def _cfg():
  c = base_config()
  apply_preset(c.model, "gpt2-tiny")
  c.train.batch_size, c.train.seq_len = 8, 32
  c.mesh.shape = (-1, 1, 1)
  return c


def test_train_benchmark_needs_no_corpus_and_reports_its_keys():
  cfg = _cfg()
  cfg.train.peak_flops = 1e12  # no 8-device matmul timing
  assert not cfg.data.path
  r = benchmark_train(cfg, steps=3, warmup=1)
  for key in ("tokens_per_sec", "step_time_ms", "step_time_ms_p10", "step_time_ms_p90", "mfu", "peak_flops",
              "flops_per_token", "memory_bytes_per_device"):
    assert r[key] > 0, key
  assert r["devices"] == 8 and r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert r["tokens_per_sec"] == pytest.approx(8 * 32 / (r["step_time_ms"] / 1000))
  assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_sec"] / 1e12)
  assert r["peak_flops"] == 1e12 and r["peak_source"] == "train.peak_flops"


def test_train_benchmark_imports_no_data_stack():
  # The GPU checks carry only ml-collections to a device image that has jax, flax and optax.
  code = ("import sys; import research.perf.benchmark; "
          "print(sorted(m for m in ('grain', 'array_record', 'tensorflow_datasets', 'orbax', 'sentencepiece') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_train_benchmark_with_tokenizer_vocab_needs_data():
  cfg = _cfg()
  cfg.model.vocab_size = 0   # the tokenizer decides: then a corpus is required
  with pytest.raises(ConfigError, match="data.path is empty"):
    benchmark_train(cfg, steps=1, warmup=0)


def test_compile_benchmark_reports_both_variants_per_depth(tmp_path):
  experiment = tmp_path / "tiny_compile.py"
  experiment.write_text("from research.config import base_config\nfrom research.models import apply_preset\n"
                        "def get_config():\n  c = base_config()\n  apply_preset(c.model, 'gpt2-tiny')\n"
                        "  c.train.batch_size, c.train.seq_len = 8, 32\n  c.mesh.shape = (-1, 1, 1)\n  return c\n")
  out = subprocess.run([sys.executable, "scripts/benchmark.py", "--mode=compile", f"--config={experiment}",
                        "--depths=1", "--repeats=1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["mode"] == "compile" and r["num_layers"] == [1] and r["warmup_layers"] == 2 and r["repeats"] == 1
  assert len(r["unrolled_seconds"]) == len(r["scan_seconds"]) == len(r["unrolled_over_scan"]) == 1
  assert r["unrolled_seconds"][0] > 0 and r["scan_seconds"][0] > 0
  assert r["persistent_cache"] is False and r["devices"] == 8  # the tests' cache is on: the script turns it off


def test_compile_benchmark_needs_an_explicit_vocabulary():
  from research.perf.compile_bench import benchmark_compile
  cfg = _cfg()
  cfg.model.vocab_size = 0
  with pytest.raises(ValueError, match="--config.model.vocab_size=N"):
    benchmark_compile(cfg)


def test_quality_runs_compare_with_the_recorded_loss(corpus_dir, tmp_path, monkeypatch):
  from research.perf import quality
  from tests.helpers import tiny_experiment
  experiment = tiny_experiment(tmp_path, corpus_dir)
  monkeypatch.setattr(quality, "RUNS", {
      "tiny": quality.QualityRun(experiment, recorded=0.5, tolerance=0.01, published=None,
                                 overrides=("--config.train.num_steps=6", "--config.train.eval_every=0",
                                            "--config.optimizer.warmup_steps=1", "--config.train.tensorboard=false")),
      "needs_text": quality.QualityRun(experiment, recorded=1.0, tolerance=0.1, published=None, needs_char_data=True)})
  report = quality.run_quality(["tiny"], str(tmp_path / "runs"), log=lambda *a: None)
  (run,) = report["runs"]
  assert run["final_eval_loss"] > 1.0 and run["within_tolerance"] is False and not report["all_within_tolerance"]
  assert os.path.isfile(os.path.join(run["workdir"], "summary.json"))
  with pytest.raises(ValueError, match="unknown run"):
    quality.run_quality(["nope"], str(tmp_path))
  with pytest.raises(ValueError, match="needs nanoGPT's tinyshakespeare input.txt"):
    quality.run_quality(["needs_text"], str(tmp_path), char_data="")


def test_decode_benchmark_reports_offline_and_served_figures(pretrained):
  """On the session's tiny checkpoint: every batch size's keys, and the server under 3 clients
  answering every request with all its tokens."""
  from research.perf.decode_bench import benchmark_decode
  _, workdir = pretrained
  r = benchmark_decode(None, str(workdir), [1, 2], prompt_len=8, new_tokens=4, repeats=1, clients=3,
                       compare_pytorch=False)
  for b in ("1", "2"):
    for key in ("prefill_tokens_per_sec", "decode_tokens_per_sec", "decode_step_ms", "time_to_first_token_ms",
                "kv_cache_bytes"):
      assert r["offline"][b][key] > 0, (b, key)
  served = r["served"]
  assert served["requests"] == 3 * served["requests_per_client"]
  assert served["completion_tokens_per_sec"] > 0 and served["latency_ms"]["p99"] >= served["latency_ms"]["p50"]
