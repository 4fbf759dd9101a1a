"""Checkpoints: one Orbax manager per workdir, save, restore, and the last-good fallback.

`workdir/checkpoints/<step>/` keeps the latest checkpoint (for preemption) plus every
`snapshot_freq`-th. Any `flax.struct.dataclass` state with a `step` field can be saved
(`TrainState`, the GAN's state); restores are replicated over this run's devices, whatever
topology wrote the checkpoint.

Before restoring, the checkpoint's parameter shapes are compared with the model's (Orbax would
restore a differently shaped array as it is stored): a checkpoint of another model raises
`CheckpointMismatchError`. A checkpoint that fits but fails to restore is damaged: the trainers
move it aside to `<step>.corrupt-<time>` (never deleted; Orbax ignores that name), so that the
step is written again when training passes it.
"""

from __future__ import annotations

import copy
import functools
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

import fileio
from training import devices
from training.state import TrainState, state_fields

CHECKPOINT_DIR = "checkpoints"
# Replicated arrays smaller than this are written by one replica, not split across replicas:
# Orbax's replica-parallel save slices every replicated array on every device, one compiled
# `slice` per shape and device (a tiny model on 8 CPU devices spent 5 s on them per save).
REPLICA_PARALLEL_MIN_BYTES = 4 << 20


def checkpoint_dir(workdir: str) -> str:
    return fileio.join(fileio.absolute(workdir), CHECKPOINT_DIR)


def step_dirs(workdir: str) -> list[int]:
    """The step directories in `workdir/checkpoints` (listed without Orbax; [] if none)."""
    return sorted(int(name) for name in fileio.listdir(checkpoint_dir(workdir)) if name.isdigit())


