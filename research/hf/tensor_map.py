"""One Hugging Face tensor <-> one or more of our parameters: the declarative map each family lists.

A `Tensor` names the HF tensor (with the *ForCausalLM prefix), its shape, our parameter path(s) and
shapes, and how the layouts differ:
  transpose  torch nn.Linear keeps [out, in], we keep [in, ..., out] (x @ kernel); GPT-2's Conv1D is
             already [in, out]
  fused      several of ours concatenated along `axis` (GPT-2's c_attn = q | k | v)
  zeros      no parameter of ours (a bias our model leaves out): written as zeros on export, so the
             HF model computes what ours does
Reshapes between [H * Dh] and [H, Dh] follow from the shapes. `HFTensors` reads a directory's
tensors as the map asks for them: shape-checked, converted to one dtype, every file tensor accounted for.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from research.hf.errors import HFConvertError
from research.hf.safetensors_io import FLOATS, TensorFiles

Path = tuple  # ('blocks', 0, 'attn', 'q', 'kernel')


@dataclasses.dataclass(frozen=True)
class Tensor:
  hf: str
  hf_shape: tuple[int, ...]
  ours: tuple[Path, ...]                  # () : zeros (export only)
  our_shapes: tuple[tuple[int, ...], ...] = ()
  transpose: bool = False
  axis: int = 0                           # fused parts' axis, in the untransposed ([in, out]) layout

  def _layout_shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.hf_shape)) if self.transpose else self.hf_shape

  def _part_lengths(self) -> list[int]:
    layout = self._layout_shape()
    other = int(np.prod(layout)) // layout[self.axis]
    return [int(np.prod(s)) // other for s in self.our_shapes]

  def to_ours(self, x: np.ndarray) -> list[np.ndarray]:
    x = x.T if self.transpose else x
    if len(self.ours) == 1:
      return [x.reshape(self.our_shapes[0])]
    parts = np.split(x, np.cumsum(self._part_lengths())[:-1], axis=self.axis)
    return [p.reshape(s) for p, s in zip(parts, self.our_shapes)]

  def to_hf(self, values: list[np.ndarray], dtype) -> np.ndarray:
    if not self.ours:
      return np.zeros(self.hf_shape, dtype)
    layout = list(self._layout_shape())
    parts = []
    for value, length in zip(values, self._part_lengths()):
      layout[self.axis] = length
      parts.append(np.asarray(value).reshape(layout))
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.axis)
    return np.ascontiguousarray(x.T if self.transpose else x).astype(dtype)


def linear(hf: str, ours: Path, our_shape: tuple[int, ...], hf_shape: tuple[int, int]) -> Tensor:
  """A torch nn.Linear weight ([out, in]) for one of our kernels."""
  return Tensor(hf, hf_shape, (ours,), (our_shape,), transpose=True)


def same(hf: str, ours: Path, our_shape: tuple[int, ...], hf_shape: tuple[int, ...] | None = None) -> Tensor:
  """The same numbers in row-major order (norms, biases, embeddings, Conv1D weights)."""
  return Tensor(hf, hf_shape or (int(np.prod(our_shape)),), (ours,), (our_shape,))


class HFTensors:
  """A model directory's tensors by their *ForCausalLM names. A file saved from the base model
  (GPT2Model, LlamaModel: no 'transformer.' / 'model.' prefix) is read the same way."""

  def __init__(self, files: TensorFiles, prefix: str, dtype, ignored: Callable[[str], bool]):
    self.files, self.prefix, self.dtype, self.ignored = files, prefix, np.dtype(dtype), ignored
    self.used: set[str] = set()

  def _resolve(self, name: str) -> str | None:
    if name in self.files:
      return name
    if name.startswith(self.prefix) and name[len(self.prefix):] in self.files:
      return name[len(self.prefix):]
    return None

  def has(self, name: str) -> bool:
    return self._resolve(name) is not None

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    actual = self._resolve(name)
    if actual is None:
      raise HFConvertError(f"{self.files.where(name)}: no tensor {name}, which config.json's model needs")
    got = self.files.shape(actual)
    if got != tuple(shape):
      raise HFConvertError(f"{self.files.where(actual)}: tensor {actual} has shape {got}, config.json's model "
                           f"needs {tuple(shape)}")
    if self.files.dtype_name(actual) not in FLOATS:
      raise HFConvertError(f"{self.files.where(actual)}: tensor {actual} holds {self.files.dtype_name(actual)}, "
                           f"not floating point ({', '.join(FLOATS)})")
    self.used.add(actual)
    return np.array(self.files.get(actual), dtype=self.dtype)

  def mark_used(self, name: str) -> None:
    actual = self._resolve(name)
    if actual is not None:
      self.used.add(actual)

  def check_all_used(self, architecture: str) -> None:
    left = [n for n in self.files.names() if n not in self.used and not self.ignored(n)]
    if left:
      more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
      raise HFConvertError(f"{self.files.where(left[0])}: tensor {left[0]}{more} is not part of a {architecture} "
                           "as config.json describes it; nothing would read it")


def output_head(cfg, d: int, v: int) -> list[Tensor]:
  """The untied output head, as every family stores it ('lm_head.weight' [V, D]); none when tied."""
  return [] if cfg.tie_embeddings else [linear("lm_head.weight", ("lm_head", "kernel"), (d, v), (v, d))]


def ignoring(buffers: str, cfg) -> Callable[[str], bool]:
  """name -> whether no parameter reads it: the family's buffers (a regex), and a tied model's
  'lm_head.weight' (a copy of the embedding some files carry)."""
  pattern = re.compile(buffers + ("|^lm_head\\.weight$" if cfg.tie_embeddings else ""))
  return lambda name: bool(pattern.search(name))


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def read_params(specs: list[Tensor], tensors: HFTensors) -> dict:
  """Our parameters (a pure dict, per-layer layout) from the HF tensors the map lists."""
  params: dict = {}
  for spec in specs:
    if not spec.ours:
      tensors.mark_used(spec.hf)
      continue
    for path, value in zip(spec.ours, spec.to_ours(tensors.get(spec.hf, spec.hf_shape))):
      _set(params, path, value)
  return params


def write_tensors(specs: list[Tensor], params: dict, dtype) -> dict[str, np.ndarray]:
  """{HF name: array in `dtype`} from our parameters (per-layer layout), in the map's order."""
  return {spec.hf: spec.to_hf([np.asarray(_get(params, p)) for p in spec.ours], dtype) for spec in specs}
