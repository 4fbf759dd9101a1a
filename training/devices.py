"""Devices and hosts: the 1-D data mesh, host <-> global arrays, batch-size checks.

One `jax.jit` code path for every topology: batches are sharded over a 1-D `data` mesh of
every device of every host, states are replicated. `to_global` assembles each host's slice of a
batch into one global array; `gather` is the one place that brings arrays back from devices
and hosts to NumPy.

Resume decisions (is this round / report / sweep cell already on disk?) are taken by process 0
and sent to every process (`main_bytes`, `main_value`, `agree`): the processes of a multi-host
run then run the same collectives even when each host sees its own local workdir, where the
files exist only on process 0's disk (only process 0 writes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax._src import distributed
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
    """1-D `data` mesh over every device of every host (Auto axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of states: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, steps_axis: bool = False) -> NamedSharding:
    """The sharding of batches `[B, ...]` (or `[steps, B, ...]` with `steps_axis`) over `data`."""
    return NamedSharding(mesh, P(None, "data") if steps_axis else P("data"))


def to_global(batch, sharding: NamedSharding):
    """Assembles each host's slice of a batch (a NumPy array or a pytree of them) into one
    globally sharded array; the batch axis is the first one sharded over `data`."""
    batch_axis = 1 if len(sharding.spec) > 1 else 0

    def one(x):
        x = np.asarray(x)
        global_shape = list(x.shape)
        global_shape[batch_axis] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return jax.tree.map(one, batch)


def gather(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-host) array, or a pytree of them, as NumPy on this
    host: the whole global array on every process."""

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(jax.device_get(a))

    return jax.tree.map(one, x)


def check_batch_size(batch_size: int, field: str = "training.batch_size") -> None:
    """Raises a ValueError naming `field` unless `batch_size` is positive and divides evenly
    over every device."""
    if batch_size <= 0 or batch_size % jax.device_count():
        raise ValueError(
            f"config.{field}={batch_size} must be a positive multiple of the number of devices "
            f"({jax.device_count()}); set --config.{field}"
        )


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Waits until every process reaches `name` (no-op on one process).

    Uses the coordination service, whose timeout is ours to set: hosts do different amounts of
    host-side work before the first collective (process 0 takes the lock, writes files; data
    loading and compilation vary), and the CPU collectives (gloo) give up on a rendezvous that
    one host reaches more than 30 s after another.
    """
    client = distributed.global_state.client
    if jax.process_count() > 1 and client is not None:
        client.wait_at_barrier(f"score_sde:{name}", int(timeout_s * 1000))


def main_bytes(read: Callable[[], bytes | None]) -> bytes | None:
    """`read()` on process 0 (e.g. a saved round's file, or None when absent), the same bytes
    on every process. Single-process runs just call `read()`."""
    if jax.process_count() == 1:
        return read()
    data = read() if jax.process_index() == 0 else None
    # The length first (-1: None), so that the payload has the same shape everywhere.
    size = multihost_utils.broadcast_one_to_all(np.int32(-1 if data is None else len(data)))
    size = int(size)
    if size < 0:
        return None
    payload = np.frombuffer(data, np.uint8) if data is not None else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(payload)).tobytes()


def main_value(compute: Callable[[], Any]) -> Any:
    """`compute()` on process 0 (a JSON-serialisable value), the same value on every process."""
    if jax.process_count() == 1:
        return compute()
    data = main_bytes(lambda: json.dumps(compute()).encode())
    return json.loads(data)


def agree(value: Any) -> Any:
    """Process 0's `value` (JSON-serialisable) on every process: what every process computed
    for itself (e.g. "is the checkpoint there yet?"), decided by process 0."""
    return main_value(lambda: value)


def shard_host_array(x, sharding: NamedSharding):
    """A global array from `x`, which every process holds in full (the same values): each
    device takes its slice. For inputs computed identically on every host (e.g. latents from
    per-sample keys)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def allgather_host(x) -> np.ndarray:
    """Host-local NumPy arrays of the same shape (each host's block of a batch) concatenated
    over the processes, in process order: the global batch on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))
