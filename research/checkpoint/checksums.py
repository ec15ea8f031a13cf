"""Checksums of every array in a checkpoint, so flipped bytes are caught on restore instead of
training on garbage.

Per array, two uint32 sums over its bytes read as words w_i (i the element's flat index): sum(w_i) and
sum(w_i * (2i + 1)), both mod 2^32. A flipped bit changes one word by +-2^k, which changes the second
sum by an odd multiple of 2^k: never zero mod 2^32, so every single-bit error is caught, and random
damage slips through with probability ~2^-64. The sums do not depend on how the array is sharded, so
a checkpoint saved on one mesh verifies on another, and they run on the devices (one jitted pass over
the state) or in numpy (for host arrays) with identical results.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from research.treepaths import path_str


def _words(xp, x):
  """x's bits as uint32 words, same shape (8-byte types: a trailing axis of 2)."""
  if xp is jnp and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = np.dtype(x.dtype).itemsize
  if xp is jnp:
    if size == 4:
      return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
      return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes -> [..., 2]
  x = np.ascontiguousarray(x)
  if size == 4:
    return x.view(np.uint32)
  if size in (1, 2):
    return x.view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)
  return x.view(np.uint32).reshape(x.shape + (2,))


def _array_sums(xp, x):
  w = _words(xp, x)
  # flat index from per-axis iotas: no reshape, so a sharded array is never gathered
  index = xp.zeros(w.shape, xp.uint32)
  stride = 1
  for axis in range(w.ndim - 1, -1, -1):
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    iota = xp.arange(w.shape[axis], dtype=xp.uint32).reshape(shape)
    index = index + iota * xp.uint32(stride % (1 << 32))
    stride *= w.shape[axis]
  odd = index * xp.uint32(2) + xp.uint32(1)
  return xp.sum(w, dtype=xp.uint32), xp.sum(w * odd, dtype=xp.uint32)


@jax.jit
def _device_sums(tree):
  return jax.tree.map(lambda x: jnp.stack(_array_sums(jnp, x)), tree)


def tree_checksums(tree) -> dict[str, list[int]]:
  """{'params/blocks/0/attn/q/kernel': [sum, weighted sum], ...} of a pytree of jax arrays (every
  process gets the same, replicated values) or of numpy arrays. """
  leaves = jax.tree.leaves(tree)
  on_device = any(isinstance(x, jax.Array) for x in leaves)
  with np.errstate(over="ignore"):
    sums = _device_sums(tree) if on_device else jax.tree.map(lambda x: np.stack(_array_sums(np, x)), tree)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(sums))[0]
  return {path_str(p): [int(v) for v in np.asarray(s).reshape(-1)] for p, s in flat}


def mismatches(saved: dict, actual: dict) -> list[str]:
  """Paths whose checksums differ (paths missing from `saved` are not judged: older checkpoints)."""
  return [k for k, v in actual.items() if k in saved and list(saved[k]) != list(v)]
