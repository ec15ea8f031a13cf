"""Hugging Face models in and out: config.json + safetensors <-> our checkpoints.

Owns: reading and writing safetensors without torch (safetensors_io), the per-family maps of config
keys and tensor names (families: FAMILIES, gpt2.py, llama.py), the conversions (import_hf, export_hf)
and the tokenizer files that travel with a model (tokenizer_files). Nothing is unpickled: a
directory with only pytorch_model.bin is refused. Must not import the trainer; transformers and torch
are test-only references, never imported here.
"""
from research.hf.errors import HFConvertError
from research.hf.families import FAMILIES

__all__ = ["HFConvertError", "FAMILIES"]
