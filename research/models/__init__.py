"""Decoder-only transformer language models in Flax NNX.

Owns: the network (`DecoderLM`), its building blocks, the published presets, and the parameter
and FLOP counts derived from a model config. Must not know about optimizers, data or meshes
beyond the logical axis names it puts on parameters and activations.
"""
from research.models.counting import count_params, flops_per_token
from research.models.presets import PRESETS, apply_preset, preset_config
from research.models.transformer import DecoderLM

__all__ = ["DecoderLM", "PRESETS", "apply_preset", "preset_config", "count_params", "flops_per_token"]
