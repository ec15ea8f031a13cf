"""Conversations -> token ids and which of them train, through a Jinja chat template.

Rendering is transformers' apply_chat_template's: a sandboxed Jinja environment
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls, `raise_exception`, a
`tojson` that does not escape HTML, the `{% generation %}` tag) given `messages`,
`add_generation_prompt` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...). The
template is the tokenizer's own (`sft.template=auto`: the chat template of its tokenizer_config.json
or chat_template.jinja) or a built-in one (chat_templates.py). `strftime_now` is left undefined on
purpose: a template that prints today's date would give other training tokens on another day (the
ones that ask whether it is defined fall back to their fixed date).

What trains: a reply is what rendering the conversation up to it adds to rendering the conversation
before it with the generation prompt, render(messages[:i+1]) minus render(messages[:i],
add_generation_prompt=True). So the header a template writes before a reply ("<|im_start|>assistant\\n")
is prompt, and what it writes after the content ("<|im_end|>\\n", "<|eot_id|>") trains with it. The
pieces are tokenized in order, each on its own, so no token straddles a prompt/reply boundary. A
template that renders a turn differently once another follows (one that drops earlier reasoning) cannot
be cut this way and is refused. Each reply ends with the tokenizer's EOS, trained: the template's own
when the reply holds it (a chat model's <|im_end|> or <|eot_id|>), else the EOS id appended.

Markup: in the rendered template a special token's text is that token (as transformers reads it); in
a message's content it is refused, so that a record cannot forge the end of a turn.
"""
from __future__ import annotations

import functools
import json
import re

import numpy as np

from research.data.chat_templates import BUILTIN_TEMPLATES
from research.data.corpus import DataError

ROLES = ("system", "user", "assistant")
TEMPLATE_CHOICES = ("auto", *BUILTIN_TEMPLATES)


def _raise_exception(message):
  import jinja2
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=None)
def _environment():
  import jinja2.ext
  import jinja2.nodes
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} (transformers marks replies with it): renders its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  return env


class ChatTemplate:
  """A compiled template: render(messages), and pieces(messages) cut into prompt and reply text."""

  def __init__(self, source: str, name: str, variables: dict, builtin: bool):
    self.source, self.name, self.variables, self.builtin = source, name, variables, builtin

  @functools.cached_property
  def _compiled(self):
    import jinja2
    try:
      return _environment().from_string(self.source)
    except jinja2.TemplateError as e:
      raise DataError(f"sft.template={self.name}: the chat template does not compile ({e})") from None

  def __getstate__(self):  # picklable for data-loader workers: compiled again there
    return {k: v for k, v in self.__dict__.items() if k != "_compiled"}

  def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
    import jinja2
    try:
      return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   **self.variables)
    except jinja2.TemplateError as e:
      raise ValueError(f"sft.template={self.name}: {type(e).__name__}: {e}") from None

  def pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is a reply) pieces, in order; joined, they are render(messages)."""
    full = self.render(messages)
    out, done = [], ""
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      before = self.render(messages[:i], add_generation_prompt=True)
      upto = self.render(messages[:i + 1])
      if not (before.startswith(done) and upto.startswith(before) and full.startswith(upto)):
        raise ValueError(f"sft.template={self.name}: the template renders the conversation before message {i} "
                         "differently once a reply follows, so the reply's tokens cannot be told from the prompt's; "
                         f"choose another sft.template ({', '.join(TEMPLATE_CHOICES)})")
      if len(upto) == len(before):
        raise ValueError(f"sft.template={self.name}: the template renders nothing for the reply in message {i}")
      out += [(before[len(done):], False), (upto[len(before):], True)]
      done = upto
    out.append((full[len(done):], False))
    return [(text, reply) for text, reply in out if text]


def chat_template(name: str, tokenizer) -> ChatTemplate:
  """`sft.template`: "auto" (the tokenizer's own) or a built-in name."""
  variables = {k: v for k, v in (getattr(tokenizer, "special_tokens", None) or {}).items() if v}
  if name == "auto":
    if not tokenizer.chat_template:
      raise DataError(f"sft.template=auto: the tokenizer ({tokenizer.kind}, {tokenizer.fingerprint}) has no chat "
                      f"template of its own; choose a built-in one: {', '.join(BUILTIN_TEMPLATES)}")
    return ChatTemplate(tokenizer.chat_template, "auto", variables, builtin=False)
  if name not in BUILTIN_TEMPLATES:
    raise DataError(f"sft.template={name!r} is not one of {', '.join(TEMPLATE_CHOICES)}")
  return ChatTemplate(BUILTIN_TEMPLATES[name], name, variables, builtin=True)


class ConversationEncoder:
  """messages -> (ids int32 [n], trained bool [n]): token t trains when trained[t] (as a target)."""

  def __init__(self, tokenizer, template: ChatTemplate, train_on: str = "response"):
    self.tokenizer, self.template, self.train_on = tokenizer, template, train_on
    specials = sorted(getattr(tokenizer, "special_token_ids", None) or {}, key=len, reverse=True)
    self._special_text = re.compile("|".join(map(re.escape, specials))) if specials else None

  def pieces(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
    """(ids, is a reply) per piece: BOS first for a built-in template whose tokenizer's model expects it,
    the template's pieces, and after each reply without the EOS token the EOS id (a reply piece)."""
    tok = self.tokenizer
    for i, message in enumerate(messages):
      found = self._special_text.search(message["content"]) if self._special_text else None
      if found:
        raise ValueError(f"messages[{i}] ({message['role']}) holds {found.group()!r}, the text of one of the "
                         "tokenizer's special tokens; read as markup it would forge a turn boundary, so remove it")
    encode = getattr(tok, "encode_with_special_tokens", tok.encode)
    out = [([tok.bos_id], False)] if self.template.builtin and tok.add_bos else []
    for text, reply in self.template.pieces(messages):
      ids = encode(text)
      out.append((ids, reply))
      if reply and tok.eos_id not in ids:
        out.append(([tok.eos_id], True))
    return out

  def __call__(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pieces = self.pieces(messages)
    ids = np.asarray([i for p, _ in pieces for i in p], np.int32)
    trained = np.asarray([reply or self.train_on == "all" for p, reply in pieces for _ in p], bool)
    return ids, trained

  def prompt(self, messages: list[dict]) -> list[int]:
    """The ids before the last reply, as training tokenizes them: what a model answers at generation."""
    pieces = self.pieces(messages)
    last = max(i for i, (_, reply) in enumerate(pieces) if reply)
    while last > 0 and pieces[last - 1][1]:  # a reply and its appended EOS are one
      last -= 1
    return [i for p, _ in pieces[:last] for i in p]
