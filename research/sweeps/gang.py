"""Gang scheduling on a pod slice (or any N hosts that train one model together): every host runs
`scripts/sweep.py --worker`, host 0 takes the trials from the study (its worker is the only one
Optuna sees), and the other hosts run each trial with it, as one multi-host training run.

Host 0 broadcasts through the study's storage, which every host reaches already: one user
attribute per gang, `gang:<name>` = {epoch, seq, state: gather | trial | done | stopped, command}. At its
start host 0 posts a new epoch and waits until every host has acknowledged it (`gang:<name>:ack:<k>`),
so a host that restarted never runs a stale trial; then one entry per trial (the same train.py
command on every host, each adding its own --process_id), and `done` at the end. A follower that
sees a new epoch stops what it ran for the old one. Pruning or stopping host 0's run stops the
others at the same step (JAX's preemption sync); a host that dies fails the trial on all of them
(scripts/train.py's distributed failure handling), recorded with its error.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
import uuid

from research.config import ConfigError

POLL_S = 1.0
PORTS = 500          # trial k's coordinator listens on PORT + k % PORTS (a finished trial's port may linger)


@dataclasses.dataclass
class Gang:
  name: str
  process_id: int
  num_processes: int
  coordinator: str | None          # HOST:PORT (off TPU); None: scripts/train.py detects the pod itself
  join_timeout_s: float = 600.0
  study: object = None
  epoch: str = ""
  seq: int = 0

  @property
  def key(self) -> str:
    return f"gang:{self.name}"

  def process_flags(self, seq: int) -> list[str]:
    if self.coordinator is None:
      return []
    host, _, port = self.coordinator.rpartition(":")
    return [f"--coordinator_address={host}:{int(port) + seq % PORTS}", f"--num_processes={self.num_processes}",
            f"--process_id={self.process_id}"]

  # ------------------------------------------------------------------ host 0
  def attach(self, study, log=print) -> None:
    """Host 0: a new epoch; waits until every host has acknowledged it."""
    self.study, self.epoch = study, uuid.uuid4().hex[:12]
    study.set_user_attr(self.key, {"epoch": self.epoch, "seq": 0, "state": "gather"})
    log(f"sweep: gang {self.name}: waiting for {self.num_processes - 1} more host(s)")
    deadline = time.time() + self.join_timeout_s
    while True:
      attrs = study.user_attrs
      missing = [k for k in range(1, self.num_processes) if attrs.get(f"{self.key}:ack:{k}") != self.epoch]
      if not missing:
        return
      if time.time() > deadline:
        raise ConfigError(f"gang {self.name}: host(s) {', '.join(map(str, missing))} did not join within "
                          f"{self.join_timeout_s:.0f}s (run scripts/sweep.py --worker with --process_id on each)")
      time.sleep(POLL_S)

  def publish(self, trial_id: str, command: list[str], trial_dir: str) -> list[str]:
    """Host 0: announces the next trial; returns host 0's own command for it."""
    self.seq += 1
    self.study.set_user_attr(self.key, {"epoch": self.epoch, "seq": self.seq, "state": "trial",
                                          "trial_id": trial_id, "command": command, "trial_dir": trial_dir})
    return command + self.process_flags(self.seq)

  def finish(self, stopped: bool = False) -> None:
    """Host 0's end: `done` (the study is finished) or `stopped` (continue by restarting every host)."""
    if self.study is not None:
      self.study.set_user_attr(self.key, {"epoch": self.epoch, "seq": self.seq, "state": "stopped" if stopped else "done"})


def from_flags(num_processes, process_id, coordinator, name) -> Gang | None:
  """A Gang from the flags (TPU_WORKER_ID / TPU_WORKER_HOSTNAMES fill them on TPU VMs that set
  them), or None for a one-host worker."""
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if num_processes is None and len(hosts) > 1:
    num_processes = len(hosts)
  if process_id is None and num_processes and "TPU_WORKER_ID" in os.environ:
    process_id = int(os.environ["TPU_WORKER_ID"])
  if not num_processes or num_processes == 1:
    return None
  if process_id is None or not 0 <= process_id < num_processes:
    raise ConfigError(f"--num_processes={num_processes} needs --process_id in [0, {num_processes})")
  if coordinator is not None and not coordinator.rpartition(":")[2].isdigit():
    raise ConfigError(f"--coordinator_address={coordinator}: expected HOST:PORT")
  default = "slice-" + uuid.uuid5(uuid.NAMESPACE_DNS, ",".join(hosts)).hex[:8] if hosts else "gang"
  return Gang(name or default, process_id, num_processes, coordinator)


def follow(sweep, workdir: str, options, gang: Gang, log=print) -> int:
  """Hosts 1..N-1: run host 0's trials until it says done."""
  import optuna
  from research.sweeps.storage import open_storage
  from research.sweeps.trial_run import ROOT, die_with_parent
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = open_storage(options.storage, os.path.abspath(workdir), many_machines=True)
  study = None
  while study is None:   # host 0 creates the study
    try:
      study = optuna.load_study(study_name=sweep.name, storage=storage)
    except KeyError:
      time.sleep(POLL_S)
  log(f"sweep: gang {gang.name}: host {gang.process_id} of {gang.num_processes} follows host 0")
  epoch, last_seq, child = None, -1, None
  from research.sweeps import devices as devices_lib
  kind, count = devices_lib.detect(options.accelerator)
  slot = devices_lib.slots(kind, count, 1, options.devices_per_trial)[0]   # as host 0's worker splits its own
  env = devices_lib.child_env(slot, ROOT)
  while True:
    entry = study.user_attrs.get(gang.key)
    if entry is not None and entry["epoch"] != epoch:
      if child is not None and child.poll() is None:   # host 0 restarted: drop the old epoch's run
        child.send_signal(signal.SIGTERM)
        child.wait()
      epoch, last_seq, child = entry["epoch"], -1, None
      study.set_user_attr(f"{gang.key}:ack:{gang.process_id}", epoch)
    if entry is not None and (child is None or child.poll() is not None):
      if entry["state"] in ("done", "stopped"):
        log(f"sweep: gang {gang.name}: host 0 is {entry['state']}"
            + ("; restart every host's command to continue" if entry["state"] == "stopped" else ""))
        return 0
      if entry["state"] == "trial" and entry["seq"] > last_seq:
        last_seq = entry["seq"]
        os.makedirs(entry["trial_dir"], exist_ok=True)
        out = open(os.path.join(entry["trial_dir"], f"train.host{gang.process_id}.log"), "a")
        log(f"sweep: gang {gang.name}: host {gang.process_id} runs trial {entry['trial_id']}")
        child = subprocess.Popen(entry["command"] + gang.process_flags(entry["seq"]), stdout=out,
                                 stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent, cwd=ROOT)
        out.close()
    time.sleep(POLL_S)
