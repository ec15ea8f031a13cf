"""Models in Flax NNX, by architecture (`model.arch`; `registry.py`): the decoder-only transformer
today.

Owns: the networks, their building blocks, the published presets, and the parameter and FLOP counts
derived from a model config. Must not know about optimizers, data or meshes beyond the logical axis
names it puts on parameters and activations.
"""
from research.models.presets import PRESETS, apply_preset, preset_config
from research.models.registry import (ARCHITECTURES, abstract_model, build_model, count_params,
                                      flops_per_token, get_architecture)
from research.models.transformer import DecoderLM

__all__ = ["DecoderLM", "PRESETS", "ARCHITECTURES", "apply_preset", "preset_config", "abstract_model",
           "build_model", "count_params", "flops_per_token", "get_architecture"]
