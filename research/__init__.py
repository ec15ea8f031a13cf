"""research: pretraining and finetuning of transformer language models in JAX/Flax NNX.

Packages, in the order data flows through a run:
  config    -> the schema of every config key, and its validation
  sharding  -> device mesh and logical-axis rules (logical names -> mesh axes)
  data      -> corpora, tokenizers, batches (rows shaped by the task's row format)
  tasks     -> the objectives: batch schema, rows, loss as summable statistics, metrics (lm, classify)
  models    -> NNX models by architecture (registry: decoder today), presets, parameter/FLOP counts
  train     -> config completion, optimizer, schedules, the jitted train step, the one training loop,
               finetuning from a checkpoint, trainable/frozen parameters, metrics
  checkpoint-> Orbax checkpoints (with the tokenizer), resume, preemption, load_model, export
  hf        -> Hugging Face directories in and out (GPT-2, Llama, Mistral, Qwen2, Gemma)

`research.load_model(path)` -> (model, config) and `research.load_tokenizer(path)`: the doors for
notebooks, eval and generation.
"""


def load_model(path: str, merge: bool = False):
  """(model, config) from a workdir or a checkpoint step directory; model(tokens_BxL) -> logits_BxLxV.
  A LoRA run's checkpoint loads onto its base; merge=True folds the adapters into the kernels."""
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # before JAX's backend starts: no libtpu errors where libtpu has no TPU
  from research.checkpoint.loading import load_model as _load
  return _load(path, merge=merge)


def load_tokenizer(path: str):
  """The tokenizer a checkpoint (workdir or step directory) was trained with: encode/decode, bos/eos/pad,
  chat_template. Its files are unpacked once under the cache ($RESEARCH_CACHE or ~/.cache/research)."""
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()
  from research.checkpoint.loading import read_tokenizer
  from research.data.pipeline import default_cache_dir
  tokenizer = read_tokenizer(path, default_cache_dir())
  if tokenizer is None:
    from research.checkpoint import CheckpointError
    raise CheckpointError(f"{path}: the checkpoint holds no tokenizer (written before checkpoints saved theirs)")
  return tokenizer
