"""Validation of a resolved config, before anything is built or compiled.

Every failure is a `ConfigError` whose message is one line naming the key and what is allowed.
"""
from __future__ import annotations

import math
import re
from typing import Any

import ml_collections

from research.config.base import base_config
from research.sharding.mesh import MESH_AXES, check_dcn_shape, resolve_mesh_shape


class ConfigError(ValueError):
  """A config key holds something it may not; the message names the key and the allowed values."""


CHOICES = {
    "model.mlp_activation": ("gelu_tanh", "gelu", "relu", "swiglu", "geglu"),
    "model.rope_scaling": ("none", "llama3"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.position": ("learned", "rope"),
    "model.attention_impl": ("xla", "cudnn"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "data.tokenizer": ("byte", "sentencepiece", "bpe", "tiktoken", "hf"),
    "data.tiktoken_pattern": ("gpt2", "cl100k"),
    "data.format": ("auto", "text", "jsonl", "csv"),
    "data.doc_split": ("file", "blank_lines"),
    "data.packing": ("pack", "chunk", "pad"),
    "sft.train_on": ("response", "all"),
    "sft.template": ("auto", "chatml", "llama3", "plain"),  # research/data/chat_templates.py's, and auto
    "classify.pooling": ("last", "mean", "attention", "cls"),
    "classify.class_weights": ("none", "balanced"),
    "data.spm_model_type": ("unigram", "bpe", "char", "word"),
    "train.nonfinite": ("stop", "skip"),
    "model.remat": ("none", "full", "dots_saveable", "dots_no_batch_saveable", "attn_out_saveable",
                    "mlp_out_saveable", "attn_mlp_out_saveable"),
    "checkpoint.best_mode": ("min", "max"),
    "optimizer.schedule": ("warmup_cosine", "warmup_linear", "wsd", "constant"),
}
POSITIVE = ("model.max_seq_len", "model.num_layers", "model.embed_dim", "model.num_heads",
            "model.vocab_multiple", "train.num_steps", "train.batch_size", "train.seq_len",
            "train.microbatches", "train.log_every", "data.vocab_size", "data.spm_max_documents",
            "checkpoint.keep_last", "optimizer.eps", "model.norm_eps", "model.init_std",
            "model.rope_theta", "model.rope_scaling_factor", "model.rope_low_freq_factor",
            "model.rope_high_freq_factor", "model.rope_original_max_len")
NON_NEGATIVE = ("model.vocab_size", "model.num_kv_heads", "model.head_dim", "model.mlp_dim",
                "train.eval_every", "train.eval_batches", "train.loss_chunks", "train.sample_at_end",
                "train.sample_tokens", "optimizer.warmup_steps", "optimizer.decay_steps",
                "optimizer.weight_decay", "optimizer.grad_clip_norm", "model.dropout",
                "optimizer.final_learning_rate", "data.num_workers", "data.read_threads",
                "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.keep_every_steps",
                "checkpoint.keep_best", "data.streams", "data.shuffle_rows", "train.profile_start_step",
                "train.profile_stop_step", "train.cost_per_device_hour", "train.peak_flops",
                "train.max_consecutive_skips", "model.sliding_window", "train.early_stopping_patience",
                "train.early_stopping_min_delta", "optimizer.l1", "lora.rank")

# Tuple keys whose elements are strings: an empty default says nothing about the element type, and
# '--config.data.val_files=1,2' must give file names, not ints (cli.py parses them as strings).
STRING_TUPLES = ("data.val_files", "optimizer.no_decay", "finetune.init_new", "finetune.freeze",
                 "classify.labels", "optimizer.l1_patterns", "lora.targets", "train.eval_tasks")
REGEX_TUPLES = ("optimizer.no_decay", "finetune.init_new", "finetune.freeze", "optimizer.l1_patterns",
                "lora.targets")


# data.packing per task: documents are cut into rows (lm), examples never are (sft); a classifier reads
# one text per row (its pooling has no segments).
TASK_PACKINGS = {"lm": ("pack", "chunk"), "sft": ("pack", "pad"), "classify": ("pad",)}


def _check_task_data(cfg) -> None:
  """What the task's rows need from data.packing, and the sft.* keys."""
  allowed = TASK_PACKINGS.get(cfg.task.name)
  if allowed and cfg.data.packing not in allowed:
    raise ConfigError(f"data.packing={cfg.data.packing} does not fit task.name={cfg.task.name}; it takes "
                      f"{' | '.join(allowed)}")
  for key in ("prompt_field", "response_field", "messages_field"):
    if not cfg.sft[key]:
      raise ConfigError(f"sft.{key} is empty; it names a field of the records")


def _model_choices(arch: str) -> dict[str, tuple]:
  """model.arch from the registry, model.family from that architecture's Hugging Face name maps."""
  from research.models.registry import ARCHITECTURES
  if arch not in ARCHITECTURES:
    return {"model.arch": tuple(ARCHITECTURES)}
  return {"model.arch": tuple(ARCHITECTURES), "model.family": tuple(ARCHITECTURES[arch].hf_families())}


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _type_ok(default: Any, value: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def _type_name(default: Any) -> str:
  return {bool: "a bool", int: "an int", float: "a number", str: "a string",
          tuple: "a tuple", list: "a list"}.get(type(default), type(default).__name__)


def validate_config(cfg: ml_collections.ConfigDict, num_devices: int, need_data: bool = True,
                    processes: int | None = None, backend: str | None = None) -> None:
  """Raises ConfigError on the first problem found; returns None when the config is usable.
  need_data=False (planning with an explicit vocabulary) accepts a config without a data source;
  processes defaults to jax.process_count(); backend ('cpu', 'gpu', 'tpu') to jax.default_backend()
  (the planner passes its target's, so a GPU plan on a CPU accepts cuDNN attention)."""
  schema = _flatten(base_config())
  values = _flatten(cfg)
  for key in values:
    if key not in schema:
      close = [k for k in schema if k.split(".")[-1] == key.split(".")[-1]]
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise ConfigError(f"unknown config key {key}{hint}; see research/config/base.py for all keys")
  for key, default in schema.items():
    if key not in values:
      raise ConfigError(f"config key {key} is missing; experiments must start from base_config()")
    if not _type_ok(default, values[key]):
      raise ConfigError(f"{key}={values[key]!r} must be {_type_name(default)}")
    # NaN passes every `<` / `<=` range check below (comparisons with NaN are False), and Inf passes
    # most; a NaN checkpoint.every_minutes, for one, silently never saves by time.
    if isinstance(default, float) and not math.isfinite(values[key]):
      raise ConfigError(f"{key}={values[key]} must be a finite number")
  for key in STRING_TUPLES:
    if not all(isinstance(v, str) for v in values[key]):
      raise ConfigError(f"{key}={tuple(values[key])!r} must be a tuple of strings")
  for key in REGEX_TUPLES:
    for pattern in values[key]:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ConfigError(f"{key}: {pattern!r} is not a regular expression ({e})") from None
  for key, allowed in {**CHOICES, **_model_choices(values["model.arch"])}.items():
    if values[key] not in allowed:
      raise ConfigError(f"{key}={values[key]!r} is not one of {', '.join(allowed)}")
  for key in POSITIVE:
    if values[key] <= 0:
      raise ConfigError(f"{key}={values[key]} must be > 0")
  for key in NON_NEGATIVE:
    if values[key] < 0:
      raise ConfigError(f"{key}={values[key]} must be >= 0")

  m, t, o = cfg.model, cfg.train, cfg.optimizer
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
  if m.head_dim == 0 and m.embed_dim % m.num_heads:
    raise ConfigError(f"model.num_heads={m.num_heads} does not divide model.embed_dim={m.embed_dim}; "
                      f"choose a divisor of {m.embed_dim} or set model.head_dim")
  kv = m.num_kv_heads or m.num_heads
  if m.num_heads % kv:
    raise ConfigError(f"model.num_kv_heads={kv} must divide model.num_heads={m.num_heads}")
  head_dim = m.head_dim or m.embed_dim // m.num_heads
  if m.position == "rope" and head_dim % 2:
    raise ConfigError(f"model.position=rope needs an even head dimension, got {head_dim}")
  if m.mlp_activation in ("swiglu", "geglu") and m.mlp_dim == 0:
    raise ConfigError(f"model.mlp_activation={m.mlp_activation} needs an explicit model.mlp_dim "
                      "(e.g. 8/3 * embed_dim)")
  if m.rope_scaling != "none" and m.position != "rope":
    raise ConfigError(f"model.rope_scaling={m.rope_scaling} needs model.position=rope, got {m.position}")
  if m.rope_scaling == "llama3" and m.rope_high_freq_factor <= m.rope_low_freq_factor:
    raise ConfigError(f"model.rope_high_freq_factor={m.rope_high_freq_factor} must exceed "
                      f"model.rope_low_freq_factor={m.rope_low_freq_factor}")
  if m.attention_impl == "cudnn":
    import jax
    backend = backend or jax.default_backend()
    if backend != "gpu":
      raise ConfigError(f"model.attention_impl=cudnn needs a GPU, this run is on {backend}; use xla")
  lora = cfg.lora
  if lora.rank:
    if lora.alpha <= 0:
      raise ConfigError(f"lora.alpha={lora.alpha} must be > 0 (the update's scale is alpha / rank)")
    if not 0.0 <= lora.dropout < 1.0:
      raise ConfigError(f"lora.dropout={lora.dropout} must be in [0, 1)")
    if not lora.targets:
      raise ConfigError("lora.targets is empty; give regexes of kernel paths, e.g. 'attn/(q|v)/kernel$'")
  if t.seq_len > m.max_seq_len:
    raise ConfigError(f"train.seq_len={t.seq_len} exceeds the model's context model.max_seq_len="
                      f"{m.max_seq_len}")
  if t.batch_size % t.microbatches:
    raise ConfigError(f"train.microbatches={t.microbatches} must divide train.batch_size={t.batch_size}")
  if t.loss_chunks and t.seq_len % t.loss_chunks:
    raise ConfigError(f"train.loss_chunks={t.loss_chunks} must divide train.seq_len={t.seq_len} "
                      "(0: the unfused output head and loss)")

  try:
    shape = resolve_mesh_shape(cfg.mesh.shape, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    check_dcn_shape(shape, cfg.mesh.get("dcn_shape", (1,) * len(MESH_AXES)))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch_shards = shape[MESH_AXES.index("data")] * shape[MESH_AXES.index("fsdp")]
  micro = t.batch_size // t.microbatches
  if micro % batch_shards:
    raise ConfigError(
        f"train.batch_size={t.batch_size} / train.microbatches={t.microbatches} = {micro} sequences "
        f"per microbatch is not divisible by the data x fsdp mesh axes ({batch_shards}); "
        f"choose a multiple of {batch_shards} or another mesh.shape")
  if processes is None:
    import jax
    processes = jax.process_count()
  if micro % processes or batch_shards % processes and processes % batch_shards:
    raise ConfigError(f"train.batch_size={t.batch_size} / train.microbatches={t.microbatches} = {micro} sequences "
                      f"cannot be split evenly over {processes} processes with data x fsdp = {batch_shards}")
  streams = cfg.data.streams
  if streams and (t.batch_size % streams or streams % processes):
    raise ConfigError(f"data.streams={streams} must divide train.batch_size={t.batch_size} and be a multiple "
                      f"of the process count ({processes}); 0 gives one stream per process")
  for i, rule in enumerate(cfg.mesh.rules):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f"mesh.rules[{i}]={rule!r} must be (logical_name, mesh_axes)")
    axes = () if rule[1] is None else (rule[1],) if isinstance(rule[1], str) else tuple(rule[1])
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ConfigError(f"mesh.rules[{i}]={tuple(rule)!r} names mesh axis {bad[0]!r}; "
                        f"mesh axes are {', '.join(MESH_AXES)}")

  if o.learning_rate <= 0:
    raise ConfigError(f"optimizer.learning_rate={o.learning_rate} must be > 0")
  if o.final_learning_rate > o.learning_rate:
    raise ConfigError(f"optimizer.final_learning_rate={o.final_learning_rate} must not exceed "
                      f"optimizer.learning_rate={o.learning_rate}")
  decay_steps = o.decay_steps or t.num_steps
  if o.schedule != "constant" and o.warmup_steps >= decay_steps:
    raise ConfigError(f"optimizer.warmup_steps={o.warmup_steps} must be below the decay end "
                      f"(optimizer.decay_steps or train.num_steps = {decay_steps})")
  if not 0.0 < o.wsd_decay_fraction <= 1.0:
    raise ConfigError(f"optimizer.wsd_decay_fraction={o.wsd_decay_fraction} must be in (0, 1]")
  if not 0.0 <= o.b1 < 1.0 or not 0.0 <= o.b2 < 1.0:
    raise ConfigError(f"optimizer.b1={o.b1}, optimizer.b2={o.b2} must be in [0, 1)")
  if not 0.0 < cfg.data.val_fraction < 1.0:
    raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in (0, 1)")
  if cfg.data.tokenizer == "hf" and not cfg.data.tokenizer_dir:
    raise ConfigError("data.tokenizer=hf needs data.tokenizer_dir: a Hugging Face tokenizer directory "
                      "(tokenizer.json, vocab.json + merges.txt, or tokenizer.model)")
  _check_task_data(cfg)
  if need_data and not (cfg.data.path or cfg.data.tfds_name or cfg.data.mixture):
    raise ConfigError("data.path is empty (and no data.tfds_name or data.mixture); give a text file, "
                      "a directory or a glob")
  if t.profile_stop_step and not 1 <= t.profile_start_step < t.profile_stop_step:
    raise ConfigError(f"train.profile_start_step={t.profile_start_step}, train.profile_stop_step="
                      f"{t.profile_stop_step}: trace steps [start, stop) need 1 <= start < stop")
  if t.sample_temperature < 0:
    raise ConfigError(f"train.sample_temperature={t.sample_temperature} must be >= 0")
  if t.early_stopping_patience and not t.eval_every:
    raise ConfigError(f"train.early_stopping_patience={t.early_stopping_patience} counts evaluations during "
                      "training, and train.eval_every=0 evaluates only at the end; set train.eval_every")
  if cfg.task.name == "classify":
    _validate_classify(cfg)
  _check_eval_tasks(cfg)


# The evaluation task kinds (research/evals/spec.py) each kind of run can take: a classifier has a
# head to score labels with; a language model (lm, sft) scores tokens. perplexity:validation reads
# the run's own split, whose documents are text only for lm.
EVAL_KINDS = {"lm": ("perplexity", "mc"), "sft": ("perplexity", "mc"), "classify": ("classify",)}


def _check_eval_tasks(cfg) -> None:
  """train.eval_tasks: each entry parses, fits the run's task, and its files exist."""
  from research.evals.spec import missing_files, parse_specs
  try:
    specs = parse_specs(cfg.train.eval_tasks)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for i, spec in enumerate(specs):
    where = f"train.eval_tasks[{i}]={cfg.train.eval_tasks[i]!r}"
    allowed = EVAL_KINDS.get(cfg.task.name, ())
    if spec.kind not in allowed:
      raise ConfigError(f"{where}: a {spec.kind} task does not fit task.name={cfg.task.name}, which takes "
                        f"{' | '.join(allowed) or 'none'}")
    if spec.kind == "perplexity" and spec.data == "validation" and cfg.task.name != "lm":
      raise ConfigError(f"{where}: perplexity:validation scores the run's own split, which is text only for "
                        f"task.name=lm; give a text file")
    missing = missing_files(spec)
    if missing:
      raise ConfigError(f"{where}: no such file: {missing[0]}")


def _validate_classify(cfg) -> None:
  c = cfg.classify
  if not 0.0 <= c.dropout < 1.0:
    raise ConfigError(f"classify.dropout={c.dropout} must be in [0, 1)")
  if c.pooling == "cls" and cfg.model.arch == "decoder":
    raise ConfigError("classify.pooling=cls takes the first token, which a causal decoder computes from that "
                      "token alone; with model.arch=decoder use last, mean or attention")
  labels = tuple(c.labels)
  if labels and (len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels)):
    raise ConfigError(f"classify.labels={labels!r} must be two or more distinct, non-empty names (or () to "
                      "take the training split's)")
