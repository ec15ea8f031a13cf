"""Built-in chat templates (`sft.template=<name>`), for models without one of their own.

Jinja, rendered as a tokenizer's own template is (research/data/chat.py): `messages` (role, content)
and `add_generation_prompt`. They write no BOS (chat.py puts the tokenizer's BOS id first when its
model expects one) and no EOS (each reply is followed by the EOS id): an id, unlike a special token's
text, means the same to every tokenizer, SentencePiece and bytes included.

  chatml  <|im_start|>{role}\n{content}<|im_end|>\n per message (Qwen, SmolLM and many others)
  llama3  <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> per message (Llama 3)
  plain   "### Instruction:" / "### Response:" blocks (Alpaca-style), plain text that a tokenizer
          trained here reads without special tokens
"""

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA3 = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# Blocks separated by a blank line; a reply ends where its EOS follows, with no trailing newline.
PLAIN = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] }}"
    "{% else %}{{ '### Response:\\n' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ('\\n\\n' if messages else '') + '### Response:\\n' }}{% endif %}")

BUILTIN_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "plain": PLAIN}
