"""The training run: `train(cfg, workdir)`, read top to bottom. Every task (research/tasks) and
every model architecture runs through this one loop, step and checkpoint manager.

  setup: complete the config (task, checkpoint to start from, data, vocabulary) -> program (model,
         optimizer, shardings) -> compile (memory report; --dry_run stops here)
  start: resume from the workdir's checkpoint, or initialise (from finetune.init_from's parameters)
  loop:  step -> host side of the previous step (log) -> eval -> checkpoint -> preemption
  end:   final eval and save, the task's end-of-run report, compute summary
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import jax
from etils import epath

from research.checkpoint import CheckpointError, Checkpointer, PreemptionWatcher
from research.checkpoint.data_state import gather_states, local_state, saved_num_streams
from research.checkpoint.loading import checkpoint_steps
from research.checkpoint.lora_params import BASE_KEY as LORA_BASE
from research.checkpoint.lora_params import base_record, check_base
from research.checkpoint.manager import code_version
from research.checkpoint.resume_checks import check_resumable
from research.checkpoint.tokenizer_item import tokenizer_item
from research.config import ConfigError
from research.models import count_params
from research.models.lora import adapter_count
from research.paths import absolute
from research.perf.compiled import compiler_flops, format_memory, memory_report
from research.sharding import make_mesh
from research.train import mfu as mfu_lib
from research.train.early_stopping import EarlyStopping
from research.train.loop import NonFiniteError, StepLog
from research.train.metrics import EvalReports, MetricsWriter, Progress
from research.train.profiler import StepProfiler
from research.train.program import TrainProgram, build_program
from research.train.schedules import fit_warmup
from research.train.trainable import join, lora_own
from research.train.setup import complete_config
from research.train.workdir import (WorkdirLock, check_resume, move_previous_run_aside,
                                    move_steps_aside, truncate_metrics, truncate_reports, write_config)

__all__ = ["train", "NonFiniteError", "host_params"]


def host_params(params):
  """All parameters as host arrays on every process (device_get fails on arrays other hosts hold)."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def open_data(log):
  """open_data(cfg, row_format, tokenizer) for complete_config: process 0 builds the corpus and the
  tokenizer, the others open them after."""
  from research.data import build_pipeline

  def open_(cfg, row_format, tokenizer):
    build = lambda: build_pipeline(cfg.data, row_format, log=log, tokenizer=tokenizer)
    data = build() if jax.process_index() == 0 else None
    _barrier("data prepared")
    return data if data is not None else build()

  return open_


def resolve_streams(cfg, saved_data_state) -> int:
  """data.streams, or when it is 0: the checkpoint's number when resuming, else one per process."""
  if cfg.data.streams:
    return cfg.data.streams
  saved = saved_num_streams(saved_data_state) if saved_data_state is not None else None
  n = saved or jax.process_count()
  if n % jax.process_count() or cfg.train.batch_size % n:
    raise ConfigError(f"the checkpoint's data iterator has {n} streams, which {jax.process_count()} processes "
                      "cannot share; resume with a process count that divides it (or --fresh)")
  return n


def _close(train_iter, checkpointer, log, failing: bool) -> None:
  """Stops the data-loader workers, then waits for the saves. While another error is on its way
  out, a failed save is logged instead of raised, so it never hides the run's own error."""
  if hasattr(train_iter, "close"):
    train_iter.close()
  try:
    checkpointer.close()
  except CheckpointError as e:
    if not failing:
      raise
    log(f"checkpoint: {e}")


