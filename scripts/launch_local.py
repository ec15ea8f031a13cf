"""Run N processes of a script on this machine as one JAX distributed run (a local stand-in for a
multi-host launch; also how the tests exercise the multi-process paths).

  python scripts/launch_local.py --num_processes=2 --cpu_devices_per_process=4 -- \\
      scripts/train.py --config=experiments/default.py --workdir=runs/mp

Each process gets --coordinator_address=localhost:<free port> --num_processes=N --process_id=I appended;
their output is prefixed with [I]. If one process fails, the others are stopped: scripts/train.py's
processes exit by themselves within seconds (research/distributed.py), this covers any other script.
SIGTERM/SIGINT are passed on to every process (the trainer then saves a checkpoint and exits 0). The
exit code is the first non-zero one, else 0.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--cpu_devices_per_process", type=int, default=0,
                      help="run on CPU with this many (fake) devices per process; 0: leave the platform alone")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [its flags]")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if args.num_processes < 1 or not command:
    parser.error("give --num_processes >= 1 and a script after --")
  port = args.port or free_port()
  env = dict(os.environ)
  if args.cpu_devices_per_process:
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                        f"{args.cpu_devices_per_process}").strip()
  procs = []
  for i in range(args.num_processes):
    procs.append(subprocess.Popen(
        [sys.executable, *command, f"--coordinator_address=localhost:{port}",
         f"--num_processes={args.num_processes}", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1))

  def relay(i, proc):
    for line in proc.stdout:
      sys.stdout.write(f"[{i}] {line}")
      sys.stdout.flush()

  threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  code = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and not code:
      code = failed[0]
      print(f"launch_local: a process exited with {code}; stopping the others", file=sys.stderr, flush=True)
      for p in procs:
        if p.poll() is None:
          p.terminate()
      deadline = time.time() + 20
      while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  for t in threads:
    t.join(timeout=5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
  sys.exit(main())
