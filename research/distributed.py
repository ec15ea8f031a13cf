"""Joining a multi-process run through JAX's own distributed runtime (`jax.distributed`), and failing
together: when one process fails, every process exits non-zero within a bounded time, each with one
line naming the process that failed and why.

Call `initialize` first thing, before anything touches a JAX backend (jax.devices(), an array).
  explicit:  coordinator_address + num_processes + process_id (all three), e.g. for processes started
             by hand or by `scripts/launch_local.py`;
  automatic: the environments JAX detects itself: Cloud TPU VM pod slices (every worker runs the same
             command), SLURM (`srun`, one task per host or per GPU), Open MPI (`mpirun`), Kubernetes
             JobSets, and JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  otherwise: a single process.
CPU processes exchange collectives over gloo (TCP), which is what the localhost tests use.

Failing together. Left alone, JAX lets the survivors of a failed process wait in a collective or in
the exit barrier until its heartbeat timeout, then abort (a core dump, no word of the cause). So with
several processes a watcher thread talks to the coordination service's key-value store every `dt`:
  - it bumps this process's heartbeat counter and watches the next process's (a ring: O(1) per
    process); a counter that stays put for `heartbeat_s` names that process as stopped responding.
    JAX's own heartbeat timeout is set to twice that, so this clean exit comes first;
  - it reads `failed/`, where a process that hits an error (`fail`) writes its one line; every
    process prints that line and exits 1;
  - after a SIGTERM anywhere (JAX's preemption notice in the same store) it checks every heartbeat:
    with a process not responding no checkpoint can be saved, so it exits instead of waiting.
`finish` is a barrier at the end of a good run (bounded by `shutdown_s`) with the watcher still on.
Limits: JAX's client aborts at once when process 0 (which hosts the coordination service) dies
abruptly: its error hook cannot be replaced (jaxlib 0.10.2's missed_heartbeat_callback binding
crashes); a process that hangs with its Python threads alive is not detected.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback

import jax

PREFIX = "research/"
# Written by JAX's preemption sync manager into the same store when any process gets SIGTERM.
PREEMPTION_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


@dataclasses.dataclass(frozen=True)
class Timeouts:
  init_s: int = 300      # all processes must join within this (JAX aborts the process otherwise)
  heartbeat_s: int = 20  # a process silent this long is declared dead; everyone exits
  shutdown_s: int = 30   # how long a finished process waits for the others at the end


_watch: "_PeerWatch | None" = None
_exit_lock = threading.Lock()  # one line per process: the first reason to exit wins


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeouts: Timeouts = Timeouts()) -> str:
  """Joins the run when there is one to join; returns a line saying what happened."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together; give all three "
                     "or none (then the environment is detected: TPU pod, SLURM, Open MPI, ...)")
  for name in ("init_s", "heartbeat_s", "shutdown_s"):
    if getattr(timeouts, name) < 1:
      raise ValueError(f"--distributed_{name.replace('_s', '')}_timeout_s={getattr(timeouts, name)} must be >= 1")
  # Only affects CPU devices; must be set before the backend starts. (gloo is 0.10's default too.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # JAX's heartbeat is the fallback that aborts; ours (heartbeat_s) must fire first.
  jax_timeouts = dict(initialization_timeout=timeouts.init_s, heartbeat_timeout_seconds=2 * timeouts.heartbeat_s,
                      shutdown_timeout_seconds=timeouts.shutdown_s)
  if coordinator_address is not None:
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **jax_timeouts)
    _start_watch(timeouts)
    return f"distributed: process {process_id} of {num_processes}, coordinator {coordinator_address}"
  if os.environ.get("SLURM_NTASKS") == "1":
    # JAX would pin a one-task job to a single local GPU (SLURM_LOCALID); one task needs no runtime.
    return "distributed: single process (SLURM job with one task)"
  try:
    jax.distributed.initialize(**jax_timeouts)
  except ValueError as e:  # no cluster environment detected: raised before anything starts
    if "should be defined" in str(e) or "must be defined" in str(e):
      return "distributed: single process"
    raise
  _start_watch(timeouts)
  return (f"distributed: process {jax.process_index()} of {jax.process_count()} "
          "(environment detected by jax.distributed)")


def fail(reason: str, exc: BaseException | None = None):
  """Exits 1 with the line `error: process I failed: <reason>`, which every other process prints too.

  exc: the unexpected exception behind it, if any (its traceback goes before the line). A
  JaxRuntimeError in a multi-process run is most often a collective whose peer failed first: then
  this waits (up to a heartbeat timeout) for that peer's reason and exits with it instead.
  """
  reason = first_line(reason)
  if _watch is None:
    if exc is not None:
      traceback.print_exception(exc)
    print(f"error: {reason}", file=sys.stderr, flush=True)
    sys.exit(1)
  if isinstance(exc, jax.errors.JaxRuntimeError):
    _watch.wait_for_peer_verdict()  # exits the process when a peer is to blame
  if exc is not None:
    traceback.print_exception(exc)
  _watch.exit(f"process {_watch.pid} failed: {reason}", announce=_watch.pid)


