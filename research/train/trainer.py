"""The training run: `train(cfg, workdir)`, read top to bottom.

  setup -> tokenizer -> model, optimizer, shardings -> compile (memory report; --dry_run stops here)
  -> restore or initialise -> data -> loop (log / eval / checkpoint / profile) -> final eval, samples,
  compute summary
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from etils import epath

from research.checkpoint import CheckpointError, Checkpointer, PreemptionWatcher
from research.checkpoint.loading import checkpoint_steps
from research.checkpoint.data_state import gather_states, local_state, saved_num_streams
from research.checkpoint.manager import code_version
from research.checkpoint.resume_checks import check_resumable
from research.config import ConfigError, validate_config
from research.data import build_pipeline
from research.infer.sample import sample_text
from research.models import count_params, flops_per_token
from research.paths import absolute
from research.perf.compiled import compiler_flops, format_memory, memory_report
from research.sharding import make_mesh
from research.train import mfu as mfu_lib
from research.train.evaluation import evaluate
from research.train.metrics import MetricsWriter, Progress
from research.train.profiler import StepProfiler
from research.train.program import build_program
from research.train.schedules import fit_warmup
from research.train.workdir import (WorkdirLock, check_resume, move_previous_run_aside,
                                    move_steps_aside, truncate_metrics, write_config)


class NonFiniteError(RuntimeError):
  """A step's loss, gradient or updated parameters were NaN/Inf and train.nonfinite is 'stop', or it
  is 'skip' and more than train.max_consecutive_skips steps in a row were skipped."""


def resolve_vocab(cfg, tokenizer) -> None:
  """model.vocab_size = 0 takes the tokenizer's size, rounded up to model.vocab_multiple."""
  if cfg.model.vocab_size == 0:
    m = cfg.model.vocab_multiple
    cfg.model.vocab_size = -(-tokenizer.vocab_size // m) * m
  elif cfg.model.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                      f"{tokenizer.vocab_size} ids; set it to 0 to take the tokenizer's size")


