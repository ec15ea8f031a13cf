"""Learning-rate schedules: warmup then cosine / linear / warmup-stable-decay / constant.

All warm up linearly from 0 to `learning_rate` over `warmup_steps`. The decaying ones reach
`final_learning_rate` at `decay_steps` (default `train.num_steps`) and stay there.
WSD holds the peak until the last `wsd_decay_fraction` of `decay_steps`, then decays linearly.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def make_schedule(opt_cfg, num_steps: int) -> optax.Schedule:
  peak, final = opt_cfg.learning_rate, opt_cfg.final_learning_rate
  warmup = opt_cfg.warmup_steps
  end = opt_cfg.decay_steps or num_steps
  kind = opt_cfg.schedule
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1)) if warmup else optax.constant_schedule(peak)
  if kind == "constant":
    after = optax.constant_schedule(peak)
  elif kind == "warmup_cosine":
    after = optax.cosine_decay_schedule(peak, end - warmup, alpha=final / peak)
  elif kind == "warmup_linear":
    after = optax.linear_schedule(peak, final, end - warmup)
  elif kind == "wsd":
    decay = max(1, round((end - warmup) * opt_cfg.wsd_decay_fraction))
    stable = end - warmup - decay
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, final, decay)], [stable])
  else:
    raise ValueError(f"optimizer.schedule={kind!r} is not one of warmup_cosine, warmup_linear, wsd, constant")
  if not warmup:
    return lambda step: jnp.asarray(after(step), jnp.float32)
  return optax.join_schedules([warm, after], [warmup])
