"""A trained classifier's predictions: each text's label and class probabilities, one JSON line each.

  python scripts/predict.py --checkpoint=WORKDIR_OR_STEP_DIR --input=FILE --out=FILE.jsonl \
      [--text_field=text] [--batch_size=32]

FILE is .jsonl (the text in --text_field, default the run's data.text_field), .csv (that column) or
.txt (one text per line). A workdir whose run stopped early gives its best step.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A classifier's workdir (its best step after early stopping, else its "
                    "newest), checkpoints/ dir or step dir.")
flags.DEFINE_string("input", None, "Texts: .jsonl, .csv or .txt (one per line).")
flags.DEFINE_string("out", None, "The .jsonl file to write: {text, label, probabilities} per line.")
flags.DEFINE_string("text_field", None, "The .jsonl field / .csv column of the text (default: the run's "
                    "data.text_field).")
flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.", lower_bound=1)
flags.mark_flags_as_required(["checkpoint", "input", "out"])
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  from research.checkpoint import CheckpointError
  from research.data.corpus import DataError
  from research.infer.classify import predict_file
  try:
    n = predict_file(FLAGS.checkpoint, FLAGS.input, FLAGS.out, FLAGS.text_field, FLAGS.batch_size)
  except (CheckpointError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {n:,} predictions to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
