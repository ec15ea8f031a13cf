"""Bad config keys and values stop the run before compiling, with one line naming the key."""
import os
import subprocess
import sys

import pytest

from research.config import ConfigError, base_config, validate_config
from research.config.cli import apply_overrides, load_experiment, parse_variant
from tests.conftest import ROOT


def _valid():
  c = base_config()
  c.data.path = "corpus.txt"
  return c


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown config key train.nope"),
    ("train.num_steps=ten", "train.num_steps='ten' must be an int"),
    ("train.progress=maybe", "train.progress='maybe' must be a bool"),
    ("model=1", "model is a group of keys"),
])
def test_override_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    apply_overrides(_valid(), ["--config." + override])


@pytest.mark.parametrize("change, message", [
    (dict(mesh=dict(shape=(3, 1, 1))), r"mesh.shape=\(3, 1, 1\) uses 3 devices but 8 are available"),
    (dict(mesh=dict(shape=(-1, -1, 1))), "at most one entry may be -1"),
    (dict(mesh=dict(shape=(-1, 3, 1))), "does not divide"),
    (dict(model=dict(num_heads=5)), "model.num_heads=5 does not divide model.embed_dim=768"),
    (dict(model=dict(num_kv_heads=5)), "model.num_kv_heads=5 must divide model.num_heads=12"),
    (dict(model=dict(norm="batchnorm")), "model.norm='batchnorm' is not one of layernorm, rmsnorm"),
    (dict(model=dict(attention_impl="cudnn")), "model.attention_impl=cudnn needs a GPU"),
    (dict(train=dict(seq_len=4096)), "train.seq_len=4096 exceeds the model's context model.max_seq_len=1024"),
    (dict(train=dict(batch_size=12)), "not divisible by the data x fsdp mesh axes"),
    (dict(train=dict(microbatches=3)), "train.microbatches=3 must divide train.batch_size=32"),
    (dict(optimizer=dict(schedule="cosine")), "optimizer.schedule='cosine' is not one of"),
    (dict(optimizer=dict(learning_rate=1e-3, final_learning_rate=1e-2)), "must not exceed"),
    (dict(train=dict(nonfinite="ignore")), "train.nonfinite='ignore' is not one of stop, skip"),
    (dict(mesh=dict(rules=(("embed", "model"),))), "names mesh axis 'model'"),
    (dict(mesh=dict(shape=(8, 1, 1), dcn_shape=(3, 1, 1))), r"mesh.dcn_shape=\(3, 1, 1\) must divide mesh.shape=\(8, 1, 1\)"),
    (dict(mesh=dict(dcn_shape=(2, 1))), r"mesh.dcn_shape=\(2, 1\): needs 3 positive integers"),
])
def test_validation_errors(change, message):
  cfg = _valid()
  cfg.update(change)
  with pytest.raises(ConfigError, match=message) as err:
    validate_config(cfg, num_devices=8)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["optimizer.learning_rate", "optimizer.eps", "optimizer.weight_decay",
                                 "optimizer.grad_clip_norm", "model.norm_eps", "model.init_std",
                                 "checkpoint.every_minutes"])
@pytest.mark.parametrize("value, message", [
    ("nan", "must be a finite number"), ("inf", "must be a finite number"), ("-1e-3", "must be >= 0|must be > 0")])
def test_float_keys_reject_nan_inf_and_negative(key, value, message):
  cfg = apply_overrides(_valid(), [f"--config.{key}={value}"])
  with pytest.raises(ConfigError, match=f"^{key}={value if value != '-1e-3' else '-0.001'} ({message})$"):
    validate_config(cfg, 8)


def test_every_float_key_must_be_finite():
  from research.config.validate import _flatten
  floats = [k for k, v in _flatten(base_config()).items() if isinstance(v, float)]
  assert len(floats) > 10
  for key in floats:
    cfg = apply_overrides(_valid(), [f"--config.{key}=nan"])
    with pytest.raises(ConfigError, match=f"^{key}=nan must be a finite number$"):
      validate_config(cfg, 8)


@pytest.mark.parametrize("key", ["optimizer.eps", "model.norm_eps", "model.init_std"])
def test_epsilons_and_init_std_must_be_positive(key):
  cfg = apply_overrides(_valid(), [f"--config.{key}=0"])
  with pytest.raises(ConfigError, match=f"^{key}=0.0 must be > 0$"):
    validate_config(cfg, 8)


def test_unknown_key_in_experiment_file_is_rejected():
  cfg = _valid()
  with cfg.unlocked():
    cfg.train.learning_rate = 0.1
  with pytest.raises(ConfigError, match=r"unknown config key train.learning_rate \(did you mean optimizer"):
    validate_config(cfg, 8)


def test_valid_config_passes_and_mesh_minus_one():
  cfg = _valid()
  cfg.mesh.shape = (2, -1, 1)
  validate_config(cfg, 8)


def test_variants():
  assert parse_variant("size=124m,seq=1024", {"size": "tiny", "seq": 64}) == {"size": "124m", "seq": 1024}
  with pytest.raises(ConfigError, match="expected key=value"):
    parse_variant("depth=3", {"size": "tiny"})


@pytest.mark.parametrize("name", ["default", "nanogpt_shakespeare_char"])
def test_experiments_load_and_validate(name):
  cfg = load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))
  if not cfg.data.path:
    cfg.data.path = "input.txt"
  cfg.mesh.shape = (-1, 1, 1)
  validate_config(cfg, 1)


@pytest.mark.parametrize("variant", ["gpt2-124m", "llama-1b"])
def test_gpu_bench_validates_only_for_a_gpu_backend(variant):
  cfg = load_experiment(os.path.join(ROOT, "experiments", f"gpu_bench.py:{variant}"))
  cfg.mesh.shape = (-1, 1, 1)
  assert cfg.model.attention_impl == "cudnn"
  validate_config(cfg, 1, need_data=False, backend="gpu")
  for backend, name in ((None, "cpu"), ("tpu", "tpu")):
    with pytest.raises(ConfigError, match=f"attention_impl=cudnn needs a GPU, this run is on {name}; use xla"):
      validate_config(cfg, 1, need_data=False, backend=backend)
  cfg.model.attention_impl = "xla"
  validate_config(cfg, 1, need_data=False)


def test_script_reports_bad_key_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "scripts/train.py", "--config=experiments/default.py", f"--workdir={tmp_path}",
       "--config.train.num_stepz=5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown config key train.num_stepz: train has no 'num_stepz' (keys: batch_size, ")
  assert "num_steps, " in last and last.endswith(", tensorboard)")
  assert "compiled" not in proc.stdout
