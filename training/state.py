"""The train state of every EMA-tracked network (score models, the noise-conditional classifier)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: keys are derived from `step`, never stored."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def new_train_state(params, tx) -> TrainState:
    """Step 0 with the EMA starting at the initial params (as the JAX original)."""
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        # A distinct copy: params and ema_params are donated separately in the train step.
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def state_fields(state) -> dict:
    """The pytree fields of a `flax.struct.dataclass` state (with `step`) as a dict."""
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.metadata.get("pytree_node", True)
    }


def all_finite(tree) -> jax.Array:
    """One boolean: every leaf of `tree` is finite (a cheap reduction inside the jitted step)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
