"""The path layer: every file the project reads or writes, on a local disk or an object store.

Paths are plain strings, local (`runs/demo`, `/data/x.npz`) or URLs (`gs://bucket/run`,
`s3://...`). Local paths go through `os` as before; URLs go through `etils.epath`, the library
Orbax already uses for checkpoints, so a `gs://` workdir holds the checkpoints and every other
file of a run. `etils.epath` sends `gs://` through TensorFlow's gfile when TensorFlow is
installed, or through fsspec (`gcsfs`) when `EPATH_USE_TF=false`; gfile ignores
`STORAGE_EMULATOR_HOST`, so the emulator tests set `EPATH_USE_TF=false`.

Object stores are not disks; the differences are handled here, once:
  * Atomic writes. Locally: write a temporary file, then rename it. On an object store one
    PUT of the whole object is atomic (a reader sees the old object or the new one), so the
    data is written once, with no temporary object.
  * Appends. Objects cannot be appended to: `append_text` reads the object and writes it back
    with the new text (read-modify-write). Frequent appenders (utils.MetricWriter, the log in
    stdout.txt) keep the lines in memory and rewrite the object now and then instead.
  * Folder renames are copy + delete of every object (not atomic); only damaged checkpoints
    are moved aside, where that is acceptable.
  * `create_exclusive` (the training lock): `O_EXCL` locally; on an object store a write that
    fails when the object exists (GCS `ifGenerationMatch=0` through gcsfs) where the client
    offers one, else check-then-write (a small race window; see `create_exclusive`).

A URL never turns into a local folder: `absolute("gs://b/run")` stays a URL (`os.path.abspath`
would make it `./gs:/b/run`), and a local path with a scheme-like part (`gs:/b/run`, a missing
slash) raises instead of creating a folder named `gs:`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile

import numpy as np
from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BROKEN_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # gs:/b/run: one slash lost
_SCHEME_PART = re.compile(r"^(gs|s3|gcs|az|hf|http|https):$")


def is_remote(path) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return bool(_URL.match(os.fspath(path)))


def absolute(path) -> str:
    """`os.path.abspath` for local paths; URLs are returned unchanged (no trailing slash).

    Raises:
      ValueError: a local path that looks like a URL with a slash missing (`gs:/b/run`, or a
        part named `gs:`), which would otherwise become a local folder named `gs:`.
    """
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/") if path.count("/") > 2 else path
    if _BROKEN_URL.match(path) or any(_SCHEME_PART.match(p) for p in path.split(os.sep)):
        raise ValueError(
            f"{path} looks like a URL with a slash missing (write gs://bucket/...); refusing to "
            "create a local folder named after the scheme."
        )
    return os.path.abspath(os.path.expanduser(path))


def join(*parts) -> str:
    """Joins path parts with '/' (local paths and URLs alike)."""
    return os.path.join(*(os.fspath(p) for p in parts))


def path(p) -> epath.Path:
    """An `etils.epath.Path` for `p` (local paths made absolute), for pathlib-style code."""
    return epath.Path(absolute(p))


def _remote(p) -> epath.Path:
    _fresh_listings()
    return epath.Path(os.fspath(p))


def _fresh_listings() -> None:
    """fsspec clients (gcsfs, s3fs) cache folder listings forever by default, so a checkpoint
    or a lock that another process writes would never show up (evaluation waiting for a
    trainer). Turned off, unless configured otherwise, before etils.epath makes its client."""
    try:
        from fsspec import config  # lazy: only object stores need it
    except ImportError:
        return
    for protocol in ("gs", "gcs", "s3"):
        config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def exists(p) -> bool:
    return _remote(p).exists() if is_remote(p) else os.path.exists(absolute(p))


def isdir(p) -> bool:
    return _remote(p).is_dir() if is_remote(p) else os.path.isdir(absolute(p))


def isfile(p) -> bool:
    if is_remote(p):
        q = _remote(p)
        return q.exists() and not q.is_dir()
    return os.path.isfile(absolute(p))


def makedirs(p) -> str:
    """Creates folder `p` and its parents (a no-op on object stores, which have no folders
    to create: an object's name makes them). Returns the absolute path."""
    p = absolute(p)
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)
    return p


def listdir(p) -> list[str]:
    """Sorted names in folder `p`; [] when it does not exist."""
    if is_remote(p):
        q = _remote(p)
        return sorted(c.name for c in q.iterdir()) if q.is_dir() else []
    p = absolute(p)
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def glob(folder, pattern: str) -> list[str]:
    """Sorted paths in `folder` matching the glob `pattern` (e.g. `*.json`)."""
    return sorted(os.fspath(q) for q in path(folder).glob(pattern))


def getmtime(p) -> float:
    """Last modification time, in seconds since the epoch (an object's update time)."""
    return float(_remote(p).stat().mtime) if is_remote(p) else os.path.getmtime(absolute(p))


def touch(p) -> None:
    """Updates `p`'s modification time (rewrites the object on an object store)."""
    if is_remote(p):
        write_bytes(p, read_bytes(p))
    else:
        os.utime(absolute(p))