def train(cfg, workdir: str, log=print, resume: str | int = "latest", dry_run: bool = False,
          break_lock: bool = False) -> dict:
  """Runs the whole training described by `cfg`; metrics, config and checkpoints go to `workdir`
  (a local path or a remote URI such as gs://bucket/run).

  resume: "latest" (the newest readable checkpoint in workdir, if any), "fresh" (start at step 0;
  the previous run's files are moved aside, never deleted), or a step number.
  dry_run: compile the train step, report its memory per device and stop (nothing is written).
  break_lock: take over the workdir's lock even if its owner cannot be shown to be gone.
  SIGTERM or SIGINT at any point ends in a durable checkpoint of the last completed step (before the
  first step: a clean return, nothing written) and a summary with preempted=True.
  Returns a summary dict (final eval metrics, tokens, timings, the task's end-of-run entries such as
  samples, preempted, compute), or the compile report for a dry run.
  """
  if dry_run:
    return _train(cfg, workdir, log, resume, True, None)
  workdir = absolute(workdir)
  lock = WorkdirLock(workdir, break_lock, log) if jax.process_index() == 0 else None
  with PreemptionWatcher(log if jax.process_index() == 0 else (lambda *a: None)) as watcher:
    if lock is not None:
      lock.acquire()
    try:
      return _train(cfg, workdir, log, resume, False, watcher)
    finally:
      if lock is not None:
        lock.release()


@dataclasses.dataclass
class Run:
  """What setup produced: everything the loop and the wrap-up read."""
  cfg: Any
  task: Any
  data: Any                  # the DataPipeline (None only for a dry run with an explicit vocabulary)
  program: TrainProgram
  step_fn: Any               # the compiled train step
  memory: dict
  n_params: int
  fpt: float                 # training FLOPs per token
  peak: float
  t_start: float
  log: Any
  is_main: bool
  lora_base: dict | None = None   # a LoRA run's base (lora_params.base_record), saved in every step's meta


def _setup(cfg, log, dry_run: bool, t_start: float, model_source: str | None = None) -> Run:
  """Config completed, program built and the train step compiled."""
  devices = jax.devices()
  warmup, warmup_note = fit_warmup(cfg.optimizer, cfg.train.num_steps)  # a short run of a long experiment
  cfg.optimizer.warmup_steps = warmup
  if cfg.train.compilation_cache_dir:
    # JAX opens its persistent cache at the process's first compile, so this must come before any
    # (scripts/train.py calls train() first thing); process 0 writes entries, every process reads.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.train.compilation_cache_dir))
  is_main = jax.process_index() == 0
  log = log if is_main else (lambda *a, **k: None)
  if warmup_note:
    log(warmup_note)
  task, data = complete_config(cfg, len(devices), log, need_data=not dry_run, open_data=open_data(log),
                               model_source=model_source)
  mesh = make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape)
  t = cfg.train
  program = build_program(cfg, mesh, task)
  n_params = count_params(cfg.model) + task.extension_params()
  n_actual = sum(math.prod(x.shape) for x in jax.tree.leaves(program.abstract_params)) - adapter_count(
      program.abstract_params)
  assert n_params == n_actual, f"count_params={n_params} disagrees with the model's {n_actual}"
  fpt = task.flops_per_token(t.seq_len)
  peak, peak_source = mfu_lib.peak_flops(devices, cfg.model.dtype, cfg.train.peak_flops)

  log("config:\n" + str(cfg))
  log(f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
      f"{jax.process_count()} process(es); mesh {dict(mesh.shape)}")
  if math.prod(cfg.mesh.dcn_shape) > 1:   # which processes hold each data-axis index
    owners = [sorted({d.process_index for d in mesh.devices[i].flat}) for i in range(mesh.shape["data"])]
    log(f"mesh.dcn_shape {tuple(cfg.mesh.dcn_shape)}: processes per data index {owners}")
  frozen = sum(math.prod(x.shape) for x in jax.tree.leaves(program.partition.split(program.abstract_params)[1]))
  adapters = adapter_count(program.abstract_params)
  log(f"task: {task.name}; model: {cfg.model.arch} ({cfg.model.family}), {n_params:,} parameters"
      + (f" ({frozen:,} frozen)" if frozen else "")
      + (f" + {adapters:,} in LoRA adapters (rank {cfg.lora.rank})" if adapters else "")
      + f", {fpt / 1e6:.2f} MFLOPs/token "
      f"(training, causal attention halved); peak {peak / 1e9:.0f} GFLOP/s ({peak_source})")
  for line in task.describe():
    log(line)

  t_compile = time.time()
  step_fn = program.compile_train_step()
  memory = memory_report(step_fn, program.abstract_state(), program.abstract_batch(t.batch_size, t.seq_len))
  log(f"compiled the train step in {time.time() - t_compile:.1f}s (remat {cfg.model.remat}, "
      f"scan_layers {cfg.model.scan_layers}, batch {t.batch_size} x {t.seq_len}, microbatches {t.microbatches})")
  log(format_memory(memory))
  return Run(cfg, task, data, program, step_fn, memory, n_params, fpt, peak, t_start, log, is_main)


