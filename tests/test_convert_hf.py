"""Hugging Face import and export (research/hf, scripts/convert_hf.py) against transformers.

Tiny random-weight models of every supported family are built with transformers (nothing is
downloaded), saved with save_pretrained, converted, and compared with transformers' own PyTorch
forward pass on the CPU in float32: logits within 1e-4 on a batch with left and right padding (only
real positions compared; ours gets positions and segment ids), 20 greedy tokens identical, a bf16
save read back, ours -> HF -> transformers again, and models made here exported. Plus every refusal,
each one line. transformers and torch are test-only references; skipped without them.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import research  # noqa: E402
from research.checkpoint.params_only import save_params_checkpoint  # noqa: E402
from research.config.base import base_config  # noqa: E402
from research.hf import FAMILIES, HFConvertError  # noqa: E402
from research.hf.export_hf import export_hf  # noqa: E402
from research.hf.import_hf import import_hf  # noqa: E402
from research.hf.safetensors_io import TensorFiles, parse_size  # noqa: E402
from research.models import DecoderLM, layout, preset_config  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

VOCAB, MAX_LEN = 300, 64      # 300: not a multiple of anything, so a transposed [D, V] cannot slip through
BATCH, LENGTH, PROMPT = 3, 24, 4
TOL = 1e-4
F32 = torch.float32


def _hf_configs() -> dict:
  c = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=MAX_LEN, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  llama3_rope = dict(rope_type="llama3", rope_theta=500000.0, factor=4.0, low_freq_factor=1.0,
                     high_freq_factor=4.0, original_max_position_embeddings=16)
  return {
      "gpt2": transformers.GPT2Config(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0),
      "llama": transformers.LlamaConfig(**c, num_key_value_heads=2),                  # Llama 2: GQA, untied
      "llama3.1": transformers.LlamaConfig(**c, num_key_value_heads=2, rope_parameters=llama3_rope,
                                           tie_word_embeddings=True),                  # 3.2-style tied head
      "mistral": transformers.MistralConfig(**c, num_key_value_heads=2, sliding_window=5),
      "qwen2": transformers.Qwen2Config(**c, num_key_value_heads=2),
      "gemma": transformers.GemmaConfig(**c, num_key_value_heads=1, head_dim=32),     # MQA, H*Dh != D
  }


NAMES = list(_hf_configs())


def _perturb(model) -> None:
  """Weights O(0.1) and norm scales / biases away from 1 / 0, so that logits are O(1) and every tensor
  matters."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.1
      is_scale = name.endswith("weight") and p.ndim == 1 and not isinstance(model, transformers.GemmaForCausalLM)
      p.copy_(noise + (1.0 if is_scale else 0.0))


def _tokenizer(directory: str) -> None:
  """A word-level tokenizer.json: w0 .. w297, [UNK] = 298, <eos> = 299."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {f"w{i}": i for i in range(VOCAB - 2)} | {"[UNK]": VOCAB - 2, "<eos>": VOCAB - 1}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")
  fast.save_pretrained(directory)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """name -> (float32 reference model, its f32 directory, a bf16 save of it). 'llama' is saved in
  shards; 'gpt2' carries a tokenizer."""
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for i, (name, config) in enumerate(_hf_configs().items()):
    torch.manual_seed(i)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(F32).eval()
    _perturb(model)
    f32_dir, bf16_dir = str(root / name), str(root / f"{name}-bf16")
    model.save_pretrained(f32_dir, max_shard_size="100KB" if name == "llama" else "50GB")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(bf16_dir)
    if name == "gpt2":
      _tokenizer(f32_dir)
    out[name] = (model, f32_dir, bf16_dir)
  return out


class Ours:
  """A converted model's forward pass, jitted once per architecture and reused for other weights."""

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)
    self.fn = jax.jit(lambda s, t, p, g: nnx.merge(self.graphdef, s)(t, positions=p, segment_ids=g))

  def __call__(self, tokens, positions, segments, state=None):
    return np.asarray(self.fn(self.state if state is None else state, jnp.asarray(tokens, jnp.int32),
                              jnp.asarray(positions, jnp.int32), jnp.asarray(segments, jnp.int32)))


@pytest.fixture(scope="module")
def converted(hf, tmp_path_factory):
  """name -> (Ours, config, checkpoint dir) for each HF model, imported and loaded by research.load_model."""
  root = tmp_path_factory.mktemp("ours")
  out = {}
  for name, (_, f32_dir, _) in hf.items():
    ckpt = str(root / name)
    import_hf(f32_dir, ckpt)
    model, cfg = research.load_model(ckpt)
    out[name] = (Ours(model), cfg, ckpt)
  return out


