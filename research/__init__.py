"""research: pretraining and finetuning of transformer language models in JAX/Flax NNX.

Packages, in the order data flows through a run:
  config    -> the schema of every config key, and its validation
  sharding  -> device mesh and logical-axis rules (logical names -> mesh axes)
  data      -> corpora, tokenizers, batches
  models    -> NNX decoder-only transformer, presets, parameter/FLOP counts
  train     -> optimizer, schedules, the jitted train step, the training loop, metrics
  checkpoint-> Orbax checkpoints, resume, preemption, load_model, export

`research.load_model(path)` -> (model, config): the door for notebooks, eval and generation.
"""


def load_model(path: str):
  """(model, config) from a workdir or a checkpoint step directory; model(tokens_BxL) -> logits_BxLxV."""
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # before JAX's backend starts: no libtpu errors where libtpu has no TPU
  from research.checkpoint.loading import load_model as _load
  return _load(path)

