"""A real `scripts/serve.py` process on a free port for the server tests (one per test module)."""
import os
import socket
import subprocess
import sys
import time

import httpx2

from tests.helpers import ROOT


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerProcess:
  def __init__(self, checkpoint: str, log_path: str, *flags: str, model_name: str = "tiny"):
    self.port, self.model_name = free_port(), model_name
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_path = log_path
    self._log = open(log_path, "w")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "serve.py"), f"--checkpoint={checkpoint}",
           f"--port={self.port}", f"--model_name={model_name}", *flags]
    # The tests' environment: CPU, and the session's compilation cache (the first server compiles).
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=self._log, stderr=subprocess.STDOUT)
    self.client = httpx2.Client(base_url=self.url, timeout=60)
    self._wait_ready(timeout_s=180)

  def _wait_ready(self, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
      if self.proc.poll() is not None:
        raise RuntimeError(f"serve.py exited with {self.proc.returncode}:\n{self.output()}")
      try:
        if self.client.get("/health").status_code == 200:
          return
      except httpx2.TransportError:
        pass
      time.sleep(0.2)
    self.stop()
    raise RuntimeError(f"serve.py did not answer /health within {timeout_s} s:\n{self.output()}")

  def output(self) -> str:
    self._log.flush()
    with open(self.log_path) as f:
      return f.read()

  def alive(self) -> bool:
    return self.proc.poll() is None and self.client.get("/health").status_code == 200

  def stop(self) -> None:
    self.client.close()
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()
