"""Report a sweep or a single training run from its workdir.

  python scripts/report.py --workdir=SWEEP_DIR [--out=DIR]   # trial table (printed, trials.csv), plots/,
                                                            # scaling.json when trials vary N and D
  python scripts/report.py --workdir=RUN_DIR [--out=DIR]     # plots/ of the run's metrics and its summary

research/sweeps/report.py says what each report holds.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", None, "A sweep's workdir (sweep.json) or a training run's (metrics.jsonl).")
flags.DEFINE_string("out", None, "Write trials.csv, scaling.json and plots/ here instead of under --workdir.")
flags.DEFINE_integer("bootstrap", 100, "Bootstrap resamples for the scaling fits' intervals (0: none).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(_):
  from research.sweeps.report import ReportError, write_report
  try:
    write_report(FLAGS.workdir, out_dir=FLAGS.out, bootstrap=FLAGS.bootstrap)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