def _dry_run_report(run: Run, compile_seconds: float) -> dict:
  t = run.cfg.train
  xla_flops = compiler_flops(run.step_fn)
  report = {"dry_run": True, "memory": run.memory, "parameters": run.n_params, "flops_per_token": run.fpt,
            "model_flops_per_step": run.fpt * t.batch_size * t.seq_len,
            "compiler_flops_per_step_per_device": xla_flops, "devices": len(jax.devices()),
            "mesh": dict(run.program.mesh.shape), "compile_seconds": compile_seconds}
  run.log(f"flops per step: model {report['model_flops_per_step']:.3e} (all devices); compiler estimate "
          f"{xla_flops or float('nan'):.3e} per device (a loop body, e.g. the scan over layers, counted once)")
  return report


def _train(cfg, workdir: str, log, resume, dry_run: bool, watcher) -> dict:
  # ---------------------------------------------------------------- setup
  t_start = time.time()

  def stopped_before_start(step: int, phase: str) -> dict | None:
    """A signal before the first step: nothing new to save, nothing of the old run touched."""
    if watcher is None or watcher.multi or not watcher.requested:
      return None  # multi-host: the first step's sync point decides, the same for every process
    log(f"preempted ({watcher.signal_name or 'signal'}) {phase}, before the first step: nothing to save"
        + (f"; the checkpoint of step {step} stays" if step else "") + "; run the same command to start")
    return {"preempted": True, "step": step, "train_seconds": 0.0, "compute": None}

  ckpt_dir = None if dry_run else str(epath.Path(workdir) / "checkpoints")
  saved_steps = checkpoint_steps(ckpt_dir) if ckpt_dir else []
  if cfg.finetune.init_from and ckpt_dir and absolute(cfg.finetune.init_from).startswith(ckpt_dir):
    raise ConfigError(f"finetune.init_from={cfg.finetune.init_from} is inside this run's own workdir; a resume "
                      "needs no init_from, and --fresh would move it aside before it is read")
  own = _own_finetune_source(ckpt_dir, saved_steps, resume) if saved_steps and resume != "fresh" else None
  if cfg.lora.rank > 0 and not dry_run and not cfg.finetune.init_from and own is None:
    raise ConfigError("lora.rank > 0 trains adapters on a base: set finetune.init_from (a checkpoint, or a "
                      "Hugging Face model converted with scripts/convert_hf.py)")
  run = _setup(cfg, log, dry_run, t_start, model_source=own)
  log, program, data, t = run.log, run.program, run.data, cfg.train
  if dry_run:
    return _dry_run_report(run, time.time() - t_start)
  if (early := stopped_before_start(0, "while preparing and compiling")) is not None:
    return early

  # ---------------------------------------------------------------- start: resume or initialise
  # Nothing of the previous run changes until the new one has validated (restored, same data and
  # model): --fresh and a workdir without checkpoints move the old files aside first (nothing to
  # validate); a resume moves newer / unreadable steps aside and trims metrics only after its checks.
  pid, nproc = jax.process_index(), jax.process_count()
  check_resume(workdir, resume)
  starting_over = resume == "fresh" or not saved_steps
  if run.is_main and starting_over:
    move_previous_run_aside(workdir, log)
  _barrier("previous run moved aside")
  checkpointer = Checkpointer(ckpt_dir, cfg.checkpoint, log=log, tokenizer=tokenizer_item(data.tokenizer),
                              saved_view=program.checkpoint_view)
  start, train_iter, writer, progress, profiler = 0, None, None, None, None
  completed = False
  try:
    state, data_state, start, saved_meta = _restore_or_init(run, checkpointer, resume, starting_over, ckpt_dir)
    streams = resolve_streams(cfg, data_state)
    train_iter = iter(data.train_dataset(t.batch_size, t.seq_len, cfg.seed, streams, pid, nproc))
    if data_state is not None:
      try:
        train_iter.set_state(local_state(data_state, streams))
      except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"the data iterator state of step {start} does not fit this pipeline ({e})") from None
    if (early := stopped_before_start(start, "while restoring")) is not None:
      return early  # (the finally below closes the iterator and the checkpointer)
    if run.is_main:
      if isinstance(resume, int):
        move_steps_aside(workdir, [s for s in checkpoint_steps(ckpt_dir) if s > resume], f"after-{resume}", log)
      move_steps_aside(workdir, checkpointer.unreadable, "unreadable", log)
      if start:
        truncate_metrics(str(epath.Path(workdir) / "metrics.jsonl"), start)
        truncate_reports(workdir, start)
      write_config(workdir, cfg.to_json_best_effort(indent=1))
    _barrier("workdir ready")
    checkpointer.reload()
    eval_batches = [program.put_batch(b) for b in data.eval_batches(t.batch_size, t.seq_len, t.eval_batches,
                                                                     pid, nproc)]
    meta = {"config": cfg.to_dict(), "mesh": dict(program.mesh.shape), "devices": len(jax.devices()),
            "processes": nproc, "data_streams": streams, "code_version": code_version(),
            "tokenizer": data.tokenizer.fingerprint, "data_sources": [s.fingerprint for s in data.sources]}
    if run.lora_base is not None:
      meta[LORA_BASE] = run.lora_base
    log(f"data: {streams} stream(s) over {nproc} process(es)")

    # ---------------------------------------------------------------- loop
    writer = MetricsWriter(workdir, enabled=run.is_main, tensorboard=t.tensorboard)
    skipped_records = sum(s.skipped_records for s in data.sources)
    if skipped_records:
      writer.write(0, {"skipped_records": skipped_records})
    progress = Progress(t.num_steps, start, enabled=run.is_main, live=t.progress and sys.stderr.isatty())
    eval_tasks = None
    if t.eval_tasks:  # read and tokenized now: a bad line stops the run before it trains
      from research.evals.training import TrainingEvals
      eval_tasks = TrainingEvals(cfg, program, data.tokenizer, data, log=log)
    step_log = StepLog(cfg, run.task, writer, progress, program.eval_step(), eval_batches, run.fpt, run.peak,
                       EvalReports(workdir, enabled=run.is_main), eval_tasks)
    stopper = EarlyStopping.from_config(cfg, (saved_meta or {}).get("early_stopping"))
    last_step = start if stopper is not None and stopper.stopped else t.num_steps  # a stopped run stays stopped
    profiler = StepProfiler(workdir, t.profile_start_step, t.profile_stop_step, log=log)
    data_state_fn = lambda: gather_states(train_iter.get_state())
    initial = step_log.evaluate(0, state.params) if t.eval_at_start and start == 0 else None
    t_loop = time.time()
    pending, preempted, step = None, False, start
    for step in range(start, last_step):
      profiler.before_step(step + 1)
      state, metrics = run.step_fn(state, program.put_batch(next(train_iter)))
      profiler.after_step(step + 1, metrics)
      if pending is not None:
        step_log.finish(*pending)
      pending = (step + 1, metrics)
      eval_metrics = None
      if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < t.num_steps:
        step_log.finish(*pending)
        pending = None
        eval_metrics = step_log.evaluate(step + 1, state.params)
        step_log.exclude_elapsed()
      keep = stopper is not None and stopper.observe(step + 1, eval_metrics)  # a new best, or the stop
      preempted = watcher.reached(step + 1)
      # The last step is saved at the end, with the final evaluation, unless the run stops here.
      if step + 1 < t.num_steps or not cfg.checkpoint.save_at_end or preempted:
        checkpointer.maybe_save(step + 1, state, data_state_fn, _with_stopper(meta, stopper),
                                force=preempted or keep, metrics=eval_metrics)
      if preempted or (stopper is not None and stopper.stopped):
        last_step = step + 1
        break
    if pending is not None:
      step_log.finish(*pending)
    train_seconds = time.time() - t_loop

    # ---------------------------------------------------------------- end: preempted, or final eval + save
    final = None
    if preempted:
      checkpointer.wait()
      if step + 1 not in checkpointer.steps():
        raise CheckpointError(f"preempted at step {step + 1}, but its checkpoint is not in {ckpt_dir}")
      log(f"preempted: saved step {step + 1} to {ckpt_dir} ({watcher.signal_name or 'SIGTERM'}); "
          "run the same command to resume")
    else:
      if last_step == t.num_steps:
        final = step_log.evaluate(t.num_steps, state.params)
        if stopper is not None:
          stopper.observe(t.num_steps, final, can_stop=False)
        if cfg.checkpoint.save_at_end:
          checkpointer.maybe_save(t.num_steps, state, data_state_fn, _with_stopper(meta, stopper), force=True,
                                  metrics=final)
      if stopper is not None:
        log(stopper.line())
      if stopper is not None and stopper.best_step not in (None, last_step):
        checkpointer.wait()  # the best step's parameters, read back from its (kept) checkpoint
        best = checkpointer.restore(program.checkpoint_view(program.abstract_state()), stopper.best_step)[0].params
        if cfg.lora.rank:  # a LoRA checkpoint holds the run's own parameters; the frozen base is unchanged
          best = join(best, lora_own(cfg).split(state.params)[1])
        state = state.replace(params=best)
        log(f"early stopping: restored the parameters of step {stopper.best_step}, the best "
            f"{stopper.metric} {stopper.best_value:.4f}")
        final = step_log.evaluate(stopper.best_step, state.params, record=False)
      elif final is None:  # stopped without a finite best to return to: the parameters as they are
        final = step_log.evaluate(last_step, state.params, record=False)
      step_log.write_figures(stopper.best_step if stopper is not None and stopper.best_step else last_step)
    completed = True
  finally:
    for part in (profiler, progress, writer):
      if part is not None:
        part.close()
    _close(train_iter, checkpointer, log, failing=not completed)  # waits until every save is durable
  steps_run = (step + 1 if preempted else last_step) - start
  compute = mfu_lib.compute_summary(run.fpt, steps_run * t.batch_size * t.seq_len, len(jax.devices()),
                                    time.time() - t_start, t.cost_per_device_hour)
  log(mfu_lib.format_compute_summary(compute) + (f" (this invocation: steps {start + 1}-{start + steps_run})"
                                                 if start else ""))
  if preempted:
    return {"preempted": True, "step": step + 1, "train_seconds": train_seconds, "compute": compute}
  return _wrap_up(run, state, final, train_seconds, compute, streams, workdir, initial, last_step, stopper)


