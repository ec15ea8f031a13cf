"""A checkpoint's evaluation (scripts/eval.py): read and check the data first (a bad line stops
before any weight is read), load the model, score, and report: one JSON line per task run, and a
table for the terminal.

The context (longest scored sequence) defaults to the run's train.seq_len: the positions training
used (a learned position past it never had a gradient); `context` raises it up to
model.max_seq_len.
"""
from __future__ import annotations

import json
import os

from research.data.corpus import DataError
from research.evals import data as eval_data
from research.evals.spec import DEFAULT_SEED, KINDS

NOT_WRITTEN = ("loglikelihoods", "responses")
SCRIPT_KINDS = KINDS + ("generate",)   # generate: scripts/eval.py only (it decodes; training's tasks score)   # per-item values: the library returns them, the JSON line does not


def _lm_config(checkpoint: str):
  from research.checkpoint.loading import read_config
  cfg = read_config(checkpoint)
  if cfg.task.name == "classify":
    raise DataError(f"{checkpoint}: a classifier checkpoint (task.name=classify); its task is --task=classify")
  return cfg


def context_length(cfg, context: int = 0) -> int:
  """`context`, or the run's train.seq_len; at most model.max_seq_len."""
  m = cfg.model.max_seq_len
  if context and context > m:
    raise DataError(f"--context={context} exceeds the model's model.max_seq_len={m}")
  return context or min(cfg.train.seq_len, m)


def load_scorer(checkpoint: str, context: int, batch_size: int, packing: bool):
  """(Scorer, tokenizer) of an LM checkpoint (workdir or step directory) on the default device."""
  from research import load_model, load_tokenizer
  from research.evals.scoring import Scorer
  model, _ = load_model(checkpoint)
  return Scorer.from_model(model, context, batch_size, packing), load_tokenizer(checkpoint)


def evaluate_checkpoint(checkpoint: str, task: str, data: str, batch_size: int = 32, packing: bool = True,
                        num_fewshot: int = 0, fewshot_data: str | None = None, seed: int = DEFAULT_SEED,
                        stride: int = 0, text_field: str | None = None, label_field: str | None = None,
                        context: int = 0, until=None, max_gen_toks: int = 256, num_slots: int = 8,
                        log=print) -> dict:
  """One task on one checkpoint -> its result: {task, checkpoint, step, data, ...the metrics}.
  Bad input raises DataError (or CheckpointError) with one line naming the file:line or flag."""
  from research.checkpoint.loading import resolve_step_dir
  if task not in SCRIPT_KINDS:
    raise DataError(f"--task={task!r} is not one of {', '.join(SCRIPT_KINDS)}")
  if not data:
    raise DataError("--data is empty: give a file" + (" or 'validation'" if task == "perplexity" else ""))
  if task != "mc" and (num_fewshot or fewshot_data):
    raise DataError(f"--num_fewshot/--fewshot_data are for --task=mc, not --task={task}")
  if batch_size < 1:
    raise DataError(f"--batch_size={batch_size} must be >= 1")
  if task == "classify":
    result = _classify(checkpoint, data, text_field, label_field, batch_size, log)
  elif task == "generate":
    result = _generate(checkpoint, data, until, max_gen_toks, context, num_slots, log)
  else:
    cfg = _lm_config(checkpoint)
    ctx = context_length(cfg, context)
    if task == "mc":
      items, pool, same = _choices(data, num_fewshot, fewshot_data)
      scorer, tokenizer = load_scorer(checkpoint, ctx, batch_size, packing)
      from research.evals.likelihood import multiple_choice
      log(f"eval: mc, {len(items):,} items of {data}, {num_fewshot}-shot, context {ctx}")
      result = multiple_choice(scorer, tokenizer, items, pool, num_fewshot, seed, same)
    else:
      if stride and not 1 <= stride <= ctx:
        raise DataError(f"--stride={stride} must be in [1, {ctx}] (the context)")
      if data == eval_data.VALIDATION and cfg.task.name != "lm":
        raise DataError(f"--data=validation: a task.name={cfg.task.name} run's validation records are not plain "
                        "text; give a .txt/.jsonl/.csv file")
      docs = (eval_data.validation_documents(cfg) if data == eval_data.VALIDATION
              else eval_data.read_documents(data, text_field or cfg.data.text_field, cfg.data.doc_split))
      scorer, tokenizer = load_scorer(checkpoint, ctx, batch_size, packing)
      from research.evals.likelihood import perplexity
      log(f"eval: perplexity, {len(docs):,} documents of {data}, context {ctx}")
      result = perplexity(scorer, tokenizer, docs, stride or None)
    result["packing"] = packing
  directory, step = resolve_step_dir(result.pop("_checkpoint", checkpoint))
  return {"task": task, "checkpoint": f"{directory}/{step}", "step": step, "data": data, **result}