def _padded_batch(seed: int = 0):
  """Row 0 unpadded, row 1 left-padded by 5, row 2 right-padded by 7: tokens, mask, positions."""
  tokens = np.random.default_rng(seed).integers(3, VOCAB, size=(BATCH, LENGTH))
  mask = np.ones((BATCH, LENGTH), np.int64)
  mask[1, :5], mask[2, -7:] = 0, 0
  tokens = np.where(mask == 1, tokens, 0)
  positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
  return tokens, mask, positions


def _hf_logits(model, tokens, mask, positions) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions), use_cache=False)
  return out.logits.float().numpy()


def _compare(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
  real = mask.astype(bool)
  assert ours.shape == ref.shape and np.isfinite(ours[real]).all()
  assert np.abs(ref[real]).max() > 1.0, "logits too small for a meaningful comparison"
  diff = float(np.abs(ours[real] - ref[real]).max())
  assert diff <= TOL, f"max |ours - hf| = {diff:.2e} on real positions"
  return diff


# ----------------------------------------------------------------------------------------------
# Import: logits, greedy decoding, bfloat16.


@pytest.mark.parametrize("name", NAMES)
def test_import_matches_transformers_on_a_padded_batch(hf, converted, name):
  ours, cfg, _ = converted[name]
  assert cfg.model.family == name.split("3")[0] and cfg.model.vocab_size == VOCAB
  tokens, mask, positions = _padded_batch()
  _compare(ours(tokens, positions, mask), _hf_logits(hf[name][0], tokens, mask, positions), mask)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_20_tokens_identical(hf, converted, name):
  ours = converted[name][0]
  prompt = np.random.default_rng(1).integers(3, VOCAB, size=(BATCH, PROMPT))
  ids = torch.from_numpy(prompt)
  with torch.no_grad():
    for _ in range(LENGTH - PROMPT):   # the whole prefix each step, no cache
      next_id = hf[name][0](input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
      ids = torch.cat([ids, next_id[:, None]], dim=1)
  buf = np.zeros((BATCH, LENGTH), np.int64)
  buf[:, :PROMPT] = prompt
  positions, segments = np.broadcast_to(np.arange(LENGTH), buf.shape), np.ones_like(buf)
  for t in range(PROMPT, LENGTH):      # one fixed shape: later positions cannot affect t - 1 (causal)
    buf[:, t] = ours(buf, positions, segments)[:, t - 1].argmax(-1)
  np.testing.assert_array_equal(buf, ids.numpy())


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_import_matches_transformers(hf, converted, tmp_path, name):
  """A bf16 save widens exactly to float32: compared with transformers reading the same file in f32."""
  _, _, bf16_dir = hf[name]
  assert TensorFiles(bf16_dir).dtype_name(TensorFiles(bf16_dir).names()[0]) == "BF16"
  cfg = import_hf(bf16_dir, str(tmp_path / "ckpt"))
  model, _ = research.load_model(str(tmp_path / "ckpt"))
  assert cfg.model.param_dtype == "float32"
  ref = transformers.AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=F32, attn_implementation="eager").eval()
  ours = converted[name][0]
  tokens, mask, positions = _padded_batch(2)
  _compare(ours(tokens, positions, mask, state=nnx.split(model)[1]), _hf_logits(ref, tokens, mask, positions), mask)


def test_hub_layouts_import_the_same(hf, converted, tmp_path):
  """GPT-2 as the hub stores it (GPT2Model names without 'transformer.', causal-mask buffers
  h.<i>.attn.bias), and a Llama 3.1 config.json in transformers 4's spelling (rope_theta +
  rope_scaling): the same model."""
  from safetensors.numpy import load_file, save_file
  d = shutil.copytree(hf["gpt2"][1], tmp_path / "gpt2-hub")
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(d / "model.safetensors").items()}
  tensors.update({f"h.{i}.attn.bias": np.tril(np.ones((1, 1, MAX_LEN, MAX_LEN), np.float32)) for i in range(2)})
  save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
  import_hf(str(d), str(tmp_path / "ckpt"))
  model, _ = research.load_model(str(tmp_path / "ckpt"))
  tokens, mask, positions = _padded_batch(6)
  ours = converted["gpt2"][0](tokens, positions, mask, state=nnx.split(model)[1])
  _compare(ours, _hf_logits(hf["gpt2"][0], tokens, mask, positions), mask)

  config = json.load(open(os.path.join(hf["llama3.1"][1], "config.json")))
  rope = config.pop("rope_parameters")
  d = shutil.copytree(hf["llama3.1"][1], tmp_path / "llama-v4")
  json.dump(dict(config, rope_theta=rope.pop("rope_theta"), rope_scaling=rope), open(d / "config.json", "w"))
  cfg = import_hf(str(d), str(tmp_path / "llama-ckpt"))
  assert cfg.model.to_dict() == converted["llama3.1"][1].model.to_dict()
  assert (cfg.model.rope_scaling, cfg.model.rope_scaling_factor, cfg.model.rope_original_max_len) == ("llama3", 4.0, 16)


