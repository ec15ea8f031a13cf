"""Conversations as records and examples, for supervised finetuning (research/tasks/sft.py).

CheckRecord: a .jsonl/.csv record -> the stored conversation, {"messages": [{"role", "content"}, ...]},
from either a one-turn record (prompt, response) or a conversation; a bad record is a ValueError the
corpus reader prefixes with its file and line. EncodeExample: a stored conversation -> an example,
{"inputs", "targets", "weights"} of at most seq_len tokens (weight 1 on the targets that train), cut
to a row when longer; its errors name the record's file and line too.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from research.data.chat import ROLES, ConversationEncoder
from research.data.corpus import DataError
from research.data.records import WHERE, parse
from research.data.sources import text_of


@dataclasses.dataclass(frozen=True)
class CheckRecord:
  """A record -> {"messages": [{"role", "content"}, ...]}; ValueError naming the field when bad."""
  messages_field: str
  prompt_field: str
  response_field: str

  def __call__(self, record: dict) -> dict:
    field = self.messages_field
    if field in record:
      messages = record[field]
      if not isinstance(messages, list) or not messages:
        raise ValueError(f"{field!r} (sft.messages_field) must be a non-empty list of "
                         "{\"role\", \"content\"} objects")
      out = []
      for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
          raise ValueError(f"{field}[{i}] must be an object with string \"role\" and \"content\", not {m!r:.80}")
        if m["role"] not in ROLES:
          raise ValueError(f"{field}[{i}]: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if m["role"] == "assistant" and not m["content"].strip():
          raise ValueError(f"{field}[{i}]: an empty assistant message (a reply with nothing to train)")
        out.append({"role": m["role"], "content": m["content"]})
      if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"{field!r} holds no assistant message, so nothing of it would train")
      return {"messages": out}
    prompt, response = record.get(self.prompt_field), record.get(self.response_field)
    if isinstance(prompt, str) and isinstance(response, str):
      if not response.strip():
        raise ValueError(f"an empty {self.response_field!r} (sft.response_field): a reply with nothing to train")
      return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    raise ValueError(f"neither a {field!r} list (sft.messages_field) nor {self.prompt_field!r} and "
                     f"{self.response_field!r} strings (sft.prompt_field, sft.response_field); it has: "
                     f"{', '.join(sorted(record)) or 'no fields'}")


def conversation_text(fields: dict) -> str:
  """A checked record's text (what a tokenizer trained on the corpus reads): its contents."""
  return "\n".join(m["content"] for m in fields["messages"])


class EncodeExample(grain.transforms.Map):
  """A stored record -> {"inputs", "targets", "weights"} of at most seq_len tokens: the conversation's
  ids shifted by one, weight 1 on trained targets. Errors name the record's file and line."""

  def __init__(self, encoder: ConversationEncoder, feature: str, seq_len: int, system_prompt: str):
    self.encoder, self.feature, self.seq_len, self.system_prompt = encoder, feature, seq_len, system_prompt

  def messages(self, record) -> tuple[list[dict], str]:
    fields = parse(text_of(record, self.feature))
    messages = fields["messages"]
    if self.system_prompt and messages[0]["role"] != "system":
      messages = [{"role": "system", "content": self.system_prompt}, *messages]
    return messages, fields[WHERE]

  def conversation(self, record) -> tuple[np.ndarray, np.ndarray]:
    """The whole conversation's (ids, trained), before it is cut to a row."""
    messages, where = self.messages(record)
    try:
      return self.encoder(messages)
    except ValueError as e:
      raise DataError(f"{where}: {e}") from None

  def map(self, record) -> dict:
    ids, trained = self.conversation(record)
    n = min(len(ids) - 1, self.seq_len)  # inputs and targets of one row at most
    return {"inputs": ids[:n], "targets": ids[1:n + 1], "weights": trained[1:n + 1].astype(np.float32)}
