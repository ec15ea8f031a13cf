"""Next-token prediction (`task.name=lm`): pretraining, and finetuning on plain text.

Rows: documents -> ids + EOS -> packed (segment ids, per-document positions) or chunked rows.
Loss: the weighted sum of token cross-entropies; with `train.loss_chunks` >= 1 the output head runs
fused with the cross-entropy (head_loss.py: no [B, L, V] logits kept for the backward).
Metrics: loss (nats/token) and perplexity. At the end: the unigram entropy of the training tokens
(what a model that learned only token frequencies scores) and a few sampled lines.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.config import ConfigError
from research.tasks.base import Field, Task, token_field
from research.tasks.head_loss import head_cross_entropy

MODEL_INPUTS = ("positions", "segment_ids")   # batch keys the model takes besides the tokens


def resolve_vocab(cfg, tokenizer) -> None:
  """model.vocab_size = 0 takes the tokenizer's size, rounded up to model.vocab_multiple."""
  if cfg.model.vocab_size == 0:
    m = cfg.model.vocab_multiple
    cfg.model.vocab_size = -(-tokenizer.vocab_size // m) * m
  elif cfg.model.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                      f"{tokenizer.vocab_size} ids; set it to 0 to take the tokenizer's size")


def loss_sums(model, batch, dropout_rng, loss_chunks: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted token cross-entropies, sum of weights), both float32.

  `loss_chunks` >= 1 runs the output head fused with the cross-entropy in that many chunks along the
  sequence (`head_loss.head_cross_entropy`); 0 computes the full f32 logits and optax's
  cross-entropy (the plain reference path).
  """
  extra = {k: batch[k] for k in MODEL_INPUTS if k in batch}
  weights_BxL = batch["weights"].astype(jnp.float32)
  if loss_chunks == 0:
    logits_BxLxV = model(batch["inputs"], dropout_rng=dropout_rng, **extra)
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()
  x_BxLxD = model.hidden_states(batch["inputs"], dropout_rng=dropout_rng, **extra)
  head, transposed = model.head_weight()
  loss_sum = head_cross_entropy(x_BxLxD, head, batch["targets"], weights_BxL, transposed=transposed,
                                dtype=model.dtype, chunks=loss_chunks)
  return loss_sum, weights_BxL.sum()


class LanguageModeling(Task):
  name = "lm"
  metric_names = ("loss", "perplexity")

  def prepare(self, cfg, tokenizer, data=None) -> None:
    if tokenizer is not None:
      resolve_vocab(cfg, tokenizer)

  @property
  def packed(self) -> bool:
    return self.cfg.data.packing == "pack"

  def batch_spec(self) -> dict[str, Field]:
    spec = {"inputs": token_field(), "targets": token_field(), "weights": token_field(np.float32)}
    if self.packed:
      spec.update(positions=token_field(), segment_ids=token_field())
    return spec

  def row_format(self):
    from research.data.rows import token_rows
    return token_rows(self.cfg.data.packing)

  def loss(self, model, batch, dropout_rng):
    loss_sum, weight_sum = loss_sums(model, batch, dropout_rng, self.cfg.train.loss_chunks)
    return loss_sum, weight_sum, {"loss_sum": loss_sum, "weight_sum": weight_sum}

  def metrics(self, sums):
    loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

  def synthetic_batch(self, rows, seq_len, rng):
    tokens = rng.integers(0, self.cfg.model.vocab_size, (rows, seq_len + 1)).astype(np.int32)
    b = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((rows, seq_len), np.float32)}
    if self.packed:
      b["positions"] = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy()
      b["segment_ids"] = np.ones((rows, seq_len), np.int32)
    return b

  def final_line(self, final, end) -> str:
    return (f"final eval loss {final['eval_loss']:.4f} nats/token vs unigram entropy "
            f"{end['unigram_entropy']:.4f} of the training tokens")

  def at_end(self, host_params, graphdef, data, log) -> dict:
    t = self.cfg.train
    out = {"unigram_entropy": data.unigram_entropy(), "samples": []}
    if t.sample_at_end:
      from flax import nnx
      from research.infer.generate import prompt_ids, sample_completions
      prompt = prompt_ids(data.tokenizer, "")
      completions = sample_completions(nnx.merge(graphdef, host_params()), self.cfg, data.tokenizer,
                                       [prompt] * t.sample_at_end, t.sample_tokens, t.sample_temperature, self.cfg.seed)
      out["samples"] = [data.tokenizer.decode(prompt) + c.text for c in completions]
    return out
