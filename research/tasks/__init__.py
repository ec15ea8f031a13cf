"""Training objectives behind one protocol (base.py), chosen by `task.name`.

Owns: each objective's batch schema, how its records become rows, its loss as summable statistics,
its metrics and its end-of-run report. Must not own a trainer, a step or a checkpoint format: those
are shared (research/train, research/checkpoint) and call into the task.
"""
from research.config import ConfigError
from research.tasks.base import Field, Task
from research.tasks.classify import Classification
from research.tasks.lm import LanguageModeling
from research.tasks.sft import SupervisedFinetuning

TASKS = {"lm": LanguageModeling, "sft": SupervisedFinetuning, "classify": Classification}


def get_task(cfg) -> Task:
  name = cfg.task.name
  if name not in TASKS:
    raise ConfigError(f"task.name={name!r} is not one of {', '.join(TASKS)}")
  return TASKS[name](cfg)


def model_extensions(cfg) -> tuple:
  """What a run adds to its backbone (research.models.build_model's `extensions`): the task's own
  parameters (a classifier head), then LoRA adapters when lora.rank > 0 (on the Dense layers
  lora.targets matches, last so that they see every one). Every builder of a run's model (the train state, the program's
  abstract model, loading a checkpoint, the planner) passes these, so they all build the same one."""
  extensions = tuple(get_task(cfg).model_extensions())
  if cfg.lora.rank > 0:
    from research.models.lora import lora_extension
    extensions += (lora_extension(cfg.lora),)
  return extensions


__all__ = ["Field", "Task", "TASKS", "get_task", "model_extensions"]
