"""Build an experiment's data ahead of training: local corpora into array_record, the tokenizer.

  python scripts/prepare_data.py --config=experiments/<name>.py [--config.<key>=<value> ...]

Training does the same on first use; this lets you do it once, e.g. before a multi-host launch.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from research.config import ConfigError  # noqa: E402
from research.config.cli import absl_flags_parser, load_config  # noqa: E402
from research.data import DataError  # noqa: E402

flags.DEFINE_string("config", None, "Experiment file, optionally with a variant: experiments/x.py[:arg].")
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
    print(f"validation: {len(batches)} batches of {cfg.train.batch_size}x{cfg.train.seq_len}, "
          f"{tokens:,.0f} target tokens; unigram entropy {data.unigram_entropy():.4f} nats/token")
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
