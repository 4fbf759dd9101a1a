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

The emulator ignores GCS's generation preconditions, which tensorstore (Orbax's arrays, OCDBT
manifests) relies on: `python tests/gcs_emulator.py start ...` runs it with them added
(`ifGenerationMatch` -> 412, `ifGenerationNotMatch` -> 304, `x-goog-generation` headers on
downloads), which also makes `fileio.create_exclusive`'s precondition real here.
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
        cmd = [sys.executable, __file__, "-d", data_dir, "start", "--host", "127.0.0.1",
               "--port", str(self.port), "--default-bucket", BUCKET, "-q", "-M"]  # fmt: skip
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

    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=os.environ["STORAGE_EMULATOR_HOST"],
                             skip_instance_cache=True, use_listings_cache=False)  # fmt: skip
    return sorted(fs.find(prefix))


def _with_preconditions(handler, upload: bool):
    """`handler` of the emulator, answering GCS's generation preconditions first."""
    import http

    def wrapped(request, response, storage, *args, **kwargs):
        query = request.query
        bucket = request.params.get("bucket_name")
        name = request.params.get("object_id") or (query.get("name") or [None])[0]
        try:
            current = storage.get_file_obj(bucket, name)["generation"]
        except Exception:  # noqa: BLE001 - the emulator's NotFound: no such object
            current = None
        match, not_match = query.get("ifGenerationMatch"), query.get("ifGenerationNotMatch")
        if match is not None and (current is not None or upload) and match[0] != (current or "0"):
            response.status = http.HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return None
        if not_match is not None and current is not None and not_match[0] == current:
            response.status = http.HTTPStatus.NOT_MODIFIED
            return None
        out = handler(request, response, storage, *args, **kwargs)
        if not upload and response.status == http.HTTPStatus.OK and current is not None:
            response["x-goog-generation"] = current
            response["x-goog-metageneration"] = "1"
        return out

    return wrapped


if __name__ == "__main__":
    from gcp_storage_emulator.handlers import objects

    # Before the server module builds its routing table from these functions.
    objects.download = _with_preconditions(objects.download, upload=False)
    objects.get = _with_preconditions(objects.get, upload=False)
    objects.insert = _with_preconditions(objects.insert, upload=True)
    from gcp_storage_emulator import __main__ as emulator_main

    emulator_main.main(sys.argv[1:])
