"""LoRA (lora.rank > 0): adapters that start as the base, a frozen base with no gradient and no
optimizer state, merging that equals base + adapter, checkpoints of the adapters alone on a base
they name and fingerprint (a changed base is refused), an exact resume, and PEFT's format for
transformers (peft, transformers and torch are test-only references)."""
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import research
from research.checkpoint import CheckpointError
from research.checkpoint.loading import read_meta, read_saved_params
from research.checkpoint.params_only import save_params_checkpoint
from research.config import ConfigError, base_config
from research.models import abstract_model, apply_preset, build_model
from research.models.lora import adapter_count, lora_extension, merge_params
from research.sharding import make_mesh
from research.tasks import model_extensions
from research.train.program import build_program
from research.train.setup import complete_config
from research.train.trainer import train
from research.treepaths import path_str
from tests.helpers import write_corpus


def _lora_cfg(**overrides):
  cfg = ml_collections.ConfigDict(base_config().lora.to_dict())
  cfg.update(rank=4, alpha=8.0, **overrides)
  return cfg


def _tiny_model_cfg(family="gpt2", scan=False):
  c = base_config()
  apply_preset(c.model, "gpt2-tiny" if family == "gpt2" else "llama-tiny")
  c.model.vocab_size, c.model.scan_layers = 96, scan
  return c.model


def _randomise_b(params, seed=1):
  """Nonzero B (and so a nonzero update) in every adapter (numpy: eager jax.random compiles per shape)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype) if path_str(p).endswith("lora/b") else x,
      params)



def _forward(model):
  """params -> logits of `tokens` through `model`'s graph, jitted (eager NNX is slow on CPU)."""
  graphdef, state = nnx.split(model)
  rest = nnx.to_pure_dict(state)
  fn = jax.jit(lambda params, tokens: nnx.merge(graphdef, _join(rest, params))(tokens))
  return lambda params, tokens: np.asarray(fn(params, tokens))


def _join(rest, params):
  return {k: _join(rest[k], params[k]) if isinstance(params.get(k), dict) else params.get(k, rest[k])
          for k in rest} if isinstance(rest, dict) else params


def test_fresh_adapters_are_the_base_and_merging_equals_base_plus_adapter(family="llama", scan=True):
  """Stacked blocks (scan_layers) with a gated MLP; the per-layer layout is merged in the PEFT tests."""
  model_cfg = _tiny_model_cfg(family, scan)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 12)), jnp.int32)
  base = build_model(model_cfg, nnx.Rngs(0))
  adapted = build_model(model_cfg, nnx.Rngs(0), [lora_extension(_lora_cfg())])
  base_fn, adapted_fn = _forward(base), _forward(adapted)
  base_params = nnx.to_pure_dict(nnx.state(base, nnx.Param))
  params = nnx.to_pure_dict(nnx.state(adapted, nnx.Param))
  # B = 0: the base's function (up to rounding: the compiled programs differ)
  np.testing.assert_allclose(base_fn(base_params, tokens), adapted_fn(params, tokens), atol=1e-6, rtol=0)
  params = _randomise_b(params)
  with_adapters = adapted_fn(params, tokens)
  assert np.abs(with_adapters - base_fn(base_params, tokens)).max() > 1e-3
  merged = base_fn(merge_params(params, _lora_cfg()), tokens)
  np.testing.assert_allclose(merged, with_adapters, atol=1e-5, rtol=1e-5)
  kinds = {"/".join(p.split("/")[-4:-2]) for p in map(lambda t: path_str(t[0]),
           jax.tree_util.tree_flatten_with_path(params)[0]) if "/lora/" in p}
  want = {"attn/q", "attn/k", "attn/v", "attn/o", "mlp/up", "mlp/down"} | ({"mlp/gate"} if family == "llama" else set())
  assert kinds == want


def test_bad_targets_are_one_line():
  model_cfg = _tiny_model_cfg()
  with pytest.raises(ConfigError, match=r"lora.targets: 'attn/qq/kernel' matches no Dense kernel \(paths look like"):
    abstract_model(model_cfg, [lora_extension(_lora_cfg(targets=("attn/qq/kernel",)))])
  model_cfg.tie_embeddings = False
  with pytest.raises(ConfigError, match="lora.targets matches lm_head/kernel: the output head takes no adapter"):
    abstract_model(model_cfg, [lora_extension(_lora_cfg(targets=("kernel$",)))])


