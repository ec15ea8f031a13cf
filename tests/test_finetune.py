"""Finetuning from a checkpoint (finetune.init_from): parameters only, the checkpoint's architecture
and tokenizer, layouts converted, new parameters only where allowed, frozen parameters untouched,
and an exact resume of the finetuning run itself."""
import json
import os

import jax
import numpy as np
import pytest

from research.checkpoint import CheckpointError
from research.checkpoint.loading import read_config, read_tokenizer, restore_params
from research.config import ConfigError
from research.models import abstract_model
from research.models.layout import stack_layers
from research.sharding import make_mesh
from research.train.finetune import load_initial_params
from research.train.program import build_program
from research.train.setup import complete_config
from research.train.trainer import host_params, train
from tests.helpers import write_corpus


def _checkpoint_params(workdir):
  cfg = read_config(workdir)
  return restore_params(workdir, abstract_model(cfg.model)[1])


def _finetune_cfg(pretrained, tmp_path, **finetune):
  pre_cfg, workdir = pretrained
  other = tmp_path / "other_corpus"
  write_corpus(str(other), num_files=2, lines=40, seed=5)
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.data.path, cfg.data.val_files = str(other), ("play_1.txt",)
  cfg.data.tokenizer = "byte"        # ignored: a finetuning run reads text with the checkpoint's tokenizer
  cfg.model.embed_dim = 64           # ignored: the architecture is the checkpoint's
  cfg.model.vocab_size = 0
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every = 6, 3, 1
  cfg.optimizer.warmup_steps = 2
  cfg.checkpoint.async_save = False
  cfg.finetune.init_from = workdir
  for k, v in finetune.items():
    cfg.finetune[k] = v
  return cfg


def test_finetune_starts_from_the_checkpoint_with_its_tokenizer(pretrained, tmp_path):
  pre_cfg, pre_dir = pretrained
  cfg = _finetune_cfg(pretrained, tmp_path)
  logs = []
  summary = train(cfg, str(tmp_path / "ft"), log=logs.append)
  text = "\n".join(map(str, logs))
  assert "embed_dim 64 -> 32" in text and "tokenizer of the checkpoint" in text
  saved = read_config(str(tmp_path / "ft"))
  assert saved.model.embed_dim == pre_cfg.model.embed_dim and saved.model.vocab_size == pre_cfg.model.vocab_size
  # the run's own checkpoints, counted from step 0, carrying the checkpoint's tokenizer
  assert sorted(os.listdir(tmp_path / "ft" / "checkpoints")) == ["6"]
  pre_tok = read_tokenizer(pre_dir, str(tmp_path / "c1"))
  ft_tok = read_tokenizer(str(tmp_path / "ft"), str(tmp_path / "c2"))
  assert pre_tok.fingerprint == ft_tok.fingerprint and pre_tok.fingerprint.startswith("spm-")
  # it started from the pretrained weights: its first loss is far below a fresh model's ln(vocab)
  records = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
  first = next(r["loss"] for r in records if "loss" in r)
  assert first < np.log(pre_cfg.model.vocab_size) - 1.0
  assert {"eval_loss", "eval_perplexity"} <= set(summary["final_eval"])


def test_initial_params_equal_the_checkpoint_in_either_layout(pretrained, tmp_path):
  _, pre_dir = pretrained
  for scan in (False, True):
    cfg = _finetune_cfg(pretrained, tmp_path)
    cfg.model.scan_layers = scan
    task, _ = complete_config(cfg, 8, log=lambda *a: None, need_data=False)
    program = build_program(cfg, make_mesh((-1, 1, 1)), task)
    state = load_initial_params(cfg, program, program.init_state(), host_params, lambda *a: None)
    want = _checkpoint_params(pre_dir)
    want = stack_layers(want) if scan else want
    jax.tree.map(np.testing.assert_array_equal, want, jax.device_get(state.params))


def test_new_parameters_need_init_new_and_misfits_name_the_keys(pretrained, tmp_path):
  cfg = _finetune_cfg(pretrained, tmp_path)
  task, _ = complete_config(cfg, 8, log=lambda *a: None, need_data=False)
  cfg.model.tie_embeddings = False  # a model with a head the (tied) checkpoint lacks
  program = build_program(cfg, make_mesh((-1, 1, 1)), task)
  with pytest.raises(CheckpointError, match=r"lm_head/kernel: not in the checkpoint.*finetune.init_new"):
    load_initial_params(cfg, program, program.init_state(), host_params, lambda *a: None)
  cfg.finetune.init_new = (r"^lm_head/",)
  logs = []
  state = load_initial_params(cfg, program, program.init_state(), host_params, logs.append)
  assert "initialised fresh (finetune.init_new): lm_head/kernel" in logs[-1]
  assert np.asarray(state.params["lm_head"]["kernel"]).std() > 0
  cfg.model.mlp_dim = 64  # shapes that differ: one line naming each
  program = build_program(cfg, make_mesh((-1, 1, 1)), task)
  with pytest.raises(CheckpointError, match=r"blocks/0/mlp/up/kernel: checkpoint \(32, 128\) vs model \(32, 64\)"):
    load_initial_params(cfg, program, program.init_state(), host_params, lambda *a: None)


def test_frozen_parameters_get_no_update_and_no_optimizer_state(pretrained, tmp_path):
  _, pre_dir = pretrained
  cfg = _finetune_cfg(pretrained, tmp_path, freeze=(r"^embed/", r"^blocks/0/"))
  train(cfg, str(tmp_path / "ft"), log=lambda *a: None)
  before, after = _checkpoint_params(pre_dir), _checkpoint_params(str(tmp_path / "ft"))
  np.testing.assert_array_equal(before["embed"]["embedding"], after["embed"]["embedding"])
  jax.tree.map(np.testing.assert_array_equal, before["blocks"][0], after["blocks"][0])
  assert not np.array_equal(before["blocks"][1]["mlp"]["up"]["kernel"], after["blocks"][1]["mlp"]["up"]["kernel"])
  task, _ = complete_config(cfg, 8, log=lambda *a: None, need_data=False)
  program = build_program(cfg, make_mesh((-1, 1, 1)), task)
  mu = program.abstract_state().opt_state[1][0].mu  # clip, then adamw's ScaleByAdamState
  assert "embed" not in mu and 0 not in mu["blocks"] and 1 in mu["blocks"]


def test_freeze_and_init_from_errors_are_one_line(pretrained, tmp_path):
  cfg = _finetune_cfg(pretrained, tmp_path, freeze=(r"^embd/",))
  task, _ = complete_config(cfg, 8, log=lambda *a: None, need_data=False)
  with pytest.raises(ConfigError, match=r"finetune.freeze: '\^embd/' matches no parameter"):
    build_program(cfg, make_mesh((-1, 1, 1)), task)
  cfg.finetune.freeze = (".",)
  with pytest.raises(ConfigError, match="freezes every parameter"):
    build_program(cfg, make_mesh((-1, 1, 1)), task)
  cfg = _finetune_cfg(pretrained, tmp_path)
  cfg.finetune.init_from = str(tmp_path / "nowhere")
  with pytest.raises(CheckpointError, match="nowhere: no checkpoints here"):
    complete_config(cfg, 8, log=lambda *a: None, need_data=False)


def test_best_metric_must_be_one_the_task_writes(tiny_cfg):
  tiny_cfg.checkpoint.best_metric = "eval_accuracy"
  with pytest.raises(ConfigError, match="checkpoint.best_metric='eval_accuracy' is not one of eval_loss, eval_perplexity"):
    complete_config(tiny_cfg, 8, log=lambda *a: None, need_data=False)


def test_sigkill_then_resume_of_a_finetuning_run_is_exact(pretrained, corpus_dir, tmp_path):
  """A finetuning run (supervised finetuning, task.name=sft, on prompt/response records) resumes
  from its own checkpoints, bit for bit, and reads nothing of the checkpoint it started from again
  (here moved away before the resume)."""
  import shutil
  import signal
  from tests.helpers import tiny_experiment, write_sft_records
  from tests.test_checkpoint import STEPS, _losses, _start, _wait_for_step
  experiment = tiny_experiment(tmp_path, corpus_dir)
  start = tmp_path / "start"
  shutil.copytree(pretrained[1], start)
  records = write_sft_records(tmp_path / "sft")
  extra = (f"--config.finetune.init_from={start}", "--config.finetune.freeze=^embed/", "--config.task.name=sft",
           f"--config.data.path={records}", "--config.data.val_files=val.jsonl", "--config.sft.template=plain",
           "--config.train.seq_len=64")
  runs = {}
  for name in ("reference", "killed"):
    workdir = tmp_path / name
    proc = _start(experiment, workdir, *extra)
    if name == "killed":
      _wait_for_step(workdir, 10, proc)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      start.rename(tmp_path / "start.moved")
      proc = _start(experiment, workdir, *extra)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    runs[name] = _losses(workdir)
  assert "checkpoint: resumed from step" in out and "finetune: parameters from" not in out
  assert "task: sft" in out and "nats per trained token" in out
  assert sorted(runs["reference"]) == list(range(1, STEPS + 1))
  assert runs["killed"] == runs["reference"]
