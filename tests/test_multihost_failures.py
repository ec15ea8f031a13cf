"""When one process of a 2-process run fails, every process exits 1 within a bound, each with one
line naming the failed process and why: no waiting out JAX's 100-300 s timeouts, no core dump.
The two scripts/train.py processes are started directly (launch_local would stop the survivors
itself), on localhost over gloo, 4 CPU devices each."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, tiny_config, write_corpus

STARTUP_S = 300  # start-up and compile on 2 shared cores; not what is measured


def _config(corpus, cache):
  c = tiny_config(corpus, cache)
  c.data.streams = 2
  c.mesh.shape = (2, 2, 2)      # data x fsdp x tensor, across both processes: every step is collective
  c.train.num_steps = 100_000   # runs until a process is killed
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.sample_at_end = 0
  c.train.tensorboard = False
  c.checkpoint.every_steps = 0
  c.checkpoint.save_at_end = False
  return c


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
  """An experiment file; its variant names the corpus: `good`, or `bad` (a training file that is not
  UTF-8, which only process 0 reads: it builds the dataset while process 1 waits in a collective)."""
  d = tmp_path_factory.mktemp("fail")
  for name in ("good", "bad"):
    write_corpus(str(d / name))
  with open(d / "bad" / "play_1.txt", "ab") as f:
    f.write(b"KING.\nbad \xff\xfe bytes\n")
  path = d / "tiny_fail.py"
  path.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom tests.test_multihost_failures import _config\n"
                  f"def get_config(arg):\n  return _config({str(d)!r} + '/' + arg, {str(d)!r} + '/cache-' + arg)\n")
  return str(path)


def _start(exp, variant, workdir, *extra):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = []
  for i in range(2):
    out, err = open(f"{workdir}.{i}.out", "w+"), open(f"{workdir}.{i}.err", "w+")
    procs.append((subprocess.Popen(
        [sys.executable, "scripts/train.py", f"--config={exp}:{variant}", f"--workdir={workdir}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}", *extra],
        cwd=ROOT, env=env, stdout=out, stderr=err), out, err))
  return procs


def _wait_for_text(procs, i, text):
  deadline = time.time() + STARTUP_S
  while time.time() < deadline:
    with open(procs[i][1].name) as f:
      if text in f.read():
        return
    assert all(p.poll() is None for p, _, _ in procs), _logs(procs)
    time.sleep(0.2)
  _kill(procs)
  pytest.fail(f"process {i} did not print {text!r} in {STARTUP_S} s\n" + _logs(procs))


def _exit_times(procs, since, bound):
  """Seconds from `since` until each process exited; kills whatever is still running after `bound`."""
  times = [None] * len(procs)
  while time.time() < since + bound and None in times:
    for i, (p, _, _) in enumerate(procs):
      if times[i] is None and p.poll() is not None:
        times[i] = time.time() - since
    time.sleep(0.1)
  _kill(procs)
  print(f"exit times (s): {times}")  # pytest -s shows them: the numbers README quotes
  return times


def _kill(procs):
  for p, _, _ in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _logs(procs):
  text = ""
  for i, (_, out, err) in enumerate(procs):
    with open(out.name) as o, open(err.name) as e:
      text += f"--- process {i} stdout\n{o.read()[-2000:]}\n--- process {i} stderr\n{e.read()[-4000:]}\n"
  return text


def _error_lines(procs, i):
  with open(procs[i][2].name) as f:
    err = f.read()
  assert "Fatal Python error" not in err and "Check failure" not in err, err[-4000:]
  return [line for line in err.splitlines() if line.startswith("error: ")]


def test_data_error_on_process_0_stops_both(exp, tmp_path):
  procs = _start(exp, "bad", str(tmp_path / "w"))
  times = _exit_times(procs, time.time(), STARTUP_S)
  assert None not in times, "a process was still running\n" + _logs(procs)
  assert abs(times[0] - times[1]) < 15, (times, _logs(procs))  # process 1 does not wait for a timeout
  for i, (p, _, _) in enumerate(procs):
    assert p.returncode == 1, _logs(procs)
    lines = _error_lines(procs, i)
    assert len(lines) == 1 and lines[0].startswith("error: process 0 failed: "), _logs(procs)
    assert "play_1.txt" in lines[0] and "not UTF-8" in lines[0], lines


def test_process_1_killed_mid_training(exp, tmp_path):
  procs = _start(exp, "good", str(tmp_path / "w"), "--distributed_heartbeat_timeout_s=10")
  _wait_for_text(procs, 0, "step 3:")
  procs[1][0].send_signal(signal.SIGKILL)
  times = _exit_times(procs, time.time(), 60)
  assert times[0] is not None and times[0] < 30, (times, _logs(procs))
  assert procs[0][0].returncode == 1 and procs[1][0].returncode == -signal.SIGKILL, _logs(procs)
  assert _error_lines(procs, 0) == ["error: process 1 stopped responding (no heartbeat for 10 s)"], _logs(procs)


def test_sigterm_while_a_process_is_dead_exits(exp, tmp_path):
  """SIGTERM asks for a checkpoint, which needs every process: with one dead, exit instead of
  waiting (JAX's handler takes the signal; the run used to ignore it until its timeouts)."""
  procs = _start(exp, "good", str(tmp_path / "w"))  # default heartbeat timeout: 20 s
  # process 0 has opened the data and goes on to the collective that tells process 1 (waiting in it)
  _wait_for_text(procs, 0, "data: tokenizer")
  procs[1][0].send_signal(signal.SIGKILL)
  procs[0][0].send_signal(signal.SIGTERM)
  times = _exit_times(procs, time.time(), 60)
  assert times[0] is not None and times[0] < 15, (times, _logs(procs))  # well before the 20 s timeout
  assert procs[0][0].returncode == 1, _logs(procs)
  lines = _error_lines(procs, 0)
  assert len(lines) == 1 and lines[0].startswith("error: process 1 stopped responding"), _logs(procs)
  assert "SIGTERM received" in lines[0], lines


def test_sigterm_with_every_process_alive_still_saves_and_exits_0(exp, tmp_path):
  """The watcher leaves a real preemption alone: JAX's sync point, a checkpoint, exit 0 everywhere."""
  procs = _start(exp, "good", str(tmp_path / "w"))
  _wait_for_text(procs, 0, "step 3:")
  procs[0][0].send_signal(signal.SIGTERM)
  times = _exit_times(procs, time.time(), 60)
  assert None not in times and [p.returncode for p, _, _ in procs] == [0, 0], (times, _logs(procs))
  assert _error_lines(procs, 0) == _error_lines(procs, 1) == []
  with open(procs[0][1].name) as f:
    assert "preempted: saved step" in f.read()
