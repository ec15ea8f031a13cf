"""`train.eval_tasks` entries: which evaluation task runs on which file, under which name.

  [NAME=]KIND:FILE[;key=value...]

KIND is one of KINDS; NAME (default: KIND) names the metrics, eval_<NAME>_<metric> in
metrics.jsonl, so two tasks of one kind need two names ("hellaswag=mc:hs.jsonl",
"arc=mc:arc.jsonl"). FILE is a path, or for perplexity `validation` (the run's validation split).
Options (KIND_OPTIONS): mc: num_fewshot, fewshot_data, seed; perplexity: stride, text_field;
classify: text_field, label_field. Example:
  "hellaswag=mc:data/hs_val.jsonl;num_fewshot=5;fewshot_data=data/hs_train.jsonl;seed=1234"
Pure Python (no JAX): the config's validation parses these before anything is built.
"""
from __future__ import annotations

import dataclasses
import os
import re

KINDS = ("perplexity", "mc", "classify")
KIND_OPTIONS = {"mc": {"num_fewshot": int, "fewshot_data": str, "seed": int},
                "perplexity": {"stride": int, "text_field": str},
                "classify": {"text_field": str, "label_field": str}}
# What training logs of each kind, as eval_<name>_<metric> (scripts/eval.py reports more).
LOGGED_METRICS = {"perplexity": ("perplexity", "bits_per_byte"), "mc": ("acc", "acc_norm"),
                  "classify": ("loss", "accuracy", "precision", "recall", "f1")}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DEFAULT_SEED = 1234   # lm-eval's default fewshot seed


@dataclasses.dataclass(frozen=True)
class EvalTaskSpec:
  name: str
  kind: str
  data: str
  options: tuple = ()   # ((key, value), ...)

  def option(self, key: str, default=None):
    return dict(self.options).get(key, default)

  def metric_names(self) -> list[str]:
    """The keys training writes for this task."""
    return [f"eval_{self.name}_{m}" for m in LOGGED_METRICS[self.kind]]

  def files(self) -> list[tuple[str, str]]:
    """(what, path) of every file the task reads."""
    out = [] if self.kind == "perplexity" and self.data == "validation" else [("the data", self.data)]
    if self.option("fewshot_data"):
      out.append(("fewshot_data", self.option("fewshot_data")))
    return out


def parse_spec(text: str) -> EvalTaskSpec:
  """ValueError with what is wrong and what is allowed."""
  head, *opts = text.split(";")
  name, sep, rest = head.partition("=")
  if not sep:
    name, rest = "", head
  kind, sep, data = rest.partition(":")
  kind = kind.strip()
  if not sep or not data.strip():
    raise ValueError(f"{text!r} is not [NAME=]KIND:FILE[;key=value...] (e.g. 'mc:items.jsonl', "
                     "'hellaswag=mc:hs.jsonl', 'perplexity:validation')")
  if kind not in KINDS:
    raise ValueError(f"{text!r}: task kind {kind!r} is not one of {', '.join(KINDS)}")
  name = name.strip() or kind
  if not NAME.match(name):
    raise ValueError(f"{text!r}: the name {name!r} must be a letter then letters, digits or _ (it names "
                     f"eval_<name>_<metric>)")
  allowed, options = KIND_OPTIONS[kind], []
  for opt in opts:
    key, sep, value = (s.strip() for s in opt.partition("="))
    if not sep or key not in allowed:
      raise ValueError(f"{text!r}: option {opt!r} is not key=value with key one of {', '.join(allowed)}")
    try:
      options.append((key, allowed[key](value)))
    except ValueError:
      raise ValueError(f"{text!r}: option {key}={value!r} must be an integer") from None
  spec = EvalTaskSpec(name, kind, data.strip(), tuple(options))
  if spec.option("num_fewshot", 0) < 0:
    raise ValueError(f"{text!r}: num_fewshot must be >= 0")
  if spec.option("num_fewshot", 0) and not spec.option("fewshot_data"):
    raise ValueError(f"{text!r}: num_fewshot > 0 needs fewshot_data=FILE (the examples are drawn from it)")
  if spec.option("stride") is not None and spec.option("stride") < 1:
    raise ValueError(f"{text!r}: stride must be >= 1")
  return spec


def parse_specs(entries) -> list[EvalTaskSpec]:
  """Every entry parsed; names must be distinct. ValueError names the entry's index."""
  specs, seen = [], {}
  for i, entry in enumerate(entries):
    try:
      spec = parse_spec(entry)
    except ValueError as e:
      raise ValueError(f"train.eval_tasks[{i}]: {e}") from None
    if spec.name in seen:
      raise ValueError(f"train.eval_tasks[{i}]: the name {spec.name!r} is also entry {seen[spec.name]}'s; give one "
                       f"of them another name (NAME=KIND:FILE)")
    seen[spec.name] = i
    specs.append(spec)
  return specs


def missing_files(spec: EvalTaskSpec) -> list[str]:
  """'<what> FILE' for every file of the spec that does not exist (the readers take local files)."""
  return [f"{what} {path}" for what, path in spec.files() if not os.path.isfile(os.path.expanduser(path))]