@functools.cache
def _register_array_handler() -> None:
    """Orbax's default jax.Array handler with `REPLICA_PARALLEL_MIN_BYTES` (once per process).
    Orbax has no public option for it: the default handler is copied and its field set."""
    handler = copy.copy(ocp.type_handlers.get_type_handler(jax.Array))
    if not hasattr(handler, "_min_slice_bytes_for_replica_parallel"):
        raise RuntimeError("orbax's ArrayHandler changed: pin orbax-checkpoint (requirements.txt)")
    handler._min_slice_bytes_for_replica_parallel = REPLICA_PARALLEL_MIN_BYTES
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def checkpoint_manager(workdir: str, snapshot_freq: int) -> ocp.CheckpointManager:
    """One manager: keep the latest (preemption) checkpoint plus every `snapshot_freq`-th."""
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        keep_period=snapshot_freq,
        create=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameters do not fit the model of this config (another run's workdir)."""


def saved_steps(manager: ocp.CheckpointManager) -> list[int]:
    """The steps on disk now (also those another process wrote since the manager was made)."""
    manager.reload()
    return sorted(manager.all_steps())


def save_checkpoint(manager: ocp.CheckpointManager, state) -> None:
    """Saves a state dataclass with a `step` (skipped when that step is already saved)."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    manager.save(step, args=ocp.args.StandardSave(state_fields(state)), force=True)
    manager.wait_until_finished()


def _param_shapes(tree: dict) -> dict[str, tuple]:
    """`{path: shape}` of the `*params*` entries of a state dict or checkpoint metadata tree."""
    subtrees = {k: v for k, v in tree.items() if "params" in k}
    flat = jax.tree_util.tree_flatten_with_path(subtrees)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def structure_mismatch(meta, abstract) -> str | None:
    """How the checkpoint metadata `meta` differs from `abstract` in parameter paths or shapes
    (the first difference), or None when they fit."""
    fields = state_fields(abstract)
    want = _param_shapes(fields)
    got = _param_shapes({k: meta[k] for k in meta.keys() if k in fields})
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        return (
            f"{len(missing)} parameters missing (e.g. {missing[:1]}), {len(extra)} unexpected "
            f"(e.g. {extra[:1]})"
        )
    for path, shape in want.items():
        if got[path] != shape:
            return f"{path} has shape {got[path]} in the checkpoint, {shape} in this model"
    return None


def quarantine(manager, step: int) -> str | None:
    """Moves checkpoint `step` aside to `<step>.corrupt-<time>` (process 0; never deleted).

    Through `fileio.rename`: on an object store (a gs:// workdir) that is a copy of every
    object, then a delete (not atomic; a kill in between leaves both, and Orbax ignores the
    copy's name).

    Returns:
      The new path, or None when it could not be moved (read-only storage, another process).
    """
    source = fileio.join(str(manager.directory), str(step))
    target = f"{source}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
        try:
            fileio.rename(source, target)
        except OSError as e:
            logging.warning("Could not move %s aside: %s", source, e)
            return None
    manager.reload()
    return target


def restore_checkpoint(manager, abstract, step: int, tx=None):
    """Restores `step` into the structure of `abstract` (a TrainState or any state dataclass).

    A TrainState checkpoint without `opt_state` (a converted one) gets `tx.init(params)`, or
    the abstract's opt_state when `tx` is None.

    Raises:
      CheckpointMismatchError: the checkpoint holds parameters of another shape or structure.
      Exception: anything Orbax raises for a damaged checkpoint.
    """
    meta = manager.item_metadata(step)
    mismatch = structure_mismatch(meta, abstract) if meta is not None else None
    if mismatch is not None:
        raise CheckpointMismatchError(
            f"Checkpoint {manager.directory}/{step} is not one of this config's model: {mismatch}. "
            "Use the config it was trained with (config.json in its workdir), or another --workdir."
        )
    replicated = devices.replicated(devices.make_mesh())
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract
    )
    if not isinstance(abstract, TrainState):
        item = manager.restore(step, args=ocp.args.StandardRestore(state_fields(abstract)))
        item["step"] = jnp.asarray(item["step"], jnp.int32)
        return type(abstract)(**item)
    keys = set(meta.keys()) if meta is not None else {"step", "params", "ema_params", "opt_state"}
    target = {"step": abstract.step, "params": abstract.params, "ema_params": abstract.ema_params}
    if "opt_state" in keys:
        target["opt_state"] = abstract.opt_state
    item = manager.restore(step, args=ocp.args.StandardRestore(target))
    opt_state = item.get("opt_state")
    if opt_state is None:
        opt_state = abstract.opt_state if tx is None else tx.init(item["params"])
    return TrainState(
        step=jnp.asarray(item["step"], jnp.int32),
        params=item["params"],
        ema_params=item["ema_params"],
        opt_state=opt_state,
    )


def restore_latest_good(manager, abstract, tx=None, max_step=None, move_aside: bool = True):
    """The newest checkpoint that restores; a corrupt or truncated one is reported and skipped.

    Args:
      move_aside: move a damaged checkpoint to `<step>.corrupt-<time>` (what trainers do, so
        that they write the step again); readers pass False and leave the run untouched.

    Returns:
      `(state, step)` or `(None, None)` when no checkpoint restores.

    Raises:
      CheckpointMismatchError: a checkpoint is of another model (never skipped: training would
        start again from scratch over another run).
    """
    for step in reversed(saved_steps(manager)):
        if max_step is not None and step > max_step:
            continue
        try:
            return restore_checkpoint(manager, abstract, step, tx), step
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any other failure means "damaged"
            moved = quarantine(manager, step) if move_aside else None
            logging.warning(
                "Checkpoint %s/%d could not be restored (%s)%s; trying the previous one.",
                manager.directory,
                step,
                error_line(e),
                f"; moved aside to {moved}" if moved else "",
            )
    return None, None


def restore_or_init(manager, abstract, init_fn, tx=None):
    """The newest good checkpoint of `manager` (logged), or `init_fn()` when none restores.

    Returns:
      The state (not yet placed on the mesh).
    """
    state, step = restore_latest_good(manager, abstract, tx)
    if state is None:
        return init_fn()
    logging.info("Resumed from checkpoint step %d.", step)
    return state


def error_line(e: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, at most `limit` characters (Orbax errors run long)."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0] if text else ''}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def restore_ema_params(workdir: str, abstract, *, snapshot_freq: int = 1, tx=None,
                       max_step=None, what: str = "", hint: str = ""):  # fmt: skip
    """EMA params of the newest good checkpoint in `workdir/checkpoints` (at most `max_step`).

    Raises:
      FileNotFoundError: naming the directory, `what` checkpoint is missing and `hint` (how to
        make one); or, with `max_step`, that this step does not exist (listing those that do).

    Returns:
      `(ema_params, step)`.
    """
    manager = checkpoint_manager(workdir, snapshot_freq)
    try:
        steps = saved_steps(manager)
        if max_step is not None and max_step not in steps:
            raise FileNotFoundError(
                f"No checkpoint step {max_step} in {checkpoint_dir(workdir)}; available steps: "
                f"{steps}"
            )
        state, step = restore_latest_good(manager, abstract, tx, max_step, move_aside=False)
    finally:
        manager.close()
    if state is None:
        what = f"{what} " if what else ""
        raise FileNotFoundError(f"No {what}checkpoint in {checkpoint_dir(workdir)}; {hint}")
    return state.ema_params, step
