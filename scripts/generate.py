"""Text from a trained or imported model: sampling (greedy, temperature, top-k, top-p, repetition
penalty) or beam search, with a KV cache, prompts batched together.

  python scripts/generate.py --workdir=DIR | --checkpoint=PATH  --prompt=TEXT | --prompts_file=FILE \
      [--max_new_tokens=64] [--max_length=N] [--temperature=0.8] [--top_k=0] [--top_p=1.0] \
      [--repetition_penalty=1.0] [--num_beams=1] [--num_return_sequences=1] [--seed=0] [--stop=STR] [--json]

A single prompt's tokens are printed as they come; --json writes one JSON object per completion
({prompt_index, index, prompt, text, token_ids, finish_reason, logprobs}). --prompts_file holds one
prompt per line (.txt), {"prompt": ...} objects (.jsonl) or a `prompt` column (.csv). The prompt is encoded as training
documents start (BOS for tokenizers that use it; an empty prompt starts after EOS).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("workdir", None, "A run's workdir (its newest checkpoint).")
flags.DEFINE_string("checkpoint", None, "A workdir, checkpoints/ dir or step dir (or a Hugging Face import's).")
flags.DEFINE_string("prompt", None, "One prompt ('' for an unconditional sample).")
flags.DEFINE_string("prompts_file", None, "Prompts: one per line (.txt) or {\"prompt\": ...} per line (.jsonl).")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.", lower_bound=0)
flags.DEFINE_integer("max_length", None, "Prompt + generated tokens at most (default: the model's context).",
                     lower_bound=1)
flags.DEFINE_float("temperature", 0.8, "0 is greedy.", lower_bound=0.0)
flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this mass (1: all).")
flags.DEFINE_float("repetition_penalty", 1.0, "transformers' repetition penalty (1: off).")
flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams (1: sampling).", lower_bound=1)
flags.DEFINE_float("length_penalty", 1.0, "Beam search: hypothesis score = sum logprob / length ** this.")
flags.DEFINE_integer("num_return_sequences", 1, "Completions per prompt.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed gives the same text.")
flags.DEFINE_multi_string("stop", [], "Stop strings (repeatable); generation also stops at EOS.")
flags.DEFINE_integer("num_slots", 8, "Sequences decoded together (the KV cache's rows).", lower_bound=1)
flags.DEFINE_bool("json", False, "Write one JSON object per completion to stdout.")
FLAGS = flags.FLAGS


def read_prompts(path: str) -> list[str]:
  from research.data.corpus import DataError
  from research.infer.texts import read_texts
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file (--prompts_file)")
  return read_texts(path, "prompt", flag="the prompts file's field")


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()
  from research.checkpoint import CheckpointError
  from research.data.corpus import DataError
  from research.infer.engine import Engine, SamplingParams
  from research.infer.generate import GenerateSettings, generate, prompt_ids
  sources = [f for f in ("workdir", "checkpoint") if getattr(FLAGS, f)]
  inputs = [f for f in ("prompt", "prompts_file") if getattr(FLAGS, f) is not None]
  try:
    if len(sources) != 1:
      raise ValueError("give exactly one of --workdir, --checkpoint")
    if len(inputs) != 1:
      raise ValueError("give exactly one of --prompt, --prompts_file")
    if FLAGS.num_return_sequences > FLAGS.num_beams > 1:
      raise ValueError(f"--num_return_sequences={FLAGS.num_return_sequences} must be <= --num_beams={FLAGS.num_beams}")
    prompts = [FLAGS.prompt] if FLAGS.prompt is not None else read_prompts(FLAGS.prompts_file)
    sampling = SamplingParams(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                              top_p=FLAGS.top_p, repetition_penalty=FLAGS.repetition_penalty, seed=FLAGS.seed,
                              stop_strings=tuple(FLAGS.stop), max_length=FLAGS.max_length)
    sampling.check()
    slots = max(FLAGS.num_slots, FLAGS.num_beams)
    engine = Engine.from_checkpoint(getattr(FLAGS, sources[0]), num_slots=slots)
    ids = [prompt_ids(engine.tokenizer, p) for p in prompts]
    for i, p in enumerate(ids):
      if len(p) + 1 > engine.max_len:
        raise ValueError(f"prompt {i} is {len(p)} tokens; the context is {engine.max_len}")
  except (CheckpointError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  settings = GenerateSettings(sampling, FLAGS.num_return_sequences, FLAGS.num_beams, FLAGS.length_penalty)
  stream = len(prompts) == 1 and FLAGS.num_return_sequences == 1 and FLAGS.num_beams == 1 and not FLAGS.json
  if stream:
    print(prompts[0], end="", flush=True)
    generate(engine, ids, settings, on_event=lambda _, e: print(e.text, end="", flush=True))
    print()
    return
  results = generate(engine, ids, settings)
  for i, (prompt, completions) in enumerate(zip(prompts, results)):
    for j, c in enumerate(completions):
      if FLAGS.json:
        print(json.dumps({"prompt_index": i, "index": j, "prompt": prompt, "text": c.text, "token_ids": c.token_ids,
                          "finish_reason": c.finish_reason, "logprobs": c.logprobs}, ensure_ascii=False))
      else:
        print(f"--- prompt {i}, completion {j} ({c.finish_reason})\n{prompt}{c.text}")


if __name__ == "__main__":
  app.run(main)
