"""The training lock: one trainer per workdir.

`workdir/train.lock` is a small JSON file `{host, pid, boot_id, pid_start, started, run_id}`,
created atomically (written to a temporary file, then `os.link`ed to its name, which fails if
the name exists: no reader ever sees half a lock, and of two trainers exactly one wins). A
second trainer is refused with the holder's host and pid. Evaluation takes no lock (it may run
beside training, as in the paper's setup) but asks `holder()` whether a trainer is still writing.

A lock is stale, and is taken over with a warning, when its holder is gone:
  * same host (and same boot): the pid is not alive, or now belongs to a process that started
    later than the holder (pid reuse);
  * another host, or a lock without a pid we can check: its file was not touched for
    `stale_after_s()` seconds. The holder touches it every `HEARTBEAT_S` seconds from a daemon
    thread, so a live trainer anywhere keeps it fresh (the threshold is `$SCORE_SDE_LOCK_STALE_S`,
    default 600 s).

On object stores (a gs:// workdir) every file operation goes through `fileio`: create = an
upload with "only if absent" (GCS `ifGenerationMatch=0` through gcsfs; `fileio.create_exclusive`
says where that precondition is missing), heartbeat = rewriting the object (its update time is
the mtime), take-over = re-read, delete if it is still the stale lock, then create. Object
stores have no atomic rename, so two hosts taking over the same stale lock at the same moment
could both delete-and-create; the create's precondition still lets only one of them win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from absl import logging

import fileio

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60.0
STALE_ENV = "SCORE_SDE_LOCK_STALE_S"
DEFAULT_STALE_S = 600.0


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir's lock."""


def lock_path(workdir: str) -> str:
    return fileio.join(fileio.absolute(workdir), LOCK_NAME)


def stale_after_s() -> float:
    """Seconds without a heartbeat after which another host's lock counts as abandoned."""
    return float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """`(state, start time in clock ticks since boot)` of a process (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields 3 and 22; the command name (field 2) may hold spaces: split after its ')'.
            fields = f.read().rpartition(")")[2].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"  # a zombie is dead, only not yet reaped


def read(workdir: str) -> dict | None:
    """The lock's content plus its `age_s` (since the last heartbeat), or None if unlocked."""
    path = lock_path(workdir)
    try:
        info = json.loads(fileio.read_bytes(path))
        info["age_s"] = time.time() - fileio.getmtime(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: judge by its age alone
        try:
            return {"age_s": time.time() - fileio.getmtime(path)}
        except OSError:
            return None
    return info if isinstance(info, dict) else {"age_s": time.time() - fileio.getmtime(path)}


def is_stale(info: dict) -> bool:
    """Whether the holder described by `info` (from `read`) is gone."""
    pid = info.get("pid")
    same_machine = info.get("host") == socket.gethostname() and info.get("boot_id") == _boot_id()
    if same_machine and isinstance(pid, int):
        if not _pid_alive(pid):
            return True
        start = _pid_start(pid)
        return start is not None and info.get("pid_start") not in (None, start)
    return info.get("age_s", 0.0) > stale_after_s()


def holder(workdir: str) -> dict | None:
    """The live holder of the workdir's lock (None when unlocked or stale)."""
    info = read(workdir)
    return None if info is None or is_stale(info) else info


def describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"host {info.get('host', '?')} pid {info.get('pid', '?')} (run {info.get('run_id', '?')}, "
        f"started {when}, last heartbeat {info.get('age_s', 0.0):.0f} s ago)"
    )


class WorkdirLock:
    """An acquired lock; `release()` (or leaving the `with` block) removes it.

    Acquiring a lock this process already holds returns a handle that leaves it in place
    (main.py locks before the heavy imports, `run_lib.train` locks again for API users).
    """

    def __init__(self, workdir: str, info: dict, owner: bool):
        self.path, self.info, self.owner = lock_path(workdir), info, owner
        self._stop = threading.Event()
        self._thread = None
        if owner:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                fileio.touch(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if not self.owner:
            return
        self._stop.set()
        current = read(os.path.dirname(self.path))
        if current is not None and current.get("run_id") == self.info["run_id"]:
            fileio.remove(self.path)
        self.owner = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _create(path: str, info: dict) -> bool:
    """Creates `path` holding `info` if it does not exist; True on success."""
    return fileio.create_exclusive(path, json.dumps(info).encode())


def acquire(workdir: str) -> WorkdirLock:
    """Takes `workdir`'s training lock (creating the workdir), taking over a stale one.

    Raises:
      WorkdirLockedError: a live trainer holds it; the message names its host and pid.
    """
    fileio.makedirs(workdir)
    path = lock_path(workdir)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _boot_id(),
        "pid_start": _pid_start(os.getpid()),
        "started": time.time(),
        "run_id": uuid.uuid4().hex[:12],
    }
    for _ in range(3):
        if _create(path, me):
            logging.info("Training lock %s taken (run %s).", path, me["run_id"])
            return WorkdirLock(workdir, me, owner=True)
        info = read(workdir)
        if info is None:
            continue  # released meanwhile
        if all(info.get(k) == me[k] for k in ("host", "pid", "boot_id", "pid_start")):
            return WorkdirLock(workdir, info, owner=False)  # ours already
        if not is_stale(info):
            raise WorkdirLockedError(
                f"{workdir} is being trained by {describe(info)}; stop that run, or use another "
                f"--workdir (a lock left by a dead run is taken over: {path})."
            )
        if fileio.is_remote(path):
            _remove_stale_object(workdir, path, info)
            continue
        # Move the stale lock aside, and put it back if it was not the one judged stale.
        aside = f"{path}.stale-{me['run_id']}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        moved = _read_file(aside)
        if moved.get("run_id") != info.get("run_id"):
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.remove(aside)
            continue
        os.remove(aside)
        logging.warning("Took over the stale training lock of %s (%s).", describe(info), path)
    raise WorkdirLockedError(f"Could not take the training lock {path}; try again.")


def _remove_stale_object(workdir: str, path: str, info: dict) -> None:
    """Object stores (no atomic rename): deletes the lock if it is still the stale one."""
    again = read(workdir)
    if again is not None and again.get("run_id") == info.get("run_id"):
        fileio.remove(path)
        logging.warning("Took over the stale training lock of %s (%s).", describe(info), path)


def _read_file(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
