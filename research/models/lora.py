"""Low-rank adapters (LoRA, `lora.rank` > 0) on the Dense layers whose kernel path matches
`lora.targets`: y = x @ W + (alpha / r) * dropout(x) @ A @ B.

A is [*in, r] (uniform in +-1/sqrt(fan_in), PEFT's kaiming-uniform default), B is [r, *out] and
starts at zero, so a model with fresh adapters computes exactly what its base does. The adapters
attach to a built model in place (`lora_extension`, through research.models.build_model's
extensions), so the base keeps the parameter paths of its checkpoints; each adapter lives at
'<dense>/lora/a' and '<dense>/lora/b' (with a leading 'layers' axis in stacked blocks). Which
parameters train with adapters on is research/train/trainable.py's business; `merge_params` folds
trained adapters into the kernels (export, load_model(merge=True)).

Shape legend: L the leading (layers) dims of stacked blocks, I a kernel's input dims flattened, O
its output dims flattened, R the rank.
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.config import ConfigError
from research.models.layers import Dense, dropout, matmul

ADAPTER_PATTERN = r"/lora/(a|b)$"    # every adapter parameter's path
# The output head's kernel is read by head_weight() (tied or fused with the loss), never through
# Dense.__call__, so an adapter there would change nothing: refused.
_NOT_ADAPTABLE = re.compile(r"^lm_head/")


class LoRA(nnx.Module):
  """The low-rank update of one Dense: __call__(x [..., *in]) -> (alpha / r) * x @ a @ b [..., *out] f32."""

  def __init__(self, dense: Dense, rank: int, alpha: float, rate: float, rngs: nnx.Rngs):
    kernel = dense.kernel
    shape, axes = kernel.shape, tuple(kernel.get_metadata()["logical_axes"])
    lead = len(shape) - dense.in_ndim - dense.out_ndim          # 1 in stacked blocks ('layers'), else 0
    in_shape, out_shape = shape[lead:lead + dense.in_ndim], shape[lead + dense.in_ndim:]
    in_axes, out_axes = axes[lead:lead + dense.in_ndim], axes[lead + dense.in_ndim:]
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(rngs.params(), shape[:lead] + in_shape + (rank,), jnp.float32, -bound, bound)
    self.a = nnx.Param(a.astype(kernel.dtype), logical_axes=axes[:lead] + in_axes + (None,))
    self.b = nnx.Param(jnp.zeros(shape[:lead] + (rank,) + out_shape, kernel.dtype),
                       logical_axes=axes[:lead] + (None,) + out_axes)
    self.scale, self.rate = float(alpha) / rank, float(rate)
    letters = "abcdefgh"
    ins, outs = letters[:dense.in_ndim], letters[dense.in_ndim:dense.in_ndim + dense.out_ndim]
    self.down_equation, self.up_equation = f"...{ins},{ins}z->...z", f"...z,z{outs}->...{outs}"

  def __call__(self, x: jax.Array, dtype, rng: jax.Array | None) -> jax.Array:
    h = matmul(self.down_equation, dropout(x, self.rate, rng), self.a[...], dtype, jnp.float32)
    return matmul(self.up_equation, h, self.b[...], dtype, jnp.float32) * self.scale


def lora_extension(lora_cfg):
  """The model extension (model, rngs) -> None that attaches an adapter to every Dense whose kernel
  path matches lora.targets; a pattern that matches no kernel is a ConfigError naming it."""
  regexes = [(p, re.compile(p)) for p in lora_cfg.targets]

  def extend(model, rngs: nnx.Rngs) -> None:
    denses = [("/".join(map(str, path)) + "/kernel", node) for path, node in nnx.iter_graph(model)
              if isinstance(node, Dense)]
    chosen = [(p, d) for p, d in denses if any(r.search(p) for _, r in regexes)]
    for pattern, regex in regexes:
      if not any(regex.search(p) for p, _ in denses):
        raise ConfigError(f"lora.targets: {pattern!r} matches no Dense kernel (paths look like "
                         f"{denses[0][0]!r}, {denses[-1][0]!r})")
    for path, dense in chosen:
      if _NOT_ADAPTABLE.search(path):
        raise ConfigError(f"lora.targets matches {path}: the output head takes no adapter (the "
                         "attention and MLP projections do)")
      dense.lora = nnx.data(LoRA(dense, lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout, rngs))

  return extend


def lora_rng(rng: jax.Array | None, index: int) -> jax.Array | None:
  """The adapter dropout key of a block's `index`-th projection, derived by fold_in so that the
  block's own dropout keys (split from the same key) are the ones they are without adapters; a key
  nothing reads is removed by the compiler."""
  return None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, 0x10AA), index)


def is_adapter(path: str) -> bool:
  return re.search(ADAPTER_PATTERN, path) is not None


def adapter_count(params) -> int:
  """Elements of the adapter parameters in a pure params dict."""
  from research.treepaths import path_str
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(math.prod(x.shape) for p, x in flat if is_adapter(path_str(p)))


def without_adapters(params: dict) -> dict:
  """The params dict with every 'lora' subtree removed (the base's own parameters)."""
  if not isinstance(params, dict):
    return params
  return {k: without_adapters(v) for k, v in params.items() if k != "lora"}


def merge_params(params: dict, lora_cfg) -> dict:
  """The base's parameters with each adapter folded into its kernel: W + (alpha / r) a @ b, in
  float32, stored in the kernel's dtype (numpy or jax arrays; per-layer or stacked layout)."""
  scale = float(lora_cfg.alpha) / lora_cfg.rank

  def merge(node):
    if not isinstance(node, dict):
      return node
    out = {k: merge(v) for k, v in node.items() if k != "lora"}
    if "lora" in node:
      kernel, a, b = node["kernel"], node["lora"]["a"], node["lora"]["b"]
      out["kernel"] = merged_kernel(kernel, a, b, scale)
    return out

  return merge(params)


def merged_kernel(kernel, a, b, scale: float):
  """kernel [*lead, *in, *out] + scale * a [*lead, *in, r] @ b [*lead, r, *out]."""
  xp = np if isinstance(kernel, np.ndarray) else jnp
  lead = a.ndim - 1 + b.ndim - 1 - kernel.ndim
  lead_shape = kernel.shape[:lead]
  a_LxIxR = xp.asarray(a, xp.float32).reshape(lead_shape + (-1, a.shape[-1]))
  b_LxRxO = xp.asarray(b, xp.float32).reshape(lead_shape + (b.shape[lead], -1))
  delta = xp.matmul(a_LxIxR, b_LxRxO).reshape(kernel.shape)
  return (xp.asarray(kernel, xp.float32) + scale * delta).astype(kernel.dtype)
