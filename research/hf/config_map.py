"""Reading a Hugging Face config.json, and the parts of the config mapping every family shares.

`HFConfig` wraps the parsed file: `req(key)` / `opt(key, default)` read keys with their types, and
every refusal is one HFConvertError line naming config.json's path and the key. RoPE settings come
in two spellings: transformers 5 writes `rope_parameters` ({rope_type, rope_theta, ...}), earlier
versions `rope_theta` plus `rope_scaling` ({type or rope_type, factor, ...}); both are read. On export
both are written, so transformers 4 and 5 load the result.
"""
from __future__ import annotations

import json
import os

from research.hf.errors import HFConvertError

ROPE_TYPES = ("default", "llama3")


class HFConfig:

  def __init__(self, values: dict, path: str):
    self.values, self.path = values, path

  def has(self, key: str) -> bool:
    return self.values.get(key) is not None

  def req(self, key: str, kind: type = int):
    if not self.has(key):
      raise HFConvertError(f"{self.path}: no {key} (a {self.family_label()} config needs it)")
    return self._typed(key, self.values[key], kind)

  def opt(self, key: str, default, kind: type | None = None):
    value = self.values.get(key)
    if value is None:
      return default
    return self._typed(key, value, kind or type(default))

  def fail(self, key: str, why: str) -> HFConvertError:
    return HFConvertError(f"{self.path}: {key}={json.dumps(self.values.get(key))}: {why}")

  def family_label(self) -> str:
    return str(self.values.get("model_type", "model"))

  def _typed(self, key: str, value, kind: type):
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
      return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise HFConvertError(f"{self.path}: {key}={json.dumps(value)} must be {kind.__name__}")
    return value


def load_config(hf_dir: str) -> HFConfig:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise HFConvertError(f"{hf_dir}: not a directory (give a Hugging Face model directory with config.json "
                         "and model.safetensors)")
  if not os.path.isfile(path):
    raise HFConvertError(f"{path}: missing; a Hugging Face model directory has config.json beside its "
                         "safetensors")
  try:
    with open(path) as f:
      values = json.load(f)
  except ValueError as e:
    raise HFConvertError(f"{path}: not JSON ({e})") from None
  if not isinstance(values, dict):
    raise HFConvertError(f"{path}: holds {type(values).__name__}, not a JSON object")
  return HFConfig(values, path)


def rope_from_hf(c: HFConfig) -> dict:
  """model.* RoPE keys (theta, llama3 scaling) from rope_parameters or rope_theta + rope_scaling."""
  params = c.values.get("rope_parameters") or c.values.get("rope_scaling") or {}
  key = "rope_parameters" if c.values.get("rope_parameters") else "rope_scaling"
  if not isinstance(params, dict):
    raise c.fail(key, "must be an object of RoPE settings")
  if any(isinstance(v, dict) for v in params.values()):
    raise c.fail(key, "per-layer RoPE settings are not supported (one setting for every layer is)")
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise HFConvertError(f"{c.path}: {key}.rope_type={kind!r} is not supported; supported: "
                         f"{', '.join(ROPE_TYPES)}")
  theta = params.get("rope_theta", c.values.get("rope_theta", 10000.0))
  if params.get("partial_rotary_factor", c.values.get("partial_rotary_factor", 1.0)) != 1.0:
    raise c.fail("partial_rotary_factor", "RoPE on part of each head is not supported (1.0 is)")
  out = dict(rope_theta=float(theta), rope_scaling="none")
  if kind == "llama3":
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
    if missing:
      raise HFConvertError(f"{c.path}: {key} of rope_type llama3 has no {missing[0]}")
    original = params.get("original_max_position_embeddings", c.values.get("original_max_position_embeddings"))
    out.update(rope_scaling="llama3", rope_scaling_factor=float(params["factor"]),
               rope_low_freq_factor=float(params["low_freq_factor"]),
               rope_high_freq_factor=float(params["high_freq_factor"]),
               rope_original_max_len=int(original or c.req("max_position_embeddings")))
  return out


def rope_to_hf(cfg) -> dict:
  """config.json RoPE keys for model.rope_theta / model.rope_scaling, in both spellings."""
  params = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
  out = {"rope_theta": float(cfg.rope_theta), "rope_parameters": params}
  if cfg.get("rope_scaling", "none") == "llama3":
    params.update(rope_type="llama3", factor=float(cfg.rope_scaling_factor),
                  low_freq_factor=float(cfg.rope_low_freq_factor),
                  high_freq_factor=float(cfg.rope_high_freq_factor),
                  original_max_position_embeddings=int(cfg.rope_original_max_len))
    out["rope_scaling"] = dict(params)
  return out


def refuse(key: str, value, architecture: str, why: str) -> HFConvertError:
  """The export refusal: model.<key>=<value> has no counterpart in `architecture`."""
  return HFConvertError(f"model.{key}={value!r}: {architecture} cannot express it ({why})")


def common_model_keys(family: str) -> dict:
  """Keys every import sets, whatever the checkpoint's: no dropout, float32 unless asked otherwise."""
  return dict(family=family, dropout=0.0, scan_layers=False, remat="none")
