"""A local Google Cloud Storage emulator for the tests (`gcp-storage-emulator` from PyPI).

`start()` runs the emulator as a subprocess on 127.0.0.1 (a free port) with one bucket, and
returns the environment that points every client of this project at it:
  STORAGE_EMULATOR_HOST     gcsfs (and google-cloud-storage) send their requests there
  TENSORSTORE_GCS_HTTP_URL  tensorstore, i.e. Orbax's array data
  EPATH_USE_TF=false        etils.epath (fileio, Orbax's metadata) goes through fsspec/gcsfs:
                            TensorFlow's gfile ignores the emulator and would try the real GCS
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
                            gcsfs otherwise asks the Storage Control API (gRPC, which the
                            emulator lacks) for the bucket type on every new filesystem
The packages come from requirements.txt; without them the tests that need this skip.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

BUCKET = "test-bucket"


def available() -> str | None:
    """None when the emulator and gcsfs are installed, else why not."""
    for module in ("gcp_storage_emulator", "gcsfs"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements.txt)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """A running emulator: `env` for clients, `stop()` to end it."""

    def __init__(self, data_dir: str, log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "EPATH_USE_TF": "false",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
        cmd = [sys.executable, "-m", "gcp_storage_emulator", "-d", data_dir, "start",
               "--host", "127.0.0.1", "--port", str(self.port), "--default-bucket", BUCKET, "-q"]  # fmt: skip
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Its request handler prints a traceback for every client that hangs up early: logged.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the GCS emulator exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the GCS emulator did not start within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def list_objects(prefix: str) -> list[str]:
    """Every object name under `gs://<prefix>`, listed through gcsfs (a fresh client)."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=os.environ["STORAGE_EMULATOR_HOST"])
    return sorted(fs.find(prefix))
