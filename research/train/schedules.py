"""Learning-rate schedules: warmup then cosine / linear / warmup-stable-decay / constant.

All warm up linearly from 0 to `learning_rate` over `warmup_steps`. The decaying ones reach
`final_learning_rate` at `decay_steps` (default `train.num_steps`) and stay there.
WSD holds the peak until the last `wsd_decay_fraction` of `decay_steps`, then decays linearly.
`fit_warmup` shortens a warmup that a short run (a smoke test of a long experiment) would never finish.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def fit_warmup(opt_cfg, num_steps: int) -> tuple[int, str | None]:
  """(warmup steps to use, a one-line note or None when unchanged).

  A warmup that reaches the decay end (optimizer.decay_steps, else train.num_steps) or the run's end
  is cut to a tenth of the shorter of the two, so `--config.train.num_steps=30` on any experiment
  trains (instead of a ConfigError, or a run that never reaches its peak rate). Values of the wrong
  type are left for validate_config to report.
  """
  warmup, decay_steps = opt_cfg.warmup_steps, opt_cfg.decay_steps
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (warmup, decay_steps, num_steps)):
    return warmup, None
  decay_end = decay_steps or num_steps
  limit, name = num_steps, f"train.num_steps={num_steps}"
  if opt_cfg.schedule != "constant" and decay_end < num_steps:
    limit, name = decay_end, f"the decay end optimizer.decay_steps={decay_end}"
  if warmup <= 0 or limit <= 0 or warmup < limit:
    return warmup, None
  fitted = limit // 10
  return fitted, (f"optimizer.warmup_steps={warmup} does not fit before {name}; warming up over {fitted} "
                  "steps (a tenth) instead")


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
