"""Train a model: pretraining, or finetuning from a checkpoint (finetune.init_from).

  python scripts/train.py --config=experiments/<name>.py[:variant] --workdir=DIR [--config.<key>=<value> ...]
  python scripts/train.py --config=... --dry_run      compile the step, print its memory per device, exit

A workdir that holds checkpoints resumes from the newest readable one (--fresh starts over,
--restore_step=N picks one). SIGTERM or SIGINT saves a checkpoint of the last completed step and
exits 0 (before the first step: exits 0 having written nothing). One run per workdir (DIR/run.lock).
Multi-host: run the same command on every host. TPU pods, SLURM (srun) and Open MPI are detected;
elsewhere pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or use
scripts/launch_local.py for N processes on one machine). When one process fails, every process exits 1
with the same line naming it, within --distributed_heartbeat_timeout_s (a process that stopped
responding) or a few seconds (one that hit an error).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.perf import host_malloc  # noqa: E402

HOST_MALLOC = host_malloc.configure()  # before JAX starts its CPU client: see host_malloc.py

from absl import app, flags, logging  # noqa: E402

from research.config import ConfigError  # noqa: E402
from research.config.cli import absl_flags_parser, load_config  # noqa: E402
from research.data.corpus import DataError  # noqa: E402

flags.DEFINE_string("config", None, "Experiment file, optionally with a variant: experiments/x.py[:arg].")
flags.DEFINE_string("workdir", None, "Where metrics, TensorBoard logs and checkpoints go.")
flags.DEFINE_bool("fresh", False, "Start at step 0 even if the workdir holds checkpoints (they are moved "
                  "aside, not deleted).")
flags.DEFINE_integer("restore_step", None, "Resume from this checkpoint step instead of the newest.")
flags.DEFINE_bool("break_lock", False, "Take over the workdir's run.lock even when its owner cannot be shown to "
                  "be gone (a run on another host that died). A lock of a dead process on this host is taken "
                  "over without it.")
flags.DEFINE_bool("dry_run", False, "Only compile the train step ahead of time, print its memory per device "
                  "(parameters, optimizer state, batch, temporaries) and FLOPs, and exit 0. Writes nothing.")
flags.DEFINE_string("target", None, "With --dry_run: compile for this TPU topology instead of the local devices "
                    "(v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:16x16, ...; needs libtpu: requirements-tpu.txt) and "
                    "report memory per chip against HBM, FLOPs, an estimated step time and the collectives. "
                    "Exit 0 fits, 3 does not fit, 4 the mesh does not divide the chips, 5 no libtpu, 6 bad name.")
flags.DEFINE_integer("target_slices", 1, "With --target: this many slices joined by the data-centre network "
                     "(data parallel across slices, mesh.shape inside each).")
flags.DEFINE_integer("target_devices", 8, "With a GPU --target (a100-40, a100-80, h100, h200, b200): how many GPUs; "
                     "the report is an analytic estimate (no ahead-of-time compile without the device).")
flags.DEFINE_bool("autofit", False, "With --target: compile candidate layouts (mesh factorisations x remat "
                  "policies x batch) and print them ranked by estimated tokens/s; only compiled layouts that fit "
                  "are proposed.")
flags.DEFINE_string("autofit_out", None, "With --autofit: write the best layout as flags to this file "
                    "(use it as scripts/train.py ... --flagfile=FILE).")
flags.DEFINE_enum("autofit_batch", "fixed", ["fixed", "max"], "With --autofit: keep train.batch_size, or grow it "
                  "by doubling while it fits.")
flags.DEFINE_list("autofit_remat", ["none", "dots_saveable", "full"], "With --autofit: remat policies to try.")
flags.DEFINE_float("autofit_budget_s", 600, "With --autofit: stop compiling new candidates after this long.")
flags.DEFINE_integer("autofit_workers", 1, "With --autofit: candidates compiled in parallel processes.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index in [0, num_processes).")
flags.DEFINE_integer("distributed_heartbeat_timeout_s", 20, "Multi-process: a process that has not sent a "
                     "heartbeat for this long is declared dead and every process exits 1 naming it (JAX's own "
                     "heartbeat timeout, which aborts, is set to twice this).")
flags.DEFINE_integer("distributed_shutdown_timeout_s", 30, "Multi-process: how long a process that finished "
                     "waits for the others before exiting 1.")
flags.DEFINE_integer("distributed_init_timeout_s", 300, "Multi-process: how long to wait for every process to "
                     "join at start (JAX aborts the process after it).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
parse_flags, _OVERRIDES = absl_flags_parser(FLAGS)


def main(_):
  logging.set_verbosity(logging.ERROR)  # keep JAX backend probing and TFDS chatter off the console
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  if FLAGS.target:
    sys.exit(plan(FLAGS.target, FLAGS.target_slices))
  from research import distributed
  timeouts = distributed.Timeouts(FLAGS.distributed_init_timeout_s, FLAGS.distributed_heartbeat_timeout_s,
                                  FLAGS.distributed_shutdown_timeout_s)
  try:  # before anything starts a JAX backend
    joined = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, timeouts)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  from research.checkpoint import CheckpointError
  from research.train.trainer import NonFiniteError, train
  # From here on a failure goes through distributed.fail: with several processes, every one of them
  # exits with the same line instead of waiting in a collective for the one that failed.
  if FLAGS.fresh and FLAGS.restore_step is not None:
    distributed.fail("--fresh and --restore_step exclude each other")
  if not FLAGS.workdir and not FLAGS.dry_run:
    distributed.fail("--workdir is required (where metrics and checkpoints go), except with --dry_run")
  resume = "fresh" if FLAGS.fresh else "latest" if FLAGS.restore_step is None else FLAGS.restore_step
  try:
    cfg = load_config(FLAGS.config, _OVERRIDES)
    import jax
    if jax.process_index() == 0:
      if jax.process_count() > 1:
        print(joined, flush=True)
      print(HOST_MALLOC, flush=True)
    train(cfg, FLAGS.workdir, resume=resume, dry_run=FLAGS.dry_run, break_lock=FLAGS.break_lock)  # a preempted run returns normally: exit 0
  except (ConfigError, DataError, NonFiniteError, CheckpointError) as e:
    distributed.fail(str(e))
  except Exception as e:  # noqa: BLE001  (a bug, or a collective whose peer failed: see fail)
    distributed.fail(f"{type(e).__name__}: {e}", exc=e)
  distributed.finish()

def autofit(cfg, target: str, slices: int) -> int:
  from research.plan import autofit as search
  rows = search.autofit(cfg, target, slices, FLAGS.autofit_batch, tuple(FLAGS.autofit_remat),
                        FLAGS.autofit_budget_s, FLAGS.autofit_workers)
  print(search.format_table(rows), flush=True)
  if not rows or not rows[0]["fits"]:
    print("error: no candidate layout fits on the target", file=sys.stderr)
    return 3
  flags_text = search.overrides_for(rows[0], slices)
  print("best: " + " ".join(flags_text))
  if FLAGS.autofit_out:
    with open(FLAGS.autofit_out, "w") as f:
      f.write(f"# scripts/train.py --autofit --target={target}: best of {len(rows)} candidates\n")
      f.write("\n".join(flags_text) + "\n")
    print(f"wrote {FLAGS.autofit_out}: scripts/train.py --config={FLAGS.config} --flagfile={FLAGS.autofit_out} ...")
  return 0


def plan(target: str, slices: int) -> int:
  """--dry_run --target: the report for a TPU topology; returns the exit code."""
  from research.checkpoint import CheckpointError
  from research.plan import PlanError
  from research.plan.targets import quiet_libtpu
  if not FLAGS.dry_run and not FLAGS.autofit:
    print("error: --target plans a run; give --dry_run (or --autofit) with it", file=sys.stderr)
    return 1
  quiet_libtpu()  # before the first backend start
  from research.plan.dry_run import exit_code, format_report, plan_for_target
  try:
    cfg = load_config(FLAGS.config, _OVERRIDES)
    if FLAGS.autofit:
      from research.train.setup import prepare_task
      prepare_task(cfg, log=lambda *a: None, need_data=False)  # the vocabulary once, not per candidate
      return autofit(cfg, target, slices)
    report = plan_for_target(cfg, target, slices, gpus=FLAGS.target_devices)
  except (ConfigError, DataError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.code
  print(format_report(report), flush=True)
  code = exit_code(report)
  if code:
    hints = [h for h, done in (("--config.model.remat=full", cfg.model.remat == "full"),
                               ("--config.model.scan_layers=true", cfg.model.scan_layers)) if not done]
    print("error: does not fit on the target; try " + ", ".join(hints + ["a larger fsdp axis", "a smaller batch",
                                                                       "more chips (or --autofit)"]), file=sys.stderr)
  return code


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
