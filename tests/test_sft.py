"""Supervised finetuning (task.name=sft): chat templates rendered as transformers renders them, only
the replies and their EOS trained, packed rows giving every example the same loss and gradient as
one example per row, long examples cut and counted, bad records named by file and line, and the rows
shown as the model sees them.

transformers is the test-only reference (apply_chat_template on a tokenizer directory built here).
"""
import json
import re
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research.config import ConfigError, base_config
from research.config.validate import CHOICES
from research.data.chat import TEMPLATE_CHOICES, ChatTemplate, ConversationEncoder, chat_template
from research.data.corpus import DataError, corpus_spec, iter_split
from research.data.hf_tokenizer import HFTokenizer
from research.data.records import document
from research.data.rows import example_rows
from research.data.tokenizers import ByteTokenizer
from research.models import apply_preset, build_model
from research.tasks.lm import loss_sums
from research.tasks.sft import SupervisedFinetuning
from tests.helpers import WORDS

SEQ_LEN, ROWS = 64, 8
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>"]

# Hugging Face templates as their models ship them (the tool-calling branches left out).
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
# A template with no generation prompt at all: replies follow the prompt directly.
BARE = "{% for message in messages %}{{ message['content'] + '\\n' }}{% endfor %}"
# Replies marked as transformers' return_assistant_tokens_mask reads them.
CHATML_GENERATION = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

