"""research: pretraining and finetuning of transformer language models in JAX/Flax NNX.

Packages, in the order data flows through a run:
  config    -> the schema of every config key, and its validation
  sharding  -> device mesh and logical-axis rules (logical names -> mesh axes)
  data      -> corpora, tokenizers, batches
  models    -> NNX decoder-only transformer, presets, parameter/FLOP counts
  train     -> optimizer, schedules, the jitted train step, the training loop, metrics
"""
