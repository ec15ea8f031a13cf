"""Run a hyperparameter sweep: each trial an ordinary training run in DIR/trials/<id>, coordinated by
an Optuna study.

  python scripts/sweep.py --sweep=experiments/sweeps/lr_width.py --workdir=DIR [--parallel=N]
  python scripts/sweep.py --sweep=FILE --workdir=DIR --worker --storage=URL      (on each machine)
  python scripts/sweep.py --sweep=FILE --workdir=DIR --dry_run [--target=v5p:4x4x4]

The sweep file's get_sweep() returns a research.sweeps.Sweep (space, sampler grid|random|tpe,
metric, direction, trials, step budget, pruning). Rerunning the same command continues the study:
finished trials are kept, interrupted ones resume from their checkpoints, a trial killed with its
worker is taken over. At the end, DIR/trials.csv, the printed table and DIR/plots/*.png
(scripts/report.py --workdir=DIR writes them again any time).

Storage: without --storage, DIR/study.journal (Optuna's journal file; on a filesystem every
machine mounts it serves many machines too: --storage=journal:/shared/study.journal). A database:
--storage=postgresql://user:pass@host/db or mysql+pymysql://... (install psycopg2-binary / pymysql).
sqlite:///x.db works on one machine and is refused with --worker.

A pod slice: run the same command on every host with --worker; host 0 chooses each trial and the
others run it with it (a gang). TPU VMs are detected; elsewhere give --num_processes, --process_id
and --coordinator_address=HOST:PORT (host 0's address; each trial uses PORT + its sequence number).
Exit: 0 the study is done (failed trials are recorded, not fatal) or was stopped (SIGTERM/SIGINT)
to be continued; 1 a bad sweep or storage; 3 (--dry_run) a trial shape does not fit.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from research.config.cli import absl_flags_parser  # noqa: E402

flags.DEFINE_string("sweep", None, "A file whose get_sweep() returns a research.sweeps.Sweep.")
flags.DEFINE_string("workdir", None, "The sweep's directory: sweep.json, study.journal, trials/<id>/, trials.csv, "
                    "plots/.")
flags.DEFINE_integer("parallel", 1, "Trials run at once on this machine (each a separate process).")
flags.DEFINE_integer("devices_per_trial", None, "Accelerators per trial (default: this machine's split evenly over "
                     "--parallel); on a CPU, the host devices each trial sees.")
flags.DEFINE_enum("accelerator", "auto", ["auto", "gpu", "tpu", "cpu"], "What --devices_per_trial splits.")
flags.DEFINE_bool("worker", False, "One of several machines working on one study (--storage shared by all): "
                  "SQLite is refused.")
flags.DEFINE_string("storage", None, "The study's storage: a journal file path (journal:PATH), or a database URL "
                    "(postgresql://, mysql+pymysql://; sqlite:/// on one machine). Default DIR/study.journal.")
flags.DEFINE_float("grace_s", 120, "A running trial whose worker's heartbeat has not moved for this long (or whose "
                   "worker on this host is gone) is taken over and resumed from its checkpoint.")
flags.DEFINE_float("heartbeat_s", 10, "How often a worker renews the lease of its running trials.")
flags.DEFINE_bool("retry_failed", False, "Run the failed trials of a fixed design again.")
flags.DEFINE_bool("report", True, "Write the table and plots when the study is done.")
flags.DEFINE_bool("dry_run", False, "Plan every distinct trial shape (scripts/train.py --dry_run) and exit: 0 all fit, "
                  "3 some do not. Runs no trial.")
flags.DEFINE_string("target", None, "With --dry_run: plan for this TPU topology (v5p:4x4x4, ...) or GPU "
                    "(h100, ...), as scripts/train.py --target.")
flags.DEFINE_integer("target_slices", 1, "With --target: slices.")
flags.DEFINE_integer("target_devices", 8, "With a GPU --target: how many GPUs.")
flags.DEFINE_integer("num_processes", None, "A gang over several hosts: how many (TPU VMs: detected).")
flags.DEFINE_integer("process_id", None, "A gang over several hosts: this host's index (0 chooses the trials).")
flags.DEFINE_string("coordinator_address", None, "A gang off TPU: HOST:PORT of host 0 for the trials' "
                    "jax.distributed (each trial uses PORT + its sequence number).")
flags.DEFINE_string("gang", None, "A gang's name in the study (default: from the TPU slice, or 'gang').")
flags.DEFINE_multi_string("train_flag", [], "More scripts/train.py flags for every trial (e.g. "
                          "--train_flag=--distributed_heartbeat_timeout_s=60).")
flags.mark_flags_as_required(["sweep"])
FLAGS = flags.FLAGS
parse_flags, _OVERRIDES = absl_flags_parser(FLAGS)


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.config import ConfigError
  from research.sweeps.space import load_sweep
  try:
    sweep = load_sweep(FLAGS.sweep)
    for item in _OVERRIDES:  # --config.<key>=<value>: set in every trial (recorded in the study)
      key, _, value = item[len("--config."):].partition("=")
      sweep.overrides[key] = value
    if FLAGS.dry_run:
      sys.exit(dry_run(sweep))
    if not FLAGS.workdir:
      raise ConfigError("--workdir is required (where the study, trials and reports go)")
    sys.exit(run(sweep))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run(sweep) -> int:
  from research.sweeps import gang as gang_lib
  from research.sweeps.worker import Worker, WorkerOptions
  gang = gang_lib.from_flags(FLAGS.num_processes, FLAGS.process_id, FLAGS.coordinator_address, FLAGS.gang)
  options = WorkerOptions(storage=FLAGS.storage, many_machines=FLAGS.worker or gang is not None,
                          parallel=FLAGS.parallel, devices_per_trial=FLAGS.devices_per_trial,
                          accelerator=FLAGS.accelerator, grace_s=FLAGS.grace_s, heartbeat_s=FLAGS.heartbeat_s,
                          retry_failed=FLAGS.retry_failed, train_flags=tuple(FLAGS.train_flag))
  if gang is not None and gang.process_id != 0:
    return gang_lib.follow(sweep, FLAGS.workdir, options, gang)
  worker = Worker(sweep, FLAGS.sweep, FLAGS.workdir, options, gang=gang)
  counts = worker.run()
  ran = {k: v for k, v in counts.items() if k not in ("stopped", "storage_failed") and v}
  print("sweep: this worker ran " + ", ".join(f"{v} {k}" for k, v in ran.items()) if ran
        else "sweep: this worker ran no trial", flush=True)
  if counts["storage_failed"]:
    return 1
  if counts["stopped"]:
    print("sweep: stopped; rerun the same command to continue", flush=True)
  elif FLAGS.report:
    from research.sweeps.report import write_sweep_report
    write_sweep_report(worker.workdir)
  return 0


def dry_run(sweep) -> int:
  from research.sweeps.shapes import format_plans, plan_shapes, trial_shapes
  from research.sweeps.space import check_keys
  from research.config.cli import load_experiment
  from research.sweeps.worker import resolve_base
  workdir = FLAGS.workdir or os.path.join("/tmp", f"sweep-dry-run-{sweep.name}")
  os.makedirs(workdir, exist_ok=True)
  spec = resolve_base(sweep, FLAGS.sweep, workdir)
  base = load_experiment(spec)
  check_keys(sweep, base, FLAGS.sweep)
  shapes = trial_shapes(sweep, base)
  plans = plan_shapes(spec, shapes, FLAGS.target, FLAGS.target_slices, FLAGS.target_devices,
                      extra_flags=[f for f in FLAGS.train_flag])
  print(f"sweep {sweep.name}: {len(shapes)} distinct trial shape(s)"
        + (f" on {FLAGS.target}" if FLAGS.target else " on this machine's devices"), flush=True)
  print(format_plans(plans), flush=True)
  bad = [p for p in plans if p.code != 0]
  if not bad:
    return 0
  unfit = [p for p in bad if p.code == 3]
  print(f"error: {len(bad)} of {len(plans)} trial shapes " + ("do not fit" if unfit else "could not be planned")
        + "; narrow the space or change the layout (see the lines above)", file=sys.stderr)
  return 3 if unfit else 1


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
