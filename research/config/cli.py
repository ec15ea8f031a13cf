"""Experiments from the command line: `--config=experiments/x.py[:variant]` plus `--config.<key>=<value>`.

We parse the overrides ourselves (rather than with ml_collections' config_flags) so that an unknown
key or a value of the wrong type is a one-line error naming the key and what it accepts.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

from research.config.validate import STRING_TUPLES, ConfigError

PREFIX = "--config."


def load_experiment(spec: str) -> ml_collections.ConfigDict:
  """'experiments/gpt2.py:size=124m' -> get_config('size=124m'); no variant -> get_config()."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: no such file {path}")
  module_spec = importlib.util.spec_from_file_location(f"experiment_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config={spec}: {path} defines no get_config()")
  return module.get_config(variant) if variant else module.get_config()


def parse_variant(variant: str | None, defaults: dict) -> dict:
  """'size=124m,seq=1024' -> dict, checked against `defaults` (whose values give the types)."""
  out = dict(defaults)
  for item in filter(None, (variant or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config variant {item!r}: expected key=value with key in {', '.join(defaults)}")
    out[key] = _parse_value(f"variant {key}", value, defaults[key])
  return out


def _parse_value(key: str, text: str, current):
  def fail(kind):
    raise ConfigError(f"{key}={text!r} must be {kind}")

  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    fail("a bool (true or false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      fail("an int")
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      fail("a number")
  if key in STRING_TUPLES:
    return _parse_strings(text)
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
    except (ValueError, SyntaxError):
      value = tuple(s.strip() for s in text.split(",") if s.strip())
    if not isinstance(value, (tuple, list)):
      fail("a tuple such as (2,2,2)")
    return tuple(value)
  return text


def _parse_strings(text: str) -> tuple[str, ...]:
  """'a.txt,b.txt' -> ('a.txt', 'b.txt'); "('a', 'b')" as Python; '1,2' -> ('1', '2'), not ints."""
  if text.strip().startswith(("(", "[")):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None  # e.g. a regex such as (embed|pos_embed)/
    if isinstance(value, (tuple, list)):
      return tuple(str(v) for v in value)
  return tuple(part.strip() for part in text.split(",") if part.strip())


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies '--config.a.b=value' strings in order; unknown keys and bad values raise ConfigError."""
  for item in overrides:
    body = item[len(PREFIX):] if item.startswith(PREFIX) else item
    key, sep, text = body.partition("=")
    if not sep:
      raise ConfigError(f"{item}: overrides take the form --config.<key>=<value>")
    node, parts = cfg, key.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:depth]) or "the config"
        keys = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
        raise ConfigError(f"unknown config key {key}: {where} has no {part!r} (keys: {keys})")
      if depth < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"{key} is a group of keys; set one of: {', '.join(sorted(current.keys()))}")
    with node.unlocked():
      node[parts[-1]] = _parse_value(key, text, current)
  return cfg


def expand_flagfiles(args: Sequence[str], _including: tuple[str, ...] = ()) -> list[str]:
  """Replaces each '--flagfile=FILE' (or '--flagfile FILE', one dash or two) by the flags in FILE (one
  per line; '#' comments), as absl would, so that files of '--config.<key>=<value>' lines (e.g. from
  --autofit_out) work too. A file may include others, but not itself (directly or through others)."""
  out: list[str] = []
  args = list(args)
  i = 0
  while i < len(args):
    a = args[i]
    i += 1
    name, eq, path = a.lstrip("-").partition("=")
    if name != "flagfile" or not a.startswith("-"):
      out.append(a)
      continue
    if not eq:  # '--flagfile FILE'
      if i == len(args):
        raise ConfigError(f"{a} needs a file name: --flagfile=FILE")
      path, i = args[i], i + 1
    real = os.path.realpath(path)
    if real in _including:
      chain = " -> ".join(list(_including[_including.index(real):]) + [real])
      raise ConfigError(f"--flagfile={path} includes itself ({chain})")
    try:
      with open(path) as f:
        lines = [line.strip() for line in f]
    except OSError as e:
      raise ConfigError(f"--flagfile={path}: {e.strerror}") from None
    out.extend(expand_flagfiles([line for line in lines if line and not line.startswith("#")],
                                _including + (real,)))
  return out


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates '--config.<key>=<value>' items (also those in --flagfile files) from the flags absl parses."""
  args = expand_flagfiles(argv[1:])
  overrides = [a for a in args if a.startswith(PREFIX)]
  rest = [argv[0]] + [a for a in args if not a.startswith(PREFIX)]
  return rest, overrides


def absl_flags_parser(flag_values):
  """(parser for absl's app.run(flags_parser=...), the list it fills with '--config.*' overrides).

  absl rejects flags it does not know, so the overrides are taken out before it parses the rest.
  """
  overrides: list[str] = []

  def parse(argv):
    try:
      rest, found = split_argv(argv)
    except ConfigError as e:
      raise SystemExit(f"error: {e}") from None
    overrides.extend(found)
    return flag_values(rest)

  return parse, overrides


def load_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  return apply_overrides(load_experiment(spec), overrides)