def _own_finetune_source(ckpt_dir: str, steps: list[int], resume) -> str | None:
  """For a finetuning run that resumes: its own newest step whose metadata reads (the one asked for
  with --restore_step), where it reads its architecture and tokenizer instead of finetune.init_from,
  which may have moved since. None when the run was not a finetuning run."""
  from research.checkpoint.loading import read_config
  candidates = [resume] if isinstance(resume, int) and resume in steps else sorted(steps, reverse=True)
  for step in candidates:
    try:
      saved = read_config(f"{ckpt_dir}/{step}")
    except Exception:  # noqa: BLE001 - unreadable: the restore will move it aside; try the next
      continue
    return f"{ckpt_dir}/{step}" if saved.finetune.init_from else None
  return None


def _with_stopper(meta: dict, stopper: EarlyStopping | None) -> dict:
  """The checkpoint's meta, with the early-stopping counter a resume continues from."""
  return meta if stopper is None else dict(meta, early_stopping=stopper.state())


def _restore_or_init(run: Run, checkpointer, resume, starting_over: bool, ckpt_dir: str):
  """(state, the data iterator's saved state or None, first step, the step's meta or None): the
  workdir's checkpoint when resuming, else a fresh state (with finetune.init_from's parameters)."""
  cfg, program, data, log = run.cfg, run.program, run.data, run.log
  lora = cfg.lora.rank > 0
  if starting_over:
    state = program.init_state()
    if cfg.finetune.init_from:
      from research.train.finetune import load_initial_params
      state = load_initial_params(cfg, program, state, host_params, log)
      run.lora_base = base_record(cfg.finetune.init_from) if lora else None
    return state, None, 0, None
  changed = []  # the resume's checks run on the step's metadata, before its arrays are read

  def check(saved_meta):
    changed[:] = check_resumable(saved_meta, cfg.to_dict(), data.tokenizer.fingerprint,
                                 [s.fingerprint for s in data.sources])
    if lora:  # the base the adapters were trained on: still there, unchanged
      check_base(saved_meta[LORA_BASE], f"{ckpt_dir}/{saved_meta['step']}")
      run.lora_base = saved_meta[LORA_BASE]

  state, data_state, saved_meta, start = checkpointer.restore(program.checkpoint_view(program.abstract_state()),
                                                              None if resume == "latest" else int(resume), check)
  if lora:
    from research.train.finetune import with_lora_base
    state = with_lora_base(cfg, program, state, run.lora_base)
  log(f"checkpoint: resumed from step {start} ({ckpt_dir})"
      + (f"; changed since: {'; '.join(changed)}" if changed else ""))
  return state, data_state, start, saved_meta