# ----------------------------------------------------------------------------------------------
# Export: round trips and models made here.


def _from_pretrained(directory: str):
  """transformers' model from an export: every tensor it has read from the files, none left over."""
  model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                                  output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  return model.to(F32).eval()


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_transformers(hf, converted, tmp_path, name):
  model, f32_dir, _ = hf[name]
  out = str(tmp_path / "hf")
  written = export_hf(converted[name][2], out)
  assert "config.json" in written and "model.safetensors" in written
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["architectures"] == [FAMILIES[converted[name][1].model.family].architecture]
  assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)   # from the imported config.json
  tokens, mask, positions = _padded_batch(3)
  _compare(_hf_logits(_from_pretrained(out), tokens, mask, positions), _hf_logits(model, tokens, mask, positions),
           mask)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_round_trip_is_bit_exact(hf, tmp_path, name):
  """bf16 in, bf16 parameters, bf16 out: every tensor the same bits, the config says bfloat16."""
  _, _, bf16_dir = hf[name]
  import_hf(bf16_dir, str(tmp_path / "ckpt"), param_dtype="bfloat16")
  export_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  a, b = TensorFiles(bf16_dir), TensorFiles(str(tmp_path / "hf"))
  assert sorted(a.names()) == sorted(b.names())
  for n in a.names():
    assert b.dtype_name(n) == "BF16"
    np.testing.assert_array_equal(np.asarray(a.get(n)).view(np.uint16), np.asarray(b.get(n)).view(np.uint16))
  assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "bfloat16"


def test_tokenizer_travels_with_the_model(hf, converted, tmp_path):
  """Saved in the checkpoint as data.tokenizer=hf (what finetuning reads), exported for AutoTokenizer."""
  from research.checkpoint.loading import read_tokenizer
  _, f32_dir, _ = hf["gpt2"]
  _, cfg, ckpt = converted["gpt2"]
  assert (cfg.data.tokenizer, cfg.data.tokenizer_dir) == ("hf", os.path.join(ckpt, "hf_tokenizer"))
  assert "tokenizer.json" in os.listdir(os.path.join(ckpt, "hf_tokenizer"))
  text = "w3 w17 w300"
  before = transformers.AutoTokenizer.from_pretrained(f32_dir)
  ids = before(text, add_special_tokens=False)["input_ids"]
  assert ids == [3, 17, VOCAB - 2]
  saved = read_tokenizer(ckpt, str(tmp_path / "cache"))
  assert (saved.kind, saved.encode(text), saved.eos_id) == ("hf", ids, VOCAB - 1)
  written = export_hf(ckpt, str(tmp_path / "hf"))
  assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(written)
  after = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert after(text, add_special_tokens=False)["input_ids"] == ids
  assert converted["llama"][1].data.tokenizer == "byte"      # no tokenizer shipped: none saved


def test_finetune_reads_a_converted_model(converted, tiny_cfg, tmp_path):
  """What finetune.init_from=OUT does before training (a whole run from OUT takes ~50 s here; the
  finetune tests train): the checkpoint's architecture and tokenizer, its parameters in the run's
  (scanned) layout."""
  from research.checkpoint.loading import restore_params
  from research.models import abstract_model
  from research.train.finetune import adopt_checkpoint_model, checkpoint_tokenizer
  ckpt = converted["gpt2"][2]
  cfg = tiny_cfg
  cfg.finetune.init_from, cfg.model.scan_layers = ckpt, True
  logs = []
  adopt_checkpoint_model(cfg, logs.append)
  assert (cfg.model.vocab_size, cfg.model.embed_dim, cfg.model.max_seq_len) == (VOCAB, 64, MAX_LEN)
  tokenizer = checkpoint_tokenizer(cfg, str(tmp_path / "cache"), logs.append)
  assert tokenizer.kind == "hf" and "tokenizer of the checkpoint (hf-" in logs[-1]
  params = restore_params(ckpt, abstract_model(cfg.model)[1], convert=layout.stack_layers)
  assert params["blocks"]["attn"]["q"]["kernel"].shape == (2, 64, 4, 16)
  # the trainer's start: the run's sharded state takes OUT's parameters
  from research.sharding import make_mesh
  from research.train.finetune import load_initial_params
  from research.train.program import build_program
  from research.train.trainer import host_params
  cfg.train.seq_len = min(cfg.train.seq_len, MAX_LEN)
  program = build_program(cfg, make_mesh((2, 2, 2)))
  state = load_initial_params(cfg, program, program.init_state(), host_params, logs.append)
  assert f"finetune: parameters from {ckpt}" in logs[-1]
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))


