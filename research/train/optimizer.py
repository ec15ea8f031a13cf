"""AdamW with global-norm clipping and a weight-decay mask chosen by parameter path; the L1 penalty
(`optimizer.l1`) the train step adds to the loss, on parameters chosen the same way."""
from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from research.config import ConfigError

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


def l1_mask(params, opt_cfg) -> object:
  """True where the L1 penalty applies: paths matching optimizer.l1_patterns, or (none given) the
  parameters weight decay applies to. A pattern that matches no parameter is a ConfigError."""
  if not opt_cfg.l1_patterns:
    return weight_decay_mask(params, opt_cfg.no_decay)
  regexes = [re.compile(p) for p in opt_cfg.l1_patterns]
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern, regex in zip(opt_cfg.l1_patterns, regexes):
    if not any(regex.search(p) for p in paths):
      raise ConfigError(f"optimizer.l1_patterns: {pattern!r} matches no trainable parameter (paths look like "
                        f"{paths[0]!r}, {paths[-1]!r})")
  return jax.tree_util.tree_map_with_path(lambda path, _: any(r.search(path_str(path)) for r in regexes), params)


def make_l1_penalty(opt_cfg, params) -> Callable | None:
  """None when optimizer.l1 is 0; else penalty(params) -> (l1 * sum |w| over the masked parameters,
  its gradient l1 * sign(w) there and 0 elsewhere, in float32). sign(0) = 0: the subgradient that
  leaves a weight at exactly zero where it is, as far as the penalty is concerned."""
  coeff = float(opt_cfg.l1)
  if not coeff:
    return None
  mask = l1_mask(params, opt_cfg)

  def penalty(params):
    leaves = [w for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
    value = coeff * sum(jnp.abs(w.astype(jnp.float32)).sum() for w in leaves)
    grads = jax.tree.map(lambda w, m: coeff * jnp.sign(w.astype(jnp.float32)) if m else
                         jnp.zeros(w.shape, jnp.float32), params, mask)
    return jnp.asarray(value, jnp.float32), grads

  return penalty
