"""Pretrain a language model.

  python scripts/train.py --config=experiments/<name>.py[:variant] --workdir=DIR [--config.<key>=<value> ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from research.config import ConfigError  # noqa: E402
from research.config.cli import apply_overrides, load_experiment, split_argv  # noqa: E402
from research.data.corpus import DataError  # noqa: E402

flags.DEFINE_string("config", None, "Experiment file, optionally with a variant: experiments/x.py[:arg].")
flags.DEFINE_string("workdir", None, "Where metrics, TensorBoard logs and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
_OVERRIDES: list[str] = []


def parse_flags(argv):
  rest, overrides = split_argv(argv)
  _OVERRIDES.extend(overrides)
  return FLAGS(rest)


def main(_):
  logging.set_verbosity(logging.ERROR)  # keep JAX backend probing and TFDS chatter off the console
  from research.train.trainer import NonFiniteError, train
  try:
    cfg = apply_overrides(load_experiment(FLAGS.config), _OVERRIDES)
    train(cfg, FLAGS.workdir)
  except (ConfigError, DataError, NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
