"""Architectures by `model.arch`: how to build the module, count its parameters and FLOPs per
token, and which Hugging Face families it converts to and from (`model.family`).

Everything that needs "the model of this config" (the train state, the planner, loading a
checkpoint) asks here, so a new architecture is one entry, not an edit in each consumer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from flax import nnx

from research.models.counting import count_params as decoder_params
from research.models.counting import flops_per_token as decoder_flops
from research.models.transformer import DecoderLM


@dataclasses.dataclass(frozen=True)
class Architecture:
  name: str
  build: Callable[..., nnx.Module]                 # (model_cfg, rngs=nnx.Rngs) -> module
  count_params: Callable[[Any], int]               # exact, from the config alone
  flops_per_token: Callable[[Any, int], float]     # training FLOPs per token at a sequence length
  hf_families: Callable[[], dict]                  # model.family -> its Hugging Face config and tensor
                                                   # name maps (research/hf/families.py), read lazily


def _decoder_families() -> dict:
  from research.hf.families import FAMILIES
  return FAMILIES


ARCHITECTURES = {
    "decoder": Architecture("decoder", DecoderLM, decoder_params, decoder_flops, hf_families=_decoder_families),
}


def get_architecture(name: str) -> Architecture:
  if name not in ARCHITECTURES:
    raise ValueError(f"model.arch={name!r} is not one of {', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[name]


def build_model(model_cfg, rngs: nnx.Rngs, extensions: Sequence[Callable] = ()) -> nnx.Module:
  """The architecture's module, then each of `extensions` (module, rngs) -> None in order: what a run
  adds to the backbone in place (a task's head, adapters), so the backbone's parameter paths stay
  those of its checkpoints (research.tasks.model_extensions(cfg) lists a run's)."""
  model = get_architecture(model_cfg.arch).build(model_cfg, rngs=rngs)
  for extend in extensions:
    extend(model, rngs)
  return model


def count_params(model_cfg) -> int:
  return get_architecture(model_cfg.arch).count_params(model_cfg)


def flops_per_token(model_cfg, seq_len: int) -> float:
  return get_architecture(model_cfg.arch).flops_per_token(model_cfg, seq_len)


def abstract_model(model_cfg, extensions: Sequence[Callable] = ()) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, abstract params as a pure dict, logical axis names as a matching pure dict)."""
  model = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0), extensions))
  graphdef, params = nnx.split(model, nnx.Param)
  names: dict = {}
  for path, variable in nnx.to_flat_state(params):
    node = names
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = variable.get_metadata()["logical_axes"]
  return graphdef, nnx.to_pure_dict(params), names
