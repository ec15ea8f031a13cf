"""Evaluate a checkpoint on a task: perplexity, multiple choice (lm-evaluation-harness 0.4's
log-likelihood scoring), a classifier's metrics, or generation against targets (lm-eval's
generate_until with exact_match). Prints a table; --out appends one JSON line.

  python scripts/eval.py --checkpoint=WORKDIR_OR_STEP_DIR --task=perplexity --data=FILE|validation
  python scripts/eval.py --checkpoint=... --task=mc --data=items.jsonl [--num_fewshot=5 \
      --fewshot_data=train.jsonl --seed=1234]
  python scripts/eval.py --checkpoint=CLASSIFIER --task=classify --data=labelled.jsonl
  python scripts/eval.py --checkpoint=... --task=generate --data=items.jsonl [--until=STR ...] [--max_gen_toks=N]
  [--out=results.jsonl] [--batch_size=32] [--packing=true|false] [--context=N] [--stride=N]

research/evals/ documents each task's exact rules (tokenization, windows, metrics).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A workdir (its newest step; a classifier's: its best step after "
                    "early stopping), checkpoints/ dir or step dir.")
flags.DEFINE_string("task", None, "perplexity | mc | classify | generate.")
flags.DEFINE_string("data", None, "perplexity: .txt/.jsonl/.csv or 'validation' (the run's split); mc: .jsonl "
                    "of {context, choices, gold}; classify: labelled .jsonl/.csv.")
flags.DEFINE_string("out", None, "Append the result as one JSON line to this file.")
flags.DEFINE_integer("batch_size", 32, "Rows per forward pass (results do not depend on it).")
flags.DEFINE_boolean("packing", True, "Pack several scored sequences into a row (results do not depend on it).")
flags.DEFINE_integer("num_fewshot", 0, "mc: examples drawn from --fewshot_data before each item.")
flags.DEFINE_string("fewshot_data", None, "mc: the .jsonl the few-shot examples come from.")
flags.DEFINE_integer("seed", 1234, "mc: the few-shot draw's seed (lm-eval's default 1234).")
flags.DEFINE_integer("stride", 0, "perplexity: window stride (0: context // 2).")
flags.DEFINE_integer("context", 0, "Longest scored sequence in tokens (0: the run's train.seq_len).")
flags.DEFINE_string("text_field", None, "The .jsonl field / .csv column of the text (default: the run's "
                    "data.text_field).")
flags.DEFINE_string("label_field", None, "classify: the label's field (default: the run's data.label_field).")
flags.mark_flags_as_required(["checkpoint", "task", "data"])
flags.DEFINE_multi_string("until", [], "generate: stop strings (repeatable; default a blank line, lm-eval's).")
flags.DEFINE_integer("max_gen_toks", 256, "generate: new tokens at most (lm-eval's default 256).")
flags.DEFINE_integer("num_slots", 8, "generate: sequences decoded together (results do not depend on it).")
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  from research.checkpoint import CheckpointError
  from research.data.corpus import DataError
  from research.evals.evaluate import evaluate_checkpoint, format_table, write_result
  try:
    result = evaluate_checkpoint(FLAGS.checkpoint, FLAGS.task, FLAGS.data, FLAGS.batch_size, FLAGS.packing,
                                 FLAGS.num_fewshot, FLAGS.fewshot_data, FLAGS.seed, FLAGS.stride,
                                 FLAGS.text_field, FLAGS.label_field, FLAGS.context, FLAGS.until,
                                 FLAGS.max_gen_toks, FLAGS.num_slots, log=lambda line: print(line, file=sys.stderr))
  except (CheckpointError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(format_table(result))
  if FLAGS.out:
    write_result(FLAGS.out, result)
    print(f"appended the result to {FLAGS.out}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
