"""`complete_config`: the one place a run's config is completed and validated, for training, the
benchmark and the planner alike: the task, the checkpoint a finetuning run starts from (its
architecture and tokenizer), validation, the data (when needed) and what the task fills in from
the tokenizer (the vocabulary)."""
from __future__ import annotations

from typing import Callable

from research.config import ConfigError, validate_config
from research.tasks import Task, get_task


def complete_config(cfg, num_devices: int, log=print, need_data: bool = True,
                    open_data: Callable | None = None, model_source: str | None = None,
                    **validate_kwargs) -> tuple[Task, object]:
  """(task, data pipeline or None): the config validated (for `num_devices`; validate_kwargs such
  as processes and backend go to validate_config), then `prepare_task`. model_source: where a
  finetuning run reads its architecture and tokenizer (default finetune.init_from; a resumed run
  gives its own checkpoint, so the checkpoint it started from may have moved)."""
  task = get_task(cfg)  # an unknown task.name is the first error, before anything is read
  from research.evals.spec import parse_specs
  try:  # the eval tasks' metrics may be the best one too (an unparsable entry: validation says why)
    tasks_written = [n for spec in parse_specs(cfg.train.eval_tasks) for n in spec.metric_names()]
  except ValueError:
    tasks_written = []
  written = [f"eval_{m}" for m in task.metric_names] + tasks_written
  if cfg.checkpoint.best_metric not in written:
    raise ConfigError(f"checkpoint.best_metric={cfg.checkpoint.best_metric!r} is not one of {', '.join(written)} "
                      f"(what task {task.name} evaluates)")
  if cfg.finetune.init_from or model_source:  # the architecture the validation checks is the checkpoint's
    from research.train.finetune import adopt_checkpoint_model
    adopt_checkpoint_model(cfg, log, model_source)
  # The vocabulary, when model.vocab_size is 0, comes from a tokenizer: a checkpoint's, or the corpus'.
  vocab_from_data = cfg.model.vocab_size == 0 and not (cfg.finetune.init_from or model_source)
  reads_data = need_data or vocab_from_data or task.prepare_reads_data()
  validate_config(cfg, num_devices, need_data=reads_data, **validate_kwargs)
  if cfg.train.early_stopping_patience and not cfg.checkpoint.keep_best:
    cfg.checkpoint.keep_best = 1  # early stopping returns to its best step: the checkpoints must keep it
    log("checkpoint: keep_best=1, so early stopping keeps the best step to restore")
  return prepare_task(cfg, log, need_data, open_data, adopt_model=False, model_source=model_source)


def prepare_task(cfg, log=print, need_data: bool = True, open_data: Callable | None = None,
                 adopt_model: bool = True, model_source: str | None = None) -> tuple[Task, object]:
  """(task, data pipeline or None), with what the task completes from the tokenizer filled in. The
  data is opened when `need_data`, when the vocabulary is still unknown (model.vocab_size=0 and no
  checkpoint tokenizer), or when the task completes itself from the data (a classifier's labels):
  a dry run with an explicit vocabulary needs no corpus.
  open_data(cfg, row_format, tokenizer) -> DataPipeline (default: build_pipeline in this process).
  adopt_model: take finetune.init_from's architecture (complete_config did it before validating)."""
  task = get_task(cfg)
  tokenizer = None
  if cfg.finetune.init_from or model_source:
    from research.data.pipeline import default_cache_dir
    from research.train import finetune
    if adopt_model:
      finetune.adopt_checkpoint_model(cfg, log, model_source)
    tokenizer = finetune.checkpoint_tokenizer(cfg, cfg.data.cache_dir or default_cache_dir(), log, model_source)
  data = None
  if need_data or (cfg.model.vocab_size == 0 and tokenizer is None) or task.prepare_reads_data():
    if open_data is None:
      from research.data import build_pipeline
      data = build_pipeline(cfg.data, task.row_format(), log=log, tokenizer=tokenizer)
    else:
      data = open_data(cfg, task.row_format(), tokenizer)
    tokenizer = data.tokenizer
  task.prepare(cfg, tokenizer, data)
  return task, data