def host_params(params):
  """All parameters as host arrays on every process (device_get fails on arrays other hosts hold)."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def open_data(cfg, log):
  """The data pipeline; process 0 builds the corpus and tokenizer, the others open them after."""
  pid, nproc = jax.process_index(), jax.process_count()
  data = build_pipeline(cfg.data, log=log) if pid == 0 else None
  _barrier("data prepared")
  return data if data is not None else build_pipeline(cfg.data, log=log)


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


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


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
  Returns a summary dict (final eval loss, unigram entropy, tokens, timings, samples, preempted,
  compute), or the compile report for a dry run.
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


def _train(cfg, workdir: str, log, resume, dry_run: bool, watcher) -> dict:
  # ---------------------------------------------------------------- setup
  t_start = time.time()
  devices = jax.devices()
  warmup, warmup_note = fit_warmup(cfg.optimizer, cfg.train.num_steps)  # a short run of a long experiment
  cfg.optimizer.warmup_steps = warmup
  validate_config(cfg, len(devices))
  if cfg.train.compilation_cache_dir:
    # JAX opens its persistent cache at the process's first compile, so this must come before any
    # (scripts/train.py calls train() first thing); process 0 writes entries, every process reads.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.train.compilation_cache_dir))
  pid, nproc = jax.process_index(), jax.process_count()
  is_main = pid == 0
  log = log if is_main else (lambda *a, **k: None)
  if warmup_note:
    log(warmup_note)
  mesh = make_mesh(cfg.mesh.shape, devices, cfg.mesh.dcn_shape)
  t = cfg.train

  # ---------------------------------------------------------------- tokenizer (and data)
  data = None
  if not dry_run or cfg.model.vocab_size == 0:
    data = open_data(cfg, log)
    resolve_vocab(cfg, data.tokenizer)

  def stopped_before_start(step: int, phase: str) -> dict | None:
    """A signal before the first step: nothing new to save, nothing of the old run touched."""
    if watcher is None or watcher.multi or not watcher.requested:
      return None  # multi-host: the first step's sync point decides, the same for every process
    log(f"preempted ({watcher.signal_name or 'signal'}) {phase}, before the first step: nothing to save"
        + (f"; the checkpoint of step {step} stays" if step else "") + "; run the same command to start")
    return {"preempted": True, "step": step, "train_seconds": 0.0, "compute": None}

  if (early := stopped_before_start(0, "while preparing the data")) is not None:
    return early

  # ---------------------------------------------------------------- model, optimizer, shardings
  program = build_program(cfg, mesh)
  n_params = count_params(cfg.model)
  n_actual = sum(math.prod(x.shape) for x in jax.tree.leaves(program.abstract_params))
  assert n_params == n_actual, f"count_params={n_params} disagrees with the model's {n_actual}"
  fpt = flops_per_token(cfg.model, t.seq_len)
  peak, peak_source = mfu_lib.peak_flops(devices, cfg.model.dtype)

  log("config:\n" + str(cfg))
  log(f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
      f"{nproc} process(es); mesh {dict(mesh.shape)}")
  if math.prod(cfg.mesh.dcn_shape) > 1:   # which processes hold each data-axis index
    owners = [sorted({d.process_index for d in mesh.devices[i].flat}) for i in range(mesh.shape["data"])]
    log(f"mesh.dcn_shape {tuple(cfg.mesh.dcn_shape)}: processes per data index {owners}")
  log(f"model: {cfg.model.family}, {n_params:,} parameters, {fpt / 1e6:.2f} MFLOPs/token "
      f"(training, causal attention halved); peak {peak / 1e9:.0f} GFLOP/s ({peak_source})")

  # ---------------------------------------------------------------- compile (ahead of time)
  t_compile = time.time()
  step_fn = program.compile_train_step()
  memory = memory_report(step_fn, program.abstract_state(), program.abstract_batch(t.batch_size, t.seq_len))
  log(f"compiled the train step in {time.time() - t_compile:.1f}s (remat {cfg.model.remat}, "
      f"scan_layers {cfg.model.scan_layers}, batch {t.batch_size} x {t.seq_len}, microbatches {t.microbatches})")
  log(format_memory(memory))
  if dry_run:
    xla_flops = compiler_flops(step_fn)
    report = {"dry_run": True, "memory": memory, "parameters": n_params, "flops_per_token": fpt,
              "model_flops_per_step": fpt * t.batch_size * t.seq_len,
              "compiler_flops_per_step_per_device": xla_flops, "devices": len(devices),
              "mesh": dict(mesh.shape), "compile_seconds": time.time() - t_compile}
    log(f"flops per step: model {report['model_flops_per_step']:.3e} (all devices); compiler estimate "
        f"{xla_flops or float('nan'):.3e} per device (a loop body, e.g. the scan over layers, counted once)")
    return report
  if (early := stopped_before_start(0, "while compiling")) is not None:
    return early

  # ---------------------------------------------------------------- restore or initialise
  # Nothing of the previous run changes until the new one has validated (restored, same data and
  # model): --fresh and a workdir without checkpoints move the old files aside first (nothing to
  # validate); a resume moves newer / unreadable steps aside and trims metrics only after its checks.
  ckpt_dir = str(epath.Path(workdir) / "checkpoints")
  check_resume(workdir, resume)
  starting_over = resume == "fresh" or not checkpoint_steps(ckpt_dir)
  if is_main and starting_over:
    move_previous_run_aside(workdir, log)
  _barrier("previous run moved aside")
  checkpointer = Checkpointer(ckpt_dir, cfg.checkpoint, log=log)
  start, data_state, train_iter, writer, progress, profiler = 0, None, None, None, None, None
  completed = False
  try:
    if not starting_over:
      changed = []  # the resume's checks run on the step's metadata, before its arrays are read

      def check(saved_meta):
        changed[:] = check_resumable(saved_meta, cfg.to_dict(), data.tokenizer.fingerprint,
                                     [s.fingerprint for s in data.sources])

      state, data_state, _, start = checkpointer.restore(program.abstract_state(),
                                                         None if resume == "latest" else int(resume), check)
      log(f"checkpoint: resumed from step {start} ({ckpt_dir})"
          + (f"; changed since: {'; '.join(changed)}" if changed else ""))
    else:
      state = program.init_state()
    streams = resolve_streams(cfg, data_state)
    train_iter = iter(data.train_dataset(t.batch_size, t.seq_len, cfg.seed, streams, pid, nproc))
    if data_state is not None:
      try:
        train_iter.set_state(local_state(data_state, streams))
      except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"the data iterator state of step {start} does not fit this pipeline ({e})") from None
    if (early := stopped_before_start(start, "while restoring")) is not None:
      return early  # (the finally below closes the iterator and the checkpointer)
    if is_main:
      if isinstance(resume, int):
        move_steps_aside(workdir, [s for s in checkpoint_steps(ckpt_dir) if s > resume], f"after-{resume}", log)
      move_steps_aside(workdir, checkpointer.unreadable, "unreadable", log)
      if start:
        truncate_metrics(str(epath.Path(workdir) / "metrics.jsonl"), start)
      write_config(workdir, cfg.to_json_best_effort(indent=1))
    _barrier("workdir ready")
    checkpointer.reload()
    # ---------------------------------------------------------------- data
    eval_device = [program.put_batch(b) for b in data.eval_batches(t.batch_size, t.seq_len, t.eval_batches,
                                                                    pid, nproc)]
    meta = {"config": cfg.to_dict(), "mesh": dict(mesh.shape), "devices": len(devices),
            "processes": nproc, "data_streams": streams, "code_version": code_version(),
            "tokenizer": data.tokenizer.fingerprint, "data_sources": [s.fingerprint for s in data.sources]}
    log(f"data: {streams} stream(s) over {nproc} process(es)")
    eval_fn = program.eval_step()

    # ---------------------------------------------------------------- loop
    writer = MetricsWriter(workdir, enabled=is_main, tensorboard=t.tensorboard)
    skipped_records = sum(s.skipped_records for s in data.sources)
    if skipped_records:
      writer.write(0, {"skipped_records": skipped_records})
    progress = Progress(t.num_steps, start, enabled=is_main, live=t.progress and sys.stderr.isatty())
    tokens_per_step = t.batch_size * t.seq_len
    window = {"loss": [], "grad_norm": [], "t0": time.time(), "steps": 0}
    consecutive_skips = 0

    def run_eval(step: int) -> float:
      loss = evaluate(eval_fn, state.params, eval_device)
      writer.write(step, {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))})
      progress.write(f"step {step}: eval_loss {loss:.4f}")
      return loss

    def finish_step(step: int, metrics) -> None:
      """Host side of step `step` (1-based), run after step+1 was dispatched so the device never waits."""
      nonlocal consecutive_skips
      m = jax.device_get(metrics)
      if not m["finite"]:
        loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
        if math.isfinite(loss) and math.isfinite(grad_norm) and not m["update_finite"]:
          msg = (f"step {step}: loss {loss} and grad norm {grad_norm} are finite but the updated parameters "
                 f"are not (learning rate {float(m['learning_rate']):.3g}); the update was not applied")
        else:
          msg = f"step {step}: loss {loss}, grad norm {grad_norm} is not finite; the update was not applied"
        if t.nonfinite == "stop":
          writer.write(step, {"nonfinite": True, "loss": loss, "grad_norm": grad_norm})
          raise NonFiniteError(msg + ". Set --config.train.nonfinite=skip to skip such updates.")
        consecutive_skips += 1
        if t.max_consecutive_skips and consecutive_skips > t.max_consecutive_skips:
          writer.write(step, {"nonfinite": True, "loss": loss, "grad_norm": grad_norm,
                              "skipped_steps": int(m["skipped_steps"])})
          raise NonFiniteError(f"step {step}: {consecutive_skips} steps in a row skipped for NaN/Inf, more than "
                               f"train.max_consecutive_skips={t.max_consecutive_skips}; the run is not learning "
                               "(lower optimizer.learning_rate, check the data, or raise the limit; 0: no limit)")
        progress.write(msg + f" (skipped; {int(m['skipped_steps'])} so far)")
      else:
        consecutive_skips = 0
        window["loss"].append(float(m["loss"]))
        window["grad_norm"].append(float(m["grad_norm"]))
      window["steps"] += 1
      is_log = step % t.log_every == 0 or step == t.num_steps
      if is_log:
        elapsed = max(time.time() - window["t0"], 1e-9)
        tps = window["steps"] * tokens_per_step / elapsed
        record = {"loss": float(np.mean(window["loss"])) if window["loss"] else float("nan"),
                  "learning_rate": float(m["learning_rate"]),
                  "grad_norm": float(np.mean(window["grad_norm"])) if window["grad_norm"] else float("nan"),
                  "tokens_per_sec": tps, "mfu": mfu_lib.mfu(fpt, tps, peak),
                  "step_time_ms": 1000 * elapsed / window["steps"], "skipped_steps": int(m["skipped_steps"]),
                  "tokens_seen": step * tokens_per_step}
        writer.write(step, record)
        progress.update(step, f"loss {record['loss']:.4f} lr {record['learning_rate']:.2e} "
                        f"{tps:,.0f} tok/s mfu {100 * record['mfu']:.1f}%", log_line=True)
        window.update(loss=[], grad_norm=[], t0=time.time(), steps=0)
      else:
        progress.update(step, f"loss {float(m['loss']):.4f}", log_line=False)

    profiler = StepProfiler(workdir, t.profile_start_step, t.profile_stop_step, log=log)
    t_loop = time.time()
    pending, preempted, final_eval, step = None, False, None, start
    for step in range(start, t.num_steps):
      profiler.before_step(step + 1)
      state, metrics = step_fn(state, program.put_batch(next(train_iter)))
      profiler.after_step(step + 1, metrics)
      if pending is not None:
        finish_step(*pending)
      pending = (step + 1, metrics)
      eval_loss = None
      if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < t.num_steps:
        finish_step(*pending)
        pending = None
        eval_loss = run_eval(step + 1)
        window["t0"] = time.time()  # evaluation time is not training throughput
      if watcher.reached(step + 1):
        preempted = True
      # the last step is saved below with the final eval, unless the run stops here
      last = step + 1 == t.num_steps and cfg.checkpoint.save_at_end and not preempted
      if not last:
        checkpointer.maybe_save(step + 1, state, lambda: gather_states(train_iter.get_state()), meta,
                                force=preempted, metrics=None if eval_loss is None else {"eval_loss": eval_loss})
      if preempted:
        break
    if pending is not None:
      finish_step(*pending)
    train_seconds = time.time() - t_loop
    if preempted:
      checkpointer.wait()
      if step + 1 not in checkpointer.steps():
        raise CheckpointError(f"preempted at step {step + 1}, but its checkpoint is not in {ckpt_dir}")
      log(f"preempted: saved step {step + 1} to {ckpt_dir} ({watcher.signal_name or 'SIGTERM'}); "
          "run the same command to resume")
    else:
      final_eval = run_eval(t.num_steps)
      if cfg.checkpoint.save_at_end:
        checkpointer.maybe_save(t.num_steps, state, lambda: gather_states(train_iter.get_state()), meta,
                                force=True, metrics={"eval_loss": final_eval})
    completed = True
  finally:
    for part in (profiler, progress, writer):
      if part is not None:
        part.close()
    _close(train_iter, checkpointer, log, failing=not completed)  # waits until every save is durable
  steps_run = (step + 1 if preempted else t.num_steps) - start
  compute = mfu_lib.compute_summary(fpt, steps_run * tokens_per_step, len(devices), time.time() - t_start,
                                    t.cost_per_device_hour)
  log(mfu_lib.format_compute_summary(compute) + (f" (this invocation: steps {start + 1}-{start + steps_run})"
                                                 if start else ""))
  if preempted:
    return {"preempted": True, "step": step + 1, "train_seconds": train_seconds, "compute": compute}

  # ---------------------------------------------------------------- wrap up
  entropy = data.unigram_entropy()
  samples = []
  if t.sample_at_end:
    samples = sample_text(program.graphdef, host_params(state.params), data.tokenizer, [""] * t.sample_at_end,
                          t.sample_tokens, t.sample_temperature, cfg.seed, cfg.model.max_seq_len)
  summary = {"preempted": False, "final_eval_loss": final_eval, "unigram_entropy": entropy, "steps": t.num_steps,
             "tokens_seen": t.num_steps * tokens_per_step, "train_seconds": train_seconds,
             "total_seconds": time.time() - t_start, "skipped_steps": int(jax.device_get(state.skipped_steps)),
             "parameters": n_params, "flops_per_token": fpt, "compute": compute, "data_streams": streams,
             "memory_per_device": memory, "samples": samples}
  log(f"final eval loss {final_eval:.4f} nats/token vs unigram entropy {entropy:.4f} of the training "
      f"tokens ({t.num_steps} steps, {summary['tokens_seen']:,} tokens, {train_seconds:.0f}s training)")
  for i, text in enumerate(samples):
    log(f"--- sample {i + 1} ---\n{text.strip()}")
  if is_main:
    (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary
