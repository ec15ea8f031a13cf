"""Build an experiment's data ahead of training: local corpora into array_record, the tokenizer.

  python scripts/prepare_data.py --config=experiments/<name>.py [--config.<key>=<value> ...]
      [--show_examples=N]

Training does the same on first use; this lets you do it once, e.g. before a multi-host launch.
--show_examples=N prints the first N training rows as the model sees them, the tokens that train
between [[ and ]] (green on a terminal), so you can check what a run trains on.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from research.config import ConfigError  # noqa: E402
from research.config.cli import absl_flags_parser, load_config  # noqa: E402
from research.data import DataError  # noqa: E402

flags.DEFINE_string("config", None, "Experiment file, optionally with a variant: experiments/x.py[:arg].")
flags.DEFINE_integer("show_examples", 0, "Print the first N training rows decoded, trained tokens marked.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
parse_flags, _OVERRIDES = absl_flags_parser(FLAGS)


def main(_):
  logging.set_verbosity(logging.ERROR)  # TFDS and JAX chatter; our own messages are printed
  from research.train.setup import prepare_task
  try:
    cfg = load_config(FLAGS.config, _OVERRIDES)
    _, data = prepare_task(cfg)
    batches = data.eval_batches(cfg.train.batch_size, cfg.train.seq_len, 0)
    tokens = sum(float(b["weights"].sum()) for b in batches)
    # the unigram entropy reads each document as text: not a structured task's records
    entropy = f"; unigram entropy {data.unigram_entropy():.4f} nats/token" if data.row_format.records is None else ""
    print(f"validation: {len(batches)} batches of {cfg.train.batch_size}x{cfg.train.seq_len}, "
          f"{tokens:,.0f} trained target tokens{entropy}")
    if FLAGS.show_examples:
      from research.data.show_rows import show_rows
      print(show_rows(data, cfg, FLAGS.show_examples, color=sys.stdout.isatty()))
  except (ConfigError, DataError) as e:  # (a bad record's DataError names its file and line)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