def remove(p, missing_ok: bool = True) -> None:
    """Deletes file `p`."""
    try:
        if is_remote(p):
            _remote(p).unlink()
        else:
            os.remove(absolute(p))
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(p) -> None:
    """Deletes folder `p` and everything in it (nothing if it does not exist)."""
    if is_remote(p):
        q = _remote(p)
        if q.exists():
            q.rmtree()
    else:
        shutil.rmtree(absolute(p), ignore_errors=True)


def rename(src, dst) -> None:
    """Renames a file or folder (on object stores: copy then delete, not atomic for folders).

    Raises:
      FileExistsError: `dst` exists (object stores; local renames follow `os.rename`).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"Cannot rename {src} to {dst}: not on the same storage.")
    if is_remote(src):
        # Copy + delete here: gcsfs would first try GCS's moveTo, which not every bucket
        # (nor the emulator) supports, and back off for ~30 s before copying anyway.
        source, target = _remote(src), _remote(dst)
        if target.exists():
            raise FileExistsError(f"Cannot rename {src}: {dst} exists.")
        if not source.is_dir():
            write_bytes(dst, read_bytes(src))
            source.unlink()
            return
        scheme = src.split("://")[0] + "://"
        for folder, _, files in source.walk():  # fsspec names: without the scheme
            folder = os.fspath(folder)
            folder = folder if is_remote(folder) else scheme + folder
            relative = folder[len(os.fspath(source)) :].lstrip("/")
            for name in files:
                data = read_bytes(join(folder, name))
                write_bytes(join(dst, relative, name) if relative else join(dst, name), data)
        source.rmtree()
    else:
        os.rename(absolute(src), absolute(dst))


# --------------------------------------------------------------------------------------------
# Reading and writing.
# --------------------------------------------------------------------------------------------


def read_bytes(p) -> bytes:
    if is_remote(p):
        return _remote(p).read_bytes()
    with open(absolute(p), "rb") as f:
        return f.read()


def read_text(p) -> str:
    return read_bytes(p).decode("utf-8")


def write_bytes(p, data: bytes) -> str:
    """Writes `data` to `p` atomically (creating its folder); returns the path.

    Locally: a temporary file in the same folder, then `os.replace`. On an object store: one
    upload of the whole object, which is atomic there.
    """
    p = absolute(p)
    if is_remote(p):
        _remote(p).write_bytes(data)
        return p
    folder = os.path.dirname(p)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(p)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return p


def write_text_atomic(p, text: str) -> str:
    """`write_bytes` of UTF-8 text: never half a file."""
    return write_bytes(p, text.encode("utf-8"))


def append_text(p, text: str) -> None:
    """Appends `text` to file `p` (created if missing).

    Locally an O_APPEND write. Object stores cannot append: the object is read and written
    back with `text` at its end (read-modify-write, O(size) per call), which is fine for the
    rare appends that use this (an error's traceback); frequent appenders buffer instead.
    """
    if is_remote(p):
        old = read_bytes(p) if exists(p) else b""
        write_bytes(p, old + text.encode("utf-8"))
        return
    p = absolute(p)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "a") as f:
        f.write(text)


def create_exclusive(p, data: bytes) -> bool:
    """Creates file `p` holding `data` only if it does not exist; True if this call created it.

    Locally a hard link of a complete temporary file (atomic: of two callers exactly one
    wins, and no reader sees half a file). On GCS through
    fsspec (gcsfs), an upload with `ifGenerationMatch=0`, which the service refuses when the
    object exists (atomic on GCS; the local emulator the tests use ignores the precondition).
    Elsewhere (TensorFlow's gfile) check-then-write: two callers within one upload's time may
    both succeed.
    """
    p = absolute(p)
    if not is_remote(p):
        return _create_local(p, data)
    if exists(p):
        return False
    fs = _fsspec_filesystem(p)
    if fs is None:
        write_bytes(p, data)
        return True
    try:
        fs.pipe_file(p, data, mode="create")
    except FileExistsError:  # gcsfs: HTTP 412, the precondition failed
        return False
    return True


def _create_local(p: str, data: bytes) -> bool:
    """A temporary file hard-linked to `p` (fails if `p` exists): nobody ever reads half of
    `p`. File systems without hard links: `O_CREAT | O_EXCL`."""
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p), prefix=f".{os.path.basename(p)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
    finally:
        os.remove(tmp)


def _fsspec_filesystem(p):
    """The fsspec filesystem epath uses for URL `p`, or None when epath goes through TF."""
    backend = getattr(_remote(p), "_backend", None)  # etils API: no public accessor
    fs = getattr(backend, "fs", None)
    if fs is None or "gs" not in getattr(fs(p), "protocol", ()):
        return None
    return fs(p)


def save_npz(p, compressed: bool = True, **arrays) -> str:
    """`np.savez[_compressed]` to `p`, written atomically through `write_bytes`."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return write_bytes(p, buffer.getvalue())


def load_npz(p) -> dict[str, np.ndarray]:
    """Every array of the .npz file `p` (no pickles)."""
    with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as f:
        return dict(f)
