"""AdamW with global-norm clipping and a weight-decay mask chosen by parameter path."""
from __future__ import annotations

import re

import jax
import optax

from research.train.schedules import make_schedule
from research.treepaths import path_str


def weight_decay_mask(params, no_decay_patterns) -> object:
  """True where weight decay applies: every parameter whose path matches none of the patterns."""
  regexes = [re.compile(p) for p in no_decay_patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(r.search(path_str(path)) for r in regexes), params)


def make_optimizer(opt_cfg, num_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(opt_cfg, num_steps)
  chain = []
  if opt_cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay,
                           mask=weight_decay_mask(params, opt_cfg.no_decay)))
  return optax.chain(*chain), schedule