def test_sharded_export_loads_and_reimports(hf, converted, tmp_path):
  """Past max_shard_size: shards + model.safetensors.index.json, read by transformers and by us."""
  model, _, _ = hf["llama"]
  out = str(tmp_path / "hf")
  written = export_hf(converted["llama"][2], out, max_shard_size="60KB")
  assert "model.safetensors.index.json" in written and "model.safetensors" not in written
  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  shards = [n for n in written if n.startswith("model-")]
  assert sorted(set(index["weight_map"].values())) == shards and len(shards) > 2
  tokens, mask, positions = _padded_batch(4)
  _compare(_hf_logits(_from_pretrained(out), tokens, mask, positions), _hf_logits(model, tokens, mask, positions),
           mask)
  import_hf(out, str(tmp_path / "again"))
  again, _ = research.load_model(str(tmp_path / "again"))
  first, _ = research.load_model(converted["llama"][2])
  for x, y in zip(jax.tree.leaves(nnx.state(first, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_parse_size():
  assert parse_size(1234) == 1234
  assert parse_size("10MB") == 10_000_000 and parse_size("2GiB") == 2 << 30 and parse_size("500kb") == 500_000
  with pytest.raises(HFConvertError, match="max_shard_size='lots'"):
    parse_size("lots")


def _made_here(preset: str, **overrides):
  """A DecoderLM config made here with random parameters (numpy: no eager init to wait for), norm
  scales near 1 and biases near 0, as a full config + params."""
  from research.hf.import_hf import abstract_params
  cfg = base_config()
  cfg.model = preset_config(preset, vocab_size=VOCAB, max_seq_len=MAX_LEN, **overrides)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: (0.1 * rng.standard_normal(x.shape) + (p[-1].key == "scale")).astype(x.dtype),
      abstract_params(cfg.model))
  return cfg, params


@pytest.mark.parametrize("preset, overrides", [("gpt2-tiny", {}), ("gpt2-tiny", {"use_bias": False}),
                                               ("llama-tiny", {})])
def test_models_made_here_export_and_transformers_reproduces_them(tmp_path, preset, overrides):
  from research.data.tokenizers import ByteTokenizer
  cfg, params = _made_here(preset, **overrides)
  save_params_checkpoint(str(tmp_path / "ckpt"), params, cfg, tokenizer=ByteTokenizer())
  written = export_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  assert written[:2] == ["config.json", "model.safetensors"] and "tokenizer.json" in written
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert tokenizer("hé", add_special_tokens=False)["input_ids"] == list("hé".encode())
  model, _ = research.load_model(str(tmp_path / "ckpt"))
  tokens, mask, positions = _padded_batch(5)
  ours = Ours(model)(tokens, positions, mask)
  _compare(ours, _hf_logits(_from_pretrained(str(tmp_path / "hf")), tokens, mask, positions), mask)


def test_scanned_checkpoint_exports_like_the_unscanned_one(tmp_path):
  cfg, params = _made_here("llama-tiny")
  save_params_checkpoint(str(tmp_path / "plain"), params, cfg)
  cfg.model.scan_layers = True
  save_params_checkpoint(str(tmp_path / "scanned"), layout.stack_layers(params), cfg)
  export_hf(str(tmp_path / "plain"), str(tmp_path / "a"))
  export_hf(str(tmp_path / "scanned"), str(tmp_path / "b"))
  a, b = TensorFiles(str(tmp_path / "a")), TensorFiles(str(tmp_path / "b"))
  assert sorted(a.names()) == sorted(b.names())
  for n in a.names():
    np.testing.assert_array_equal(a.get(n), b.get(n))


# ----------------------------------------------------------------------------------------------
# Refusals: one line each, naming the file and the key or tensor.


def _one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


def _edit_config(src: str, dst, **changes) -> str:
  shutil.copytree(src, dst)
  path = os.path.join(dst, "config.json")
  config = json.load(open(path))
  config.update(changes)
  json.dump(config, open(path, "w"))
  return str(dst)


def _rewrite_tensors(src: str, dst, edit) -> str:
  from safetensors.numpy import load_file, save_file
  shutil.copytree(src, dst)
  path = os.path.join(dst, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})
  return str(dst)


def test_pickles_only_is_refused(hf, tmp_path):
  d = tmp_path / "bin"
  d.mkdir()
  shutil.copy(os.path.join(hf["qwen2"][1], "config.json"), d)
  (d / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(HFConvertError) as e:
    import_hf(str(d), str(tmp_path / "out"))
  assert "pytorch_model.bin: PyTorch pickles are not read" in _one_line(e) and "safetensors" in str(e.value)
  assert not os.path.exists(tmp_path / "out")


def test_missing_config_is_refused(hf, tmp_path):
  d = shutil.copytree(hf["qwen2"][1], tmp_path / "noconfig")
  os.remove(d / "config.json")
  with pytest.raises(HFConvertError) as e:
    import_hf(str(d), str(tmp_path / "out"))
  assert _one_line(e).startswith(f"{d}/config.json: missing")


def test_unsupported_architecture_lists_the_supported_ones(hf, tmp_path):
  d = _edit_config(hf["qwen2"][1], tmp_path / "bert", model_type="bert", architectures=["BertForMaskedLM"])
  with pytest.raises(HFConvertError) as e:
    import_hf(d, str(tmp_path / "out"))
  assert "model_type='bert' is not supported; supported: gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM)" in _one_line(e)
  assert "gemma (GemmaForCausalLM)" in str(e.value)


@pytest.mark.parametrize("change, expected", [
    (dict(hidden_act="gelu"), r'config.json: hidden_act="gelu": the gated MLP is supported with silu'),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     r"config.json: rope_parameters.rope_type='yarn' is not supported; supported: default, llama3"),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, layer_types=None),
     r"config.json: max_window_layers=1: a sliding window on some layers only is not supported"),
    (dict(num_key_value_heads=3), r"config.json: num_key_value_heads=3: must divide num_attention_heads=4"),
    (dict(hidden_size=None), r"config.json: no hidden_size"),
])
def test_config_refusals_name_the_key(hf, tmp_path, change, expected):
  d = _edit_config(hf["qwen2"][1], tmp_path / "edited", **change)
  with pytest.raises(HFConvertError, match=expected) as e:
    import_hf(d, str(tmp_path / "out"))
  _one_line(e)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
     r"model.safetensors: no tensor model.layers.1.mlp.up_proj.weight, which config.json's model needs"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((64, 32), np.float32)}),
     r"model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape \(64, 32\), config.json's "
     r"model needs \(32, 64\)"),
    (lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}),
     r"model.safetensors: tensor model.layers.0.extra.weight is not part of a Qwen2ForCausalLM"),
])
def test_tensor_refusals_name_the_file_and_tensor(hf, tmp_path, edit, expected):
  d = _rewrite_tensors(hf["qwen2"][1], tmp_path / "edited", edit)
  with pytest.raises(HFConvertError, match=expected) as e:
    import_hf(d, str(tmp_path / "out"))
  _one_line(e)


