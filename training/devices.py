"""Devices and hosts: the 1-D data mesh, host <-> global arrays, batch-size checks.

One `jax.jit` code path for every topology: batches are sharded over a 1-D `data` mesh of
every device of every host, states are replicated. `to_global` assembles each host's slice of a
batch into one global array; `gather` is the one place that brings arrays back from devices
and hosts to NumPy.
"""

from __future__ import annotations

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
