"""`FAMILIES`: the Hugging Face architectures we read and write, by name (our model.family and
config.json's model_type), and the choice of one for an export.

Each `Family` has
  from_hf_config(config.json dict, path)  -> model.* overrides (HFConvertError naming the key)
  to_hf_config(model cfg)                 -> config.json dict (HFConvertError naming the model.* key)
  tensor_map(model cfg)                   -> [tensor_map.Tensor]: every HF tensor and its parameters
  hf_to_params(model cfg, HFTensors)      -> our parameters (pure dict, per-layer layout)
  params_to_hf(model cfg, params, dtype)  -> {HF name: array}
Adding a family: a module like llama.py / gpt2.py (from_hf, to_hf, tensors, ignored) and an entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from research.hf import gpt2, llama
from research.hf.config_map import HFConfig
from research.hf.errors import HFConvertError
from research.hf.tensor_map import HFTensors, Tensor, read_params, write_tensors


@dataclasses.dataclass(frozen=True)
class Family:
  name: str              # model.family, and config.json's model_type
  architecture: str      # config.json's architectures[0]
  prefix: str            # the base model's prefix in the *ForCausalLM tensor names
  _from_hf: Callable
  _to_hf: Callable
  _tensors: Callable[..., list[Tensor]]
  _ignored: Callable

  def from_hf_config(self, values: dict, path: str = "config.json") -> dict:
    return self._from_hf(HFConfig(values, path), self.name)

  def to_hf_config(self, cfg) -> dict:
    return self._to_hf(cfg, self.name)

  def tensor_map(self, cfg) -> list[Tensor]:
    return self._tensors(cfg)

  def ignored(self, cfg) -> Callable[[str], bool]:
    return self._ignored(cfg)

  def hf_to_params(self, cfg, tensors: HFTensors) -> dict:
    params = read_params(self.tensor_map(cfg), tensors)
    tensors.check_all_used(self.architecture)
    return params

  def params_to_hf(self, cfg, params: dict, dtype) -> dict:
    return write_tensors(self.tensor_map(cfg), params, dtype)


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", gpt2.ARCHITECTURE, "transformer.", gpt2.from_hf, gpt2.to_hf, gpt2.tensors, gpt2.ignored),
    **{name: Family(name, arch, "model.", llama.from_hf, llama.to_hf, llama.tensors, llama.ignored)
       for name, arch in llama.ARCHITECTURES.items()},
}
SUPPORTED = ", ".join(f"{f.name} ({f.architecture})" for f in FAMILIES.values())


def family_of_hf_config(c: HFConfig) -> Family:
  """The family config.json describes, by model_type (or architectures when it has none)."""
  model_type = c.values.get("model_type")
  if model_type is None:
    by_arch = {f.architecture: f for f in FAMILIES.values()}
    archs = c.values.get("architectures") or []
    found = [by_arch[a] for a in archs if a in by_arch]
    if found:
      return found[0]
    raise HFConvertError(f"{c.path}: no model_type (architectures: {archs}); supported: {SUPPORTED}")
  if model_type not in FAMILIES:
    raise HFConvertError(f"{c.path}: model_type={model_type!r} is not supported; supported: {SUPPORTED}")
  return FAMILIES[model_type]


def export_family(cfg) -> tuple[Family, dict]:
  """(family, config.json dict) for a model config: its own family when it fits, else the first that
  does (learned positions: GPT-2; RoPE: Llama, then Mistral, Qwen2, Gemma). None fits: the most
  telling refusal, one line naming the model.* key."""
  from research.models.registry import get_architecture
  families = get_architecture(cfg.get("arch", "decoder")).hf_families()  # the architecture's name maps
  rope = cfg.position == "rope"
  order = [n for n in families if (n != "gpt2") == rope]
  if cfg.family in order:
    order.remove(cfg.family)
    order.insert(0, cfg.family)
  errors = []
  for name in order:
    try:
      return families[name], families[name].to_hf_config(cfg)
    except HFConvertError as e:
      errors.append(e)
  raise errors[0]
