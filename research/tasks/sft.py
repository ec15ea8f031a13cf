"""Supervised finetuning (`task.name=sft`): replies to prompts, the loss on the replies alone.

Records (local .jsonl, or .csv for the one-turn form), field names from `sft.*_field`:
  {"prompt": ..., "response": ...}                       a one-turn conversation (user, assistant)
  {"messages": [{"role": system|user|assistant, "content": ...}, ...]}   with at least one reply
`sft.system_prompt` goes first in every conversation without a system message. A bad record (a
missing field, an unknown role, an empty reply) stops with its file and line.
Each conversation is rendered with the chat template (`sft.template`, research/data/chat.py) and
tokenized; `sft.train_on=response` trains the replies' tokens (each reply ends with the EOS, trained),
`all` every token. An example longer than a row (train.seq_len + 1 tokens) is cut to it: what is cut
is not trained, never split into another example; the pipeline logs how many, at_end reports them.
Rows (rows.example_rows): packed whole with segment ids and per-example positions (`data.packing=pack`),
or one per row (`pad`); both give every example the same loss and gradient.
Loss: next-token cross-entropy weighted by the trained-token mask (lm.loss_sums, through the model's
own forward pass, so a wrapped model such as LoRA trains unchanged); metrics in nats per trained token.
"""
from __future__ import annotations

import numpy as np

from research.tasks.lm import LanguageModeling


class SupervisedFinetuning(LanguageModeling):
  name = "sft"
  metric_names = ("loss", "perplexity")   # loss: nats per trained token
  packed = True                           # rows always carry positions and segment ids

  def __init__(self, cfg):
    super().__init__(cfg)
    # split -> [examples, longer than a row, left with no token to train by the cut]
    self.long_examples: dict[str, list[int]] = {}

  def records(self):
    from research.data.conversations import CheckRecord, conversation_text
    from research.data.records import Records
    s = self.cfg.sft
    return Records(f"sft:{s.messages_field}:{s.prompt_field}:{s.response_field}",
                   CheckRecord(s.messages_field, s.prompt_field, s.response_field), conversation_text)

  def example_encoder(self, tokenizer, feature: str = "text"):
    """The encode map (research/data/conversations.py): a stored conversation -> an example."""
    from research.data.chat import ConversationEncoder, chat_template
    from research.data.conversations import EncodeExample
    s = self.cfg.sft
    conversation = ConversationEncoder(tokenizer, chat_template(s.template, tokenizer), s.train_on)
    return EncodeExample(conversation, feature, self.cfg.train.seq_len, s.system_prompt)

  def row_format(self):
    from research.data.rows import RowFormat, example_rows
    return RowFormat(encode=self.example_encoder, rows=example_rows(self.cfg.data.packing), records=self.records(),
                     describe=self.describe_rows)

  def describe_rows(self, sources, tokenizer) -> list[str]:
    """Encodes every example once, so that a bad one stops the run before it starts, and counts the
    ones longer than a row (cut to it) and those the cut leaves with nothing to train."""
    from research.data.corpus import DataError
    seq_len = self.cfg.train.seq_len
    for split in ("train", "validation"):
      total = long = empty = 0
      for s in sources:
        encode, records = self.example_encoder(tokenizer, s.feature), getattr(s, split)
        for i in range(len(records)):
          ids, trained = encode.conversation(records[i])
          total += 1
          long += len(ids) - 1 > seq_len
          empty += not trained[1:seq_len + 1].any()
      if total and empty == total:
        raise DataError(f"none of the {total:,} {split} examples has a token to train within a row of "
                        f"train.seq_len={seq_len} targets (their prompts fill it); raise train.seq_len")
      self.long_examples[split] = [total, long, empty]
    (n_train, long_train, empty_train), (n_val, long_val, _) = (self.long_examples["train"],
                                                               self.long_examples["validation"])
    return [f"sft: template {self.cfg.sft.template}, training on {self.cfg.sft.train_on} tokens; {long_train:,} of "
            f"{n_train:,} training and {long_val:,} of {n_val:,} validation examples are longer than a row "
            f"(train.seq_len={seq_len} targets) and are cut to it, the rest of each untrained"
            + (f"; {empty_train:,} training examples keep no token to train" if empty_train else "")]

  def synthetic_batch(self, rows, seq_len, rng):
    batch = super().synthetic_batch(rows, seq_len, rng)
    batch["weights"] = (np.arange(seq_len) >= seq_len // 4).astype(np.float32)[None].repeat(rows, 0)  # a prompt
    return batch

  def final_line(self, final, end) -> str:
    n, long, _ = end["long_examples"].get("train", [0, 0, 0])
    return (f"final eval loss {final['eval_loss']:.4f} nats per trained token (perplexity "
            f"{final['eval_perplexity']:.2f}); {long:,} of {n:,} training examples were cut to a row")

  def at_end(self, host_params, graphdef, data, log) -> dict:
    t = self.cfg.train
    out = {"long_examples": dict(self.long_examples), "samples": []}
    if t.sample_at_end:
      out["samples"] = self.sample_replies(host_params(), graphdef, data, t.sample_at_end)
    return out

  def sample_replies(self, params, graphdef, data, count: int) -> list[str]:
    """Replies the model writes to the first `count` validation prompts: the prompt as the model reads
    it, then the reply up to its EOS."""
    from flax import nnx
    from research.infer.generate import sample_completions
    t, source = self.cfg.train, data.sources[0]
    encode = self.example_encoder(data.tokenizer, source.feature)
    prompts = [encode.encoder.prompt(encode.messages(source.validation[i])[0])
               for i in range(min(count, len(source.validation)))]
    if not prompts:
      return []
    completions = sample_completions(nnx.merge(graphdef, params), self.cfg, data.tokenizer, prompts,
                                     t.sample_tokens, t.sample_temperature, self.cfg.seed)
    return [data.tokenizer.decode(p) + c.text for p, c in zip(prompts, completions)]
