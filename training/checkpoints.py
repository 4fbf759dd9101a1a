"""Checkpoints: one Orbax manager per workdir, save, restore, and the last-good fallback.

`workdir/checkpoints/<step>/` keeps the latest checkpoint (for preemption) plus every
`snapshot_freq`-th. Any `flax.struct.dataclass` state with a `step` field can be saved
(`TrainState`, the GAN's state); restores are replicated over this run's devices, whatever
topology wrote the checkpoint.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from training import devices
from training.state import TrainState, state_fields

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def checkpoint_manager(workdir: str, snapshot_freq: int) -> ocp.CheckpointManager:
    """One manager: keep the latest (preemption) checkpoint plus every `snapshot_freq`-th."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        keep_period=snapshot_freq,
        create=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


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


def restore_checkpoint(manager, abstract, step: int, tx=None):
    """Restores `step` into the structure of `abstract` (a TrainState or any state dataclass).

    A TrainState checkpoint without `opt_state` (a converted one) gets `tx.init(params)`, or
    the abstract's opt_state when `tx` is None.
    """
    replicated = devices.replicated(devices.make_mesh())
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract
    )
    if not isinstance(abstract, TrainState):
        item = manager.restore(step, args=ocp.args.StandardRestore(state_fields(abstract)))
        item["step"] = jnp.asarray(item["step"], jnp.int32)
        return type(abstract)(**item)
    meta = manager.item_metadata(step)
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


def restore_latest_good(manager, abstract, tx=None, max_step=None):
    """The newest checkpoint that restores; a corrupt or truncated one is reported and skipped.

    Returns:
      `(state, step)` or `(None, None)` when no checkpoint restores.
    """
    for step in reversed(saved_steps(manager)):
        if max_step is not None and step > max_step:
            continue
        try:
            return restore_checkpoint(manager, abstract, step, tx), step
        except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            logging.warning(
                "Checkpoint %s/%d could not be restored (%s: %s); trying the previous one.",
                manager.directory,
                step,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
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
        state, step = restore_latest_good(manager, abstract, tx, max_step=max_step)
    finally:
        manager.close()
    if state is None:
        what = f"{what} " if what else ""
        raise FileNotFoundError(f"No {what}checkpoint in {checkpoint_dir(workdir)}; {hint}")
    return state.ema_params, step