def _choices(data: str, num_fewshot: int, fewshot_data: str | None):
  if num_fewshot < 0:
    raise DataError(f"--num_fewshot={num_fewshot} must be >= 0")
  if num_fewshot and not fewshot_data:
    raise DataError(f"--num_fewshot={num_fewshot} needs --fewshot_data=FILE (a .jsonl of the same fields)")
  items = eval_data.read_choices(data)
  if not num_fewshot:
    return items, None, False
  same = os.path.realpath(fewshot_data) == os.path.realpath(data)
  pool = items if same else eval_data.read_choices(fewshot_data)
  need = num_fewshot + (1 if same else 0)
  if need > len(pool):
    excluded = " (the item itself excluded)" if same else ""
    raise DataError(f"--num_fewshot={num_fewshot} needs {need} examples{excluded}; --fewshot_data={fewshot_data} "
                    f"holds {len(pool)}")
  return items, pool, same


def _generate(checkpoint, data, until, max_gen_toks, context, num_slots, log) -> dict:
  from research.evals.generation import DEFAULT_UNTIL, generate_until
  from research.infer.engine import Engine
  if max_gen_toks < 1:
    raise DataError(f"--max_gen_toks={max_gen_toks} must be >= 1")
  cfg = _lm_config(checkpoint)
  items = eval_data.read_targets(data)
  ctx = context or cfg.model.max_seq_len
  if ctx > cfg.model.max_seq_len or ctx - 1 - max_gen_toks < 1:
    raise DataError(f"--context={ctx} must be at most model.max_seq_len={cfg.model.max_seq_len} and leave room "
                    f"for --max_gen_toks={max_gen_toks} and a context")
  engine = Engine.from_checkpoint(checkpoint, num_slots=num_slots)
  log(f"eval: generate, {len(items):,} items of {data}, greedy, until {list(until or DEFAULT_UNTIL)!r}, "
      f"{max_gen_toks} tokens at most")
  return generate_until(engine, items, tuple(until or DEFAULT_UNTIL), max_gen_toks, ctx)


def _classify(checkpoint, data, text_field, label_field, batch_size, log) -> dict:
  from research.checkpoint.loading import read_config
  from research.evals.classify import checkpoint_probabilities, classification_result, label_indices
  from research.infer.classify import Classifier, resolve_checkpoint
  path, source = resolve_checkpoint(checkpoint)
  cfg = read_config(path)
  if cfg.task.name != "classify":
    raise DataError(f"{path}: a checkpoint of task.name={cfg.task.name!r}, not a classifier; --task=classify "
                    "needs one (use --task=mc or perplexity)")
  records = eval_data.read_labelled(data, text_field or cfg.data.text_field, label_field or cfg.data.label_field)
  true_N = label_indices(records, tuple(cfg.classify.labels))   # bad input: before the weights
  classifier = Classifier(path, batch_size)
  log(f"eval: classify, {len(records):,} texts of {data} with {path} ({source})")
  result = classification_result(checkpoint_probabilities(classifier, records), true_N, classifier.task)
  return {**result, "_checkpoint": path}


def write_result(out: str, result: dict) -> None:
  """Appends the result as one JSON line (per-item values left out)."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "a", encoding="utf-8") as f:
    f.write(json.dumps({k: v for k, v in result.items() if k not in NOT_WRITTEN}, ensure_ascii=False) + "\n")


def format_table(result: dict) -> str:
  """The scalar figures, one per line; a classifier's per-class figures and confusion matrix after."""
  rows = [(k, v) for k, v in result.items() if k not in NOT_WRITTEN and not isinstance(v, (dict, list))]
  width = max(len(k) for k, _ in rows)
  shown = lambda v: f"{v:.6g}" if isinstance(v, float) else "-" if v is None else str(v)
  lines = [f"{k:<{width}}  {shown(v)}" for k, v in rows]
  if "per_class" in result:
    labels = result["labels"]
    lines.append("")
    lines.append(f"{'label':<12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
    for label in labels:
      c = result["per_class"][label]
      lines.append(f"{label[:12]:<12} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} "
                   f"{int(c['support']):>9}")
    lines.append("")
    lines.append("confusion (rows true, columns predicted): " + " ".join(label[:8] for label in labels))
    for label, row in zip(labels, result["confusion_matrix"]):
      lines.append(f"{label[:12]:<12} " + " ".join(f"{n:>8}" for n in row))
  return "\n".join(lines)