def _wrap_up(run: Run, state, final: dict, train_seconds: float, compute, streams: int, workdir: str,
             initial: dict | None, last_step: int, stopper: EarlyStopping | None) -> dict:
  """The summary (summary.json), with the task's end-of-run entries, and its log lines."""
  cfg, log, t = run.cfg, run.log, run.cfg.train
  tokens_seen = last_step * t.batch_size * t.seq_len
  end = run.task.at_end(lambda: host_params(state.params), run.program.graphdef, run.data, log)
  summary = {"preempted": False, "final_eval_loss": final["eval_loss"], "final_eval": final, "initial_eval": initial,
             **end, "steps": last_step, "tokens_seen": tokens_seen, "train_seconds": train_seconds,
             "total_seconds": time.time() - run.t_start, "skipped_steps": int(jax.device_get(state.skipped_steps)),
             "parameters": run.n_params, "flops_per_token": run.fpt, "compute": compute, "data_streams": streams,
             "memory_per_device": run.memory,
             "stopped": "early_stopping" if stopper is not None and stopper.stopped else "num_steps"}
  if stopper is not None:  # final_eval is of the best step's parameters, restored
    summary.update(best_step=stopper.best_step, early_stopping=stopper.summary())
  log(f"{run.task.final_line(final, end)} ({last_step} steps, {tokens_seen:,} tokens, "
      f"{train_seconds:.0f}s training)")
  for i, text in enumerate(end.get("samples", [])):
    log(f"--- sample {i + 1} ---\n{text.strip()}")
  if run.is_main:
    (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary
