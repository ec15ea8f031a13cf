"""Activation checkpointing (rematerialisation) policies, applied per transformer block.

A policy says which values computed inside a block the backward pass may keep; the rest is recomputed
from the block's input. Less kept = less memory, more compute:

  none                    keep everything (no remat; fastest, most memory)
  full                    keep nothing but the block input (about one extra forward pass)
  dots_saveable           keep every matmul output (projections, attention scores); recompute the
                          elementwise work (norms, activations, softmax)
  dots_no_batch_saveable  keep the weight projections' outputs, recompute the attention matmuls
                          (whose [B, H, L, L] scores dominate activation memory at long sequences)
  attn_out_saveable       keep the attention sublayer's output projection
  mlp_out_saveable        keep the MLP sublayer's output projection
  attn_mlp_out_saveable   keep both (recompute everything inside each sublayer)

Combine with model.scan_layers: the scan fixes the order of the recomputation. Without it XLA CPU
hoists the recomputed layers out of the backward pass and the policy saves no memory there (see
tests/test_remat_scan.py); GPU and TPU schedulers are memory-aware.

Names: `layers.matmul` tags every weight projection 'matmul'; the block tags its sublayer outputs
'attn_out' and 'mlp_out'. Our bf16 matmuls are custom-VJP calls that JAX's own dots policies do not
see, so the dots policies also save the 'matmul' names.
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.ad_checkpoint import checkpoint_name  # noqa: F401  (re-exported for the model)

_cp = jax.checkpoint_policies
POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": _cp.nothing_saveable,
    "dots_saveable": _cp.save_from_both_policies(_cp.dots_saveable, _cp.save_only_these_names("matmul")),
    "dots_no_batch_saveable": _cp.save_from_both_policies(_cp.dots_with_no_batch_dims_saveable,
                                                          _cp.save_only_these_names("matmul")),
    "attn_out_saveable": _cp.save_only_these_names("attn_out"),
    "mlp_out_saveable": _cp.save_only_these_names("mlp_out"),
    "attn_mlp_out_saveable": _cp.save_only_these_names("attn_out", "mlp_out"),
}


def remat(fn: Callable, policy: str, prevent_cse: bool = True) -> Callable:
  """`fn` under jax.checkpoint with the named policy ('none': `fn` itself). Inside lax.scan,
  prevent_cse=False is safe and lets XLA optimise more."""
  if policy not in POLICIES:
    raise ValueError(f"model.remat={policy!r} is not one of {', '.join(POLICIES)}")
  if policy == "none":
    return fn
  return jax.checkpoint(fn, policy=POLICIES[policy], prevent_cse=prevent_cse)