def test_sharded_index_naming_a_missing_file_is_refused(hf, tmp_path):
  d = shutil.copytree(hf["llama"][1], tmp_path / "shards")
  os.remove(d / "model-00002-of-00005.safetensors")
  with pytest.raises(HFConvertError, match=r"model.safetensors.index.json: lists model-00002-of-00005.safetensors") as e:
    import_hf(str(d), str(tmp_path / "out"))
  _one_line(e)


@pytest.mark.parametrize("preset, overrides, expected", [
    ("gpt2-tiny", dict(mlp_activation="swiglu", mlp_dim=64),
     r"model.mlp_activation='swiglu': GPT2LMHeadModel cannot express it \(its MLP is not gated"),
    ("llama-tiny", dict(norm="layernorm"), r"model.norm='layernorm': LlamaForCausalLM cannot express it"),
    ("llama-tiny", dict(mlp_activation="geglu", embed_scale=True),
     r"model.mlp_activation='geglu': LlamaForCausalLM cannot express it"),
])
def test_export_refuses_what_no_architecture_expresses(tmp_path, preset, overrides, expected):
  cfg, params = _made_here(preset, **overrides)
  save_params_checkpoint(str(tmp_path / "ckpt"), params, cfg)
  with pytest.raises(HFConvertError, match=expected) as e:
    export_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  _one_line(e)
  assert not os.path.exists(tmp_path / "hf")