USER, REPLY = {"role": "user", "content": "the king spoke"}, {"role": "assistant", "content": "of bread and wine"}
SYSTEM = {"role": "system", "content": "you are the fool"}
CONVERSATIONS = {
    "one turn": [USER, REPLY],
    "system": [SYSTEM, {"role": "user", "content": "the queen sang"}, {"role": "assistant", "content": "of love"}],
    "two turns": [{"role": "user", "content": "rain"}, {"role": "assistant", "content": "and war"},
                  {"role": "user", "content": "the old fool"}, {"role": "assistant", "content": "sang songs of loss"}],
    "system, two turns": [SYSTEM, USER, REPLY, {"role": "user", "content": "a grey sky"},
                          {"role": "assistant", "content": " under the land "}],
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A byte-level BPE tokenizer.json with chat markup as special tokens; EOS is <|im_end|> (a chat model's)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  d = tmp_path_factory.mktemp("hf")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  texts = [" ".join(WORDS), "system user assistant model ### Instruction: Response: You are Qwen, created by "
                            "Alibaba Cloud. You are a helpful assistant."] * 4
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>", "chat_template": QWEN25}))
  return d


@pytest.fixture(scope="module")
def hf_tok(hf_dir):
  return HFTokenizer(str(hf_dir))


def _template(source, tokenizer, name="test"):
  if source in TEMPLATE_CHOICES:
    return chat_template(source, tokenizer)
  return ChatTemplate(source, name, {k: v for k, v in tokenizer.special_tokens.items() if v}, builtin=False)


def _encode(tokenizer, template, messages, seq_len=SEQ_LEN, system_prompt="", train_on="response"):
  """One record through the task's encode map, as the pipeline runs it."""
  from research.data.conversations import EncodeExample
  encode = EncodeExample(ConversationEncoder(tokenizer, template, train_on), "text", seq_len, system_prompt)
  return encode.map({"text": document({"messages": messages}, "data.jsonl:1")})


# ------------------------------------------------------------------ rendering: transformers' own

@pytest.mark.parametrize("source", [QWEN25, LLAMA3_INSTRUCT, GEMMA, "chatml", "llama3"],
                         ids=["qwen2.5", "llama3-instruct", "gemma", "chatml", "llama3"])
def test_rendering_and_ids_equal_transformers_apply_chat_template(hf_dir, hf_tok, source):
  from transformers import AutoTokenizer
  hf = AutoTokenizer.from_pretrained(str(hf_dir))
  template = _template(source, hf_tok)
  for name, messages in CONVERSATIONS.items():
    if source == GEMMA and messages[0]["role"] == "system":
      continue  # Gemma refuses a system message: tested below
    for generation_prompt in (False, True):
      want = hf.apply_chat_template(messages, chat_template=template.source, tokenize=False,
                                    add_generation_prompt=generation_prompt)
      assert template.render(messages, generation_prompt) == want, (name, generation_prompt)
    # the ids, EOS after each reply aside (chatml replies end with <|im_end|>, this tokenizer's EOS)
    pieces = ConversationEncoder(hf_tok, template).pieces(messages)
    ids = [i for p, reply in pieces for i in p if not (reply and p == [hf_tok.eos_id])]
    assert ids == hf.apply_chat_template(messages, chat_template=template.source)["input_ids"], name


def test_trained_tokens_are_transformers_assistant_masks(hf_dir, hf_tok):
  from transformers import AutoTokenizer
  hf = AutoTokenizer.from_pretrained(str(hf_dir))
  template = _template(CHATML_GENERATION, hf_tok)
  for name, messages in CONVERSATIONS.items():
    want = hf.apply_chat_template(messages, chat_template=CHATML_GENERATION, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, trained = ConversationEncoder(hf_tok, template)(messages)
    assert ids.tolist() == want["input_ids"] and trained.astype(int).tolist() == want["assistant_masks"], name


# ------------------------------------------------------------------ what trains

def test_only_replies_and_their_eos_train(hf_tok):
  byte = ByteTokenizer()
  messages = CONVERSATIONS["system, two turns"]
  replies = [m["content"] for m in messages if m["role"] == "assistant"]
  # plain: no end marker of its own, so the EOS id follows each reply, trained
  ids, trained = ConversationEncoder(byte, chat_template("plain", byte))(messages)
  cuts = np.flatnonzero(np.diff(trained.astype(int))) + 1
  trained_runs = [run.tolist() for start, run in zip([0, *cuts], np.split(ids, cuts)) if trained[start]]
  assert trained_runs == [byte.encode(r) + [byte.eos_id] for r in replies]
  assert byte.decode(ids[~trained]).endswith("### Response:\n") and "bread" not in byte.decode(ids[~trained])
  # chatml with a chat model's tokenizer: the reply's <|im_end|> is its EOS, trained, nothing appended
  ids, trained = ConversationEncoder(hf_tok, chat_template("chatml", hf_tok))(messages)
  assert (ids == hf_tok.eos_id).sum() == len(messages) and trained.sum() == sum(
      len(hf_tok.encode_with_special_tokens(r + "<|im_end|>\n")) for r in replies)
  assert hf_tok.decode(ids[trained]) == "".join(r + "\n" for r in replies)
  # what a model answers at generation (the end-of-run samples): the ids before the last reply
  encoder = ConversationEncoder(byte, chat_template("plain", byte))
  ids, trained = encoder(messages)
  reply_starts = [i for i in range(len(ids)) if trained[i] and not trained[i - 1]]
  assert encoder.prompt(messages) == ids[:reply_starts[-1]].tolist()
  assert byte.decode(encoder.prompt(messages)).endswith("a grey sky\n\n### Response:\n")
  # the encode map: weights are the targets' mask; the first token is no target
  example = _encode(byte, chat_template("plain", byte), messages, seq_len=512)
  ids, trained = ConversationEncoder(byte, chat_template("plain", byte))(messages)
  assert example["weights"].tolist() == trained[1:].astype(np.float32).tolist()
  assert example["inputs"].tolist() == ids[:-1].tolist() and example["targets"].tolist() == ids[1:].tolist()
  # sft.train_on=all: every target; sft.system_prompt: first where the conversation has no system message
  assert _encode(byte, chat_template("plain", byte), messages, train_on="all")["weights"].all()
  prompted = _encode(byte, chat_template("plain", byte), CONVERSATIONS["one turn"], system_prompt="be brief")
  assert byte.decode(prompted["inputs"]).startswith("be brief\n\n### Instruction:\nthe king spoke")
  kept = _encode(byte, chat_template("plain", byte), CONVERSATIONS["system"], system_prompt="be brief")
  assert byte.decode(kept["inputs"]).startswith("you are the fool\n\n")


# ------------------------------------------------------------------ packed == one example per row

@pytest.fixture(scope="module")
def model_fns():
  """(params, per-token weighted losses fn, gradient fn) of a tiny model, jitted once for [ROWS, SEQ_LEN]."""
  cfg = base_config()
  apply_preset(cfg.model, "gpt2-tiny")
  cfg.model.vocab_size, cfg.model.max_seq_len = 448, SEQ_LEN
  graphdef, shapes = nnx.split(nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0))))
  # Random parameters from numpy (no initialiser to compile), large enough that attention is far from
  # uniform and attending across examples would show.
  rng = np.random.default_rng(0)
  draw = lambda path, x: jnp.asarray(rng.normal("scale" in jax.tree_util.keystr(path), 0.3, x.shape), x.dtype)
  params = jax.tree_util.tree_map_with_path(draw, shapes)  # norm scales about 1, the rest about 0

  @jax.jit
  def token_losses(params, batch):
    logits = nnx.merge(graphdef, params)(batch["inputs"], positions=batch["positions"],
                                         segment_ids=batch["segment_ids"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * batch["weights"]

  grads = jax.jit(jax.grad(lambda p, b: loss_sums(nnx.merge(graphdef, p), b, None)[0]))
  return params, token_losses, grads


def _batch(rows):
  assert len(rows) <= ROWS
  rows = rows + [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (ROWS - len(rows))
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _rows(examples, packing):
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  return list(example_rows(packing)(ds, SEQ_LEN, 0, ROWS, False))


@pytest.mark.parametrize("source", [
    "chatml", "llama3", "plain", "auto", LLAMA3_INSTRUCT, BARE],
    ids=["chatml", "llama3", "plain", "auto-qwen2.5", "llama3-instruct", "no-generation-prompt"])
def test_packed_rows_give_each_example_the_loss_and_gradient_of_its_own_row(hf_tok, model_fns, source):
  """The contract: packing never lets examples see each other. Per-example losses (summed weighted
  token cross-entropies of its segment) and the gradient of the batch loss are the same whether the
  examples are packed several to a row or given one row each, with and without system messages,
  several turns, and templates with and without a generation prompt (and with EOS their own or appended:
  this tokenizer's EOS is chatml's <|im_end|>)."""
  params, token_losses, grads = model_fns
  tok = hf_tok
  template = _template(source, tok)
  examples = [_encode(tok, template, m) for m in CONVERSATIONS.values()]
  examples += [_encode(tok, template, CONVERSATIONS[k], system_prompt="be brief") for k in ("one turn", "two turns")]
  packed, padded = _rows(examples, "pack"), _rows(examples, "pad")
  assert len(padded) == len(examples) and len(packed) < len(examples)  # several examples share a row
  packed_losses = np.asarray(token_losses(params, _batch(packed)))
  padded_losses = np.asarray(token_losses(params, _batch(padded)))
  for i, example in enumerate(examples):
    n = len(example["inputs"])
    found = [(r, s) for r, row in enumerate(packed) for s in set(row["segment_ids"].tolist()) - {0}
             if (row["segment_ids"] == s).sum() == n
             and (row["inputs"][row["segment_ids"] == s] == example["inputs"]).all()]
    assert len(found) == 1, f"example {i} is not one whole segment of the packed rows"
    r, s = found[0]
    segment = packed[r]["segment_ids"] == s
    assert packed[r]["positions"][segment].tolist() == list(range(n))
    assert example["weights"].sum() > 0
    np.testing.assert_allclose(packed_losses[r][segment].sum(), padded_losses[i].sum(), rtol=1e-5)
  # (the attention key bias gets a gradient of float noise alone: softmax ignores a per-query shift)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads(params, _batch(packed)), grads(params, _batch(padded)))
  # what the segment ids prevent: with one segment per row, later examples attend to earlier ones
  merged = [{**row, "segment_ids": (row["segment_ids"] > 0).astype(np.int32)} for row in packed]
  crossed = np.asarray(token_losses(params, _batch(merged))).sum(1)
  assert np.abs(crossed - packed_losses.sum(1)).max() > 1e-2


# ------------------------------------------------------------------ long examples

def test_a_long_example_is_cut_to_its_row_counted_and_never_split(hf_tok):
  tok = ByteTokenizer()
  template = chat_template("plain", tok)
  long = [{"role": "user", "content": "a" * 5}, {"role": "assistant", "content": "b" * 100}]
  examples = [_encode(tok, template, m, seq_len=80) for m in (long, CONVERSATIONS["one turn"], long)]
  assert len(examples[0]["inputs"]) == 80 and examples[0]["weights"][-1] == 1  # cut: the rest untrained
  rows = list(example_rows("pack")(grain.MapDataset.source(examples).to_iter_dataset(), 80, 0, 4, False))
  segments = [(r, s) for r, row in enumerate(rows) for s in set(row["segment_ids"].tolist()) - {0}]
  assert len(segments) == 3  # three examples, three segments: nothing spilled into a row of its own
  assert sum(row["weights"].sum() for row in rows) == sum(e["weights"].sum() for e in examples)
  # counted when the pipeline opens, and reported at the end
  cfg = base_config()
  cfg.task.name, cfg.sft.template, cfg.train.seq_len = "sft", "plain", 80
  task = SupervisedFinetuning(cfg)
  records = lambda ms: [{"text": document({"messages": m}, f"x.jsonl:{i + 1}")} for i, m in enumerate(ms)]
  source = types.SimpleNamespace(train=records([long, long, CONVERSATIONS["one turn"]]),
                                 validation=records([CONVERSATIONS["one turn"]]), feature="text")
  (line,) = task.describe_rows([source], tok)
  assert "2 of 3 training and 0 of 1 validation examples are longer than a row" in line
  assert task.long_examples == {"train": [3, 2, 0], "validation": [1, 0, 0]}
  prompt_only = [{"role": "user", "content": "a" * 60}, {"role": "assistant", "content": "b"}]
  source.validation = records([prompt_only])
  with pytest.raises(DataError, match="none of the 1 validation examples has a token to train"):
    task.describe_rows([source], tok)


# ------------------------------------------------------------------ bad records, bad settings

@pytest.mark.parametrize("record,message", [
    ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]: role 'bot' is not one of system, user, assistant"),
    ({"prompt": "p", "response": "  "}, r"an empty 'response' \(sft.response_field\)"),
    ({"messages": [{"role": "user", "content": "x"}]}, r"'messages' holds no assistant message"),
    ({"messages": [{"role": "assistant", "content": ""}]}, r"messages\[0\]: an empty assistant message"),
    ({"messages": "hi"}, r"'messages' \(sft.messages_field\) must be a non-empty list"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\] must be an object with string \"role\" and \"content\""),
    ({"question": "q", "answer": "a"}, r"neither a 'messages' list \(sft.messages_field\) nor 'prompt' and 'response' "
                                      r"strings .*; it has: answer, question"),
])
def test_bad_records_name_their_file_and_line(tmp_path, record, message):
  path = tmp_path / "data.jsonl"
  path.write_text(json.dumps({"prompt": "fine", "response": "fine"}) + "\n" + json.dumps(record) + "\n")
  cfg = base_config()
  cfg.task.name = "sft"
  spec = corpus_spec(str(path), val_fraction=0.5, records=SupervisedFinetuning(cfg).records())
  with pytest.raises(DataError, match=rf"^{path}:2: {message}"):
    list(iter_split(spec, "train"))


def test_encoding_errors_name_the_record(hf_tok):
  forged = [{"role": "user", "content": "hi<|im_end|>"}, REPLY]
  with pytest.raises(DataError, match=r"^data.jsonl:1: messages\[0\] \(user\) holds '<\|im_end\|>', the text of one "
                                      "of the tokenizer's special tokens"):
    _encode(hf_tok, chat_template("chatml", hf_tok), forged)
  with pytest.raises(DataError, match=r"^data.jsonl:1: sft.template=test: TemplateError: System role not supported"):
    _encode(hf_tok, _template(GEMMA, hf_tok), CONVERSATIONS["system"])
  with pytest.raises(DataError, match="sft.template=auto: the tokenizer \\(byte, byte-v1\\) has no chat template of its "
                                      "own; choose a built-in one: chatml, llama3, plain"):
    chat_template("auto", ByteTokenizer())


def test_packing_fits_the_task_and_template_choices_are_the_built_ins():
  cfg = base_config()
  cfg.data.path, cfg.data.packing = "x", "pad"
  from research.config import validate_config
  with pytest.raises(ConfigError, match="data.packing=pad does not fit task.name=lm; it takes pack | chunk"):
    validate_config(cfg, 8)
  cfg.task.name, cfg.data.packing = "sft", "chunk"
  with pytest.raises(ConfigError, match="data.packing=chunk does not fit task.name=sft; it takes pack | pad"):
    validate_config(cfg, 8)
  assert CHOICES["sft.template"] == TEMPLATE_CHOICES


# ------------------------------------------------------------------ the rows, shown

def test_show_examples_marks_what_trains(tmp_path):
  from research.data.show_rows import show_rows
  from research.train.setup import complete_config
  from tests.helpers import tiny_config, write_sft_records
  cfg = tiny_config(write_sft_records(tmp_path / "data", num_train=400, num_val=4), str(tmp_path / "cache"))
  cfg.task.name, cfg.sft.template, cfg.data.val_files = "sft", "plain", ("val.jsonl",)
  cfg.model.max_seq_len, cfg.train.seq_len = 128, 128
  cfg.data.shuffle_rows = 0  # the first rows come without filling a shuffle window first
  _, data = complete_config(cfg, 8, log=lambda *a: None)
  shown = show_rows(data, cfg, 2)
  assert shown.startswith("row 1: ") and "\nrow 2: " in shown and "row 3: " not in shown
  responses = [json.loads(line)["response"] for line in open(tmp_path / "data" / "train.jsonl")]
  examples = re.findall(r"  example \d+: \d+ tokens, \d+ trained\n((?:    .*(?:\n|$))+)", shown)
  assert len(examples) >= 2
  for block in examples:  # the prompt as it is, the reply and its EOS marked
    text = "\n".join(line[4:] for line in block.rstrip("\n").split("\n"))
    found = re.fullmatch(r"### Instruction:\n(KING|QUEEN|FOOL)\.\n\n### Response:\n\[\[(.+)<eos>\]\]", text)
    assert found and found.group(2) in responses, text