def finish() -> None:
  """End of a good run: waits (with the watcher on) until every process got here, then stops it, so
  that JAX's own exit barrier, which aborts when a process is missing, is passed at once."""
  if _watch is None:
    return
  try:
    _watch.client.wait_at_barrier(PREFIX + "finished", _watch.timeouts.shutdown_s * 1000)
  except jax.errors.JaxRuntimeError:
    fail(f"not every process reached the end of the run within {_watch.timeouts.shutdown_s} s "
         "(--distributed_shutdown_timeout_s)")
  _watch.stop()


def first_line(text: str) -> str:
  return (str(text).strip().splitlines() or [""])[0]


def _start_watch(timeouts: Timeouts) -> None:
  global _watch
  from jax._src import distributed as jax_distributed  # the client: JAX has no public handle on it
  state = jax_distributed.global_state
  if state.num_processes > 1:
    _watch = _PeerWatch(state.client, state.process_id, state.num_processes, state.coordinator_address, timeouts)
    _watch.start()
    import atexit
    atexit.register(_watch.stop)  # before JAX's own exit (atexit runs last-registered first)


class _PeerWatch(threading.Thread):

  def __init__(self, client, pid: int, n: int, address: str, timeouts: Timeouts):
    super().__init__(name="peer-watch", daemon=True)
    self.client, self.pid, self.n, self.address, self.timeouts = client, pid, n, address, timeouts
    self.dt = min(2.0, max(0.25, timeouts.heartbeat_s / 10))
    self._stopped = threading.Event()
    self._dead: set[int] = set()

  def stop(self) -> None:
    self._stopped.set()

  def run(self) -> None:
    watched = (self.pid + 1) % self.n
    last, changed = None, time.monotonic()
    beats, preempted = {}, False  # every process's counter and when it last moved, after a SIGTERM
    while not self._stopped.is_set():
      try:
        self.client.key_value_increment(f"{PREFIX}beat/{self.pid}", 1)
        for key, line in self.client.key_value_dir_get(PREFIX + "failed/"):
          if key != f"{PREFIX}failed/{self.pid}":
            self._dead.add(int(key.rsplit("/", 1)[1]))
            self.exit(line)
        now, beat = time.monotonic(), self._try_get(f"{PREFIX}beat/{watched}")
        if beat != last:
          last, changed = beat, now
        elif now - changed > self.timeouts.heartbeat_s:
          self._stale(watched, self.timeouts.heartbeat_s)
        preempted = preempted or self._try_get(PREEMPTION_NOTICE_KEY) is not None
        if preempted:
          for key, value in self.client.key_value_dir_get(PREFIX + "beat/"):
            p = int(key.rsplit("/", 1)[1])
            if beats.get(p, (None,))[0] != value:
              beats[p] = (value, now)
            elif now - beats[p][1] > 3 * self.dt:
              self._stale(p, 3 * self.dt, "; SIGTERM received: exiting without a checkpoint")
      except jax.errors.JaxRuntimeError as e:
        if self._stopped.is_set():
          return
        self.exit(f"lost the coordination service at {self.address} (process 0): {first_line(e)}")
      self._stopped.wait(self.dt)

  def _try_get(self, key: str) -> str | None:
    try:
      return self.client.key_value_try_get(key)
    except jax.errors.JaxRuntimeError as e:
      if "NOT_FOUND" in str(e):
        return None
      raise

  def _stale(self, p: int, seconds: float, note: str = "") -> None:
    self._dead.add(p)
    self.exit(f"process {p} stopped responding (no heartbeat for {seconds:.0f} s){note}", announce=p)

  def wait_for_peer_verdict(self) -> None:
    """Gives the watcher time to find a failed peer (it exits the process then); SIGTERM cuts it short."""
    interrupted = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: interrupted.set())  # this process is failing anyway
    deadline = time.monotonic() + self.timeouts.heartbeat_s + 3 * self.dt
    while time.monotonic() < deadline and not interrupted.is_set():
      time.sleep(0.1)

  def exit(self, line: str, announce: int | None = None):
    """Prints `error: <line>`, tells the others (announce: the process to blame), exits 1."""
    _exit_lock.acquire()  # never released: a second reason waits here until the process is gone
    print(f"error: {line}", file=sys.stderr, flush=True)
    try:
      if announce is not None:
        self.client.key_value_set(f"{PREFIX}failed/{announce}", line, allow_overwrite=True)
      self.client.key_value_set(f"{PREFIX}left/{self.pid}", "1", allow_overwrite=True)
      if self.pid == 0:  # the store lives in this process: keep it up until the others have read it
        waiting = set(range(1, self.n)) - self._dead
        deadline = time.monotonic() + 5 * self.dt + 1
        while waiting and time.monotonic() < deadline:
          waiting -= {int(k.rsplit("/", 1)[1]) for k, _ in self.client.key_value_dir_get(PREFIX + "left/")}
          time.sleep(0.05)
        time.sleep(0.2)  # a process that just wrote left/ is exiting: let it finish
    except jax.errors.JaxRuntimeError:
      pass  # the service is gone: nobody is left to tell
    for child in multiprocessing.active_children():  # data-loader workers would outlive a hard exit
      child.terminate()
    sys.stdout.flush()
    sys.stderr.flush()
    # A hard exit: the main thread may be blocked in a collective, and JAX's exit barrier would wait
    # for the failed process and then abort.
    os._exit(1)