def test_export_never_overwrites_a_model(converted, tmp_path):
  export_hf(converted["qwen2"][2], str(tmp_path))
  before = open(tmp_path / "model.safetensors", "rb").read()
  with pytest.raises(HFConvertError, match=r"already holds config.json|already holds model.safetensors") as e:
    export_hf(converted["qwen2"][2], str(tmp_path))
  _one_line(e)
  assert open(tmp_path / "model.safetensors", "rb").read() == before


def test_export_picks_an_architecture_by_the_switches(tmp_path):
  """A RoPE model labelled gpt2 exports as Llama; q/k/v biases alone as Qwen2; a window as Mistral."""
  from research.hf.families import export_family
  for overrides, arch in ((dict(family="gpt2"), "LlamaForCausalLM"), (dict(qkv_bias=True), "Qwen2ForCausalLM"),
                          (dict(sliding_window=8), "MistralForCausalLM")):
    family, config = export_family(preset_config("llama-tiny", **overrides))
    assert config["architectures"] == [arch] == [family.architecture]


def _script(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "scripts/convert_hf.py", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_script_round_trip_and_one_line_errors(hf, tmp_path):
  proc = _script(f"--hf_dir={hf['gemma'][1]}", f"--out={tmp_path / 'ckpt'}")
  assert proc.returncode == 0, proc.stderr
  assert "gemma" in proc.stdout and "research.load_model" in proc.stdout
  proc = _script("--to_hf", f"--checkpoint={tmp_path / 'ckpt'}", f"--out={tmp_path / 'hf'}", "--max_shard_size=40KB")
  assert proc.returncode == 0, proc.stderr
  assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json")
  d = tmp_path / "bin"
  d.mkdir()
  (d / "pytorch_model.bin").write_bytes(b"x")
  proc = _script(f"--hf_dir={d}", f"--out={tmp_path / 'nope'}")
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "safetensors" in lines[0]


class _Words:
  """The detokenizer the engine needs for text; the ids are what is compared."""
  bos_id, eos_id, add_bos = 1, 2, False

  def decode(self, ids):
    return " ".join(f"w{i}" for i in ids)


def _hf_generate(model, prompt, **kwargs):
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True, **kwargs)
  return out


def _until_end(ids, end):
  ids = [int(t) for t in ids]
  return ids[:ids.index(end) + 1] if end in ids else ids


@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_equals_transformers_generate(hf, converted, name):
  """Greedy: three prompts of different lengths decoded together from the KV cache give, each, the
  tokens transformers' generate gives it alone. Beam search (3 beams, 3 returned, an end token the
  model does emit): the same hypotheses in the same order, with the same scores."""
  from research.infer.beam import beam_search
  from research.infer.engine import Engine, SamplingParams
  hf_model, (_, cfg, ckpt) = hf[name][0], converted[name]
  model, cfg = research.load_model(ckpt)
  engine = Engine(model, cfg, _Words(), num_slots=4)
  rng = np.random.default_rng(2)
  prompts = [[int(t) for t in rng.integers(3, VOCAB, size=n)] for n in (3, 7, 11)]
  greedy = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
  for prompt, ours in zip(prompts, greedy):
    ref = _hf_generate(hf_model, prompt, max_new_tokens=12, eos_token_id=None).sequences[0, len(prompt):]
    assert ours.token_ids == [int(t) for t in ref]
  end = greedy[0].token_ids[4]      # an end token greedy decoding reaches: some beams finish early
  for prompt in prompts[:2]:
    ref = _hf_generate(hf_model, prompt, max_new_tokens=8, num_beams=3, num_return_sequences=3, eos_token_id=end,
                       length_penalty=1.0, early_stopping=False)
    ours = beam_search(engine.decoder, [prompt], num_beams=3, max_new_tokens=8, end_ids=[end],
                       num_return_sequences=3, length_penalty=1.0)[0]
    assert [h.token_ids for h in ours] == [_until_end(s[len(prompt):], end) for s in ref.sequences.tolist()]
    np.testing.assert_allclose([h.score for h in ours], ref.sequences_scores.numpy(), atol=1e-4)
