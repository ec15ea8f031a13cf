"""Training: schedules and optimizer, train state, the jitted train step, metrics, the loop.

Owns: everything from a validated config and a data pipeline to a trained state and its metrics.
Data flows one way: config -> mesh -> data + model + optimizer -> step -> metrics. Nothing in
models/, data/ or sharding/ imports from here.
"""
from research.train.optimizer import make_optimizer, weight_decay_mask
from research.train.schedules import make_schedule
from research.train.step import make_eval_step, make_train_step

__all__ = ["make_optimizer", "weight_decay_mask", "make_schedule", "make_train_step", "make_eval_step"]
