"""Joining a multi-process run through JAX's own distributed runtime (`jax.distributed`).

Call `initialize` first thing, before anything touches a JAX backend (jax.devices(), an array).
  explicit:  coordinator_address + num_processes + process_id (all three), e.g. for processes started
             by hand or by `scripts/launch_local.py`;
  automatic: the environments JAX detects itself: Cloud TPU VM pod slices (every worker runs the same
             command), SLURM (`srun`, one task per host or per GPU), Open MPI (`mpirun`), Kubernetes
             JobSets, and JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  otherwise: a single process.
CPU processes exchange collectives over gloo (TCP), which is what the localhost tests use.
"""
from __future__ import annotations

import os

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_seconds: int = 300) -> str:
  """Joins the run when there is one to join; returns a line saying what happened."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together; give all three "
                     "or none (then the environment is detected: TPU pod, SLURM, Open MPI, ...)")
  # Only affects CPU devices; must be set before the backend starts. (gloo is 0.10's default too.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is not None:
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_seconds)
    return f"distributed: process {process_id} of {num_processes}, coordinator {coordinator_address}"
  if os.environ.get("SLURM_NTASKS") == "1":
    # JAX would pin a one-task job to a single local GPU (SLURM_LOCALID); one task needs no runtime.
    return "distributed: single process (SLURM job with one task)"
  try:
    jax.distributed.initialize(initialization_timeout=timeout_seconds)
  except ValueError as e:  # no cluster environment detected: raised before anything starts
    if "should be defined" in str(e) or "must be defined" in str(e):
      return "distributed: single process"
    raise
  return (f"distributed: process {jax.process_index()} of {jax.process_count()} "
          "(environment detected by jax.distributed)")