def test_the_base_gets_no_gradient_and_no_optimizer_state(tiny_cfg):
  """The optimizer state holds Adam's two moments of the adapters and nothing of the base, the
  gradient is taken of the adapters alone, and the compiled step does no base weight-gradient
  matmuls (its FLOPs drop by about a third): scripts/benchmark.py --mode=lora's two steps."""
  from research.perf.benchmark import benchmark_lora
  tiny_cfg.model.vocab_size = 256
  r = benchmark_lora(tiny_cfg, steps=1, warmup=1, rank=4)
  full, lora = r["full"], r["lora"]
  assert lora["compiler_flops_per_step"] < 0.8 * full["compiler_flops_per_step"], r
  assert lora["memory_per_device"]["optimizer_state"] < 0.2 * full["memory_per_device"]["optimizer_state"]
  assert r["speedup"] > 0 and r["memory_ratio"] > 0

  cfg = tiny_cfg.copy_and_resolve_references()
  cfg.lora.rank = 4
  task, _ = complete_config(cfg, 8, log=lambda *a: None, need_data=False)
  program = build_program(cfg, make_mesh((-1, 1, 1)), task)
  state = program.abstract_state()
  adapters = adapter_count(state.params)
  trainable, frozen = program.partition.split(state.params)
  assert adapters > 0 and adapter_count(trainable) == adapters
  assert sum(x.size for x in jax.tree.leaves(trainable)) == adapters   # nothing but adapters trains
  assert adapter_count(frozen) == 0 and sum(x.size for x in jax.tree.leaves(frozen)) == sum(
      x.size for x in jax.tree.leaves(abstract_model(cfg.model)[1]))
  opt_elements = sum(x.size for x in jax.tree.leaves(state.opt_state))
  scalars = sum(1 for x in jax.tree.leaves(state.opt_state) if x.size == 1)
  assert opt_elements == 2 * adapters + scalars
  # What the checkpoints hold: the adapters alone.
  saved = program.checkpoint_view(state).params
  assert sum(x.size for x in jax.tree.leaves(saved)) == adapters


def _copy_base(pretrained, tmp_path):
  """The pretrained run's checkpoint copied (the base this test may replace)."""
  _, pre_dir = pretrained
  base = tmp_path / "base"
  shutil.copytree(os.path.join(pre_dir, "checkpoints"), base / "checkpoints")
  return str(base)


def test_lora_run_saves_adapters_resumes_exactly_and_refuses_a_changed_base(pretrained, tmp_path):
  """Scanned, rematerialised, on a (2, 2, 2) mesh: the checkpoints hold only the adapters (with the
  base's path and fingerprint); resuming from step 2 gives step 4's adapters bit for bit; the model
  loads onto its base, merged or not, and a base that changed is refused, naming both paths."""
  pre_cfg, _ = pretrained
  base = _copy_base(pretrained, tmp_path)
  other = tmp_path / "other_corpus"
  write_corpus(str(other), num_files=2, lines=40, seed=5)
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.data.path, cfg.data.val_files = str(other), ("play_1.txt",)
  cfg.model.vocab_size = 0
  cfg.model.scan_layers, cfg.model.remat = True, "full"
  cfg.mesh.shape = (2, 2, 2)
  cfg.finetune.init_from = base
  cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout = 4, 8.0, 0.1
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.eval_batches, cfg.train.log_every = 4, 0, 2, 1
  cfg.optimizer.warmup_steps, cfg.optimizer.learning_rate = 1, 1e-2
  cfg.checkpoint.every_steps = 2
  workdir = str(tmp_path / "lora")
  logs = []
  train(cfg, workdir, log=logs.append)
  assert any("LoRA adapters (rank 4" in str(line) for line in logs)
  saved, meta = read_saved_params(workdir)
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]
  assert paths and all("/lora/" in p for p in paths), paths
  assert meta["lora_base"]["path"] == f"{base}/checkpoints/24"
  assert meta["lora_base"]["fingerprint"].startswith("params-")
  step4 = saved

  cfg.finetune.init_from = str(tmp_path / "moved")   # a resume reads the base from its own record
  train(cfg, workdir, log=logs.append, resume=2)
  assert any("resumed from step 2" in str(line) for line in logs)
  resumed, _ = read_saved_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, step4, resumed)

  model, loaded_cfg = research.load_model(workdir)
  merged, merged_cfg = research.load_model(workdir, merge=True)
  assert loaded_cfg.lora.rank == 4 and merged_cfg.lora.rank == 0
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 16)), jnp.int32)
  np.testing.assert_allclose(np.asarray(merged(tokens)), np.asarray(model(tokens)), atol=2e-5, rtol=2e-5)
  base_model, _ = research.load_model(base)
  assert np.abs(np.asarray(base_model(tokens)) - np.asarray(merged(tokens))).max() > 1e-3
  # scripts/export.py's safetensors: the merged kernels, the config without adapters
  from safetensors.numpy import load_file
  from research.checkpoint.loading import export_safetensors
  out, config_path = export_safetensors(workdir, str(tmp_path / "export" / "model"))
  exported = load_file(out)
  assert not [k for k in exported if ".lora." in k]
  np.testing.assert_array_equal(exported["blocks.attn.q.kernel"], np.asarray(merged.blocks.attn.q.kernel[...]))
  assert __import__("json").load(open(config_path))["lora"]["rank"] == 0

  # The base changes under the adapters (another checkpoint in its place): every read refuses it.
  changed = jax.tree.map(lambda x: np.asarray(x) * 1.01, read_saved_params(base)[0])
  save_params_checkpoint(str(tmp_path / "changed"), changed, pre_cfg)
  shutil.rmtree(f"{base}/checkpoints/24")
  shutil.copytree(str(tmp_path / "changed" / "checkpoints" / "0"), f"{base}/checkpoints/24")
  with pytest.raises(CheckpointError, match=rf"{workdir}.*trained on the base {base}/checkpoints/24 .*changed"):
    research.load_model(workdir)


# ----------------------------------------------------------------------------------------------
# Hugging Face: the merged export and PEFT's adapter against our merged model.

# gpt2: q and v (c_attn of rank 2r, k's block zero) and attention's c_proj, not the MLP's; llama
# and gemma (H * Dh != D): every projection.
PEFT_CASES = {"gpt2": (r"attn/(q|v|o)/kernel$", r"mlp/up/kernel$"),
              "llama": base_config().lora.targets, "gemma": base_config().lora.targets}


@pytest.mark.parametrize("name", list(PEFT_CASES))
def test_peft_adapter_and_merged_export_match_our_merged_model(name, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from research.checkpoint.loading import read_config
  from research.checkpoint.lora_params import base_record
  from research.hf.export_hf import export_hf
  from research.hf.import_hf import import_hf
  from research.hf.peft_export import export_peft
  from tests.test_convert_hf import F32, _hf_configs, _perturb

  torch.manual_seed(0)
  reference = transformers.AutoModelForCausalLM.from_config(_hf_configs()[name], attn_implementation="eager")
  reference = reference.to(F32).eval()
  _perturb(reference)
  hf_dir = str(tmp_path / "hf")
  reference.save_pretrained(hf_dir)
  import_hf(hf_dir, str(tmp_path / "base"))
  base_step = str(tmp_path / "base" / "checkpoints" / "0")

  # A LoRA run's checkpoint on that base: its adapters (B made nonzero) and the base's record.
  cfg = read_config(base_step)
  cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets = 4, 12.0, PEFT_CASES[name]
  cfg.finetune.init_from = base_step
  model = build_model(cfg.model, nnx.Rngs(3), model_extensions(cfg))
  params = _randomise_b(nnx.to_pure_dict(nnx.state(model, nnx.Param)), seed=2)
  save_params_checkpoint(str(tmp_path / "lora"), _only_adapters(params), cfg, lora_base=base_record(base_step))
  lora_dir = str(tmp_path / "lora")

  merged, merged_cfg = research.load_model(lora_dir, merge=True)
  tokens = np.random.default_rng(0).integers(3, 300, size=(2, 16))
  graphdef, state = nnx.split(merged)
  ours = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(tokens, jnp.int32)))
  with torch.no_grad():
    base_logits = reference(input_ids=torch.from_numpy(tokens)).logits.numpy()
  assert np.abs(ours - base_logits).max() > 1e-2   # the adapters matter

  export_hf(lora_dir, str(tmp_path / "merged"))
  merged_hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=F32,
                                                               attn_implementation="eager").eval()
  export_peft(lora_dir, str(tmp_path / "adapter"))
  config = __import__("json").load(open(tmp_path / "adapter" / "adapter_config.json"))
  assert config["base_model_name_or_path"] == hf_dir
  base_hf = transformers.AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=F32,
                                                             attn_implementation="eager").eval()
  with_adapter = peft.PeftModel.from_pretrained(base_hf, str(tmp_path / "adapter")).eval()
  with torch.no_grad():
    for ref in (merged_hf, with_adapter):
      diff = np.abs(ours - ref(input_ids=torch.from_numpy(tokens)).logits.numpy()).max()
      assert diff <= 1e-4, f"{type(ref).__name__}: max |ours merged - hf| = {diff:.2e}"
  if name == "gpt2":
    assert config["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc"]
    assert config["rank_pattern"] == {"attn.c_attn": 8} and config["alpha_pattern"] == {"attn.c_attn": 24.0}


def _only_adapters(params):
  if not isinstance(params, dict):
    return params
  out = {}
  for k, v in params.items():
    if k == "lora":
      out[k] = v
    elif isinstance(v, dict) and (sub := _only_adapters(v)):
      out[k] = sub
  return out


def test_a_classifier_with_lora_trains_its_head_and_the_adapters(pretrained, tmp_path):
  """task.name=classify: the head the LM checkpoint lacks (cls_head, finetune.init_new) trains beside
  the adapters, and the checkpoints hold both; the backbone is frozen."""
  from tests.test_classify import _write_labelled
  pre_cfg, pre_dir = pretrained
  cfg = pre_cfg.copy_and_resolve_references()
  cfg.task.name, cfg.data.packing, cfg.data.val_files = "classify", "pad", ("val.jsonl",)
  cfg.data.path = _write_labelled(tmp_path / "data", n_train=24, n_val=8)
  cfg.finetune.init_from, cfg.lora.rank = pre_dir, 4
  task, _ = complete_config(cfg, 8, log=lambda *a: None)
  program = build_program(cfg, make_mesh((-1, 1, 1)), task)
  trainable, _ = program.partition.split(program.abstract_params)
  paths = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]}
  heads = {p for p in paths if p.startswith("cls_head/")}
  assert heads and all("/lora/" in p for p in paths - heads)
  saved = program.checkpoint_view(program.abstract_state()).params
  assert {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]} == paths
