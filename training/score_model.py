"""A score model from a config: its SDE, initial state, training loss and restored EMA params.

The pieces `run_lib` (train / evaluate / stats) and the experiments on trained score models
(sweeps, controllable generation) share.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import losses
import sde_lib
import utils
from models import utils as mutils
from training import checkpoints
from training.state import TrainState, new_train_state

# The NCSN-family networks take integer noise-level labels.
INT_LABEL_MODELS = ("ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256")


def sde_from_config(config) -> tuple[sde_lib.SDE, float]:
    """The forward SDE of `config.training.sde` and the sampling eps of the original run_lib."""
    name = config.training.sde.lower()
    m = config.model
    if name == "vesde":
        return sde_lib.VESDE(m.sigma_min, m.sigma_max, m.num_scales), 1e-5
    if name in ("vpsde", "subvpsde"):
        cls = sde_lib.VPSDE if name == "vpsde" else sde_lib.subVPSDE
        return cls(m.beta_min, m.beta_max, m.num_scales), 1e-3
    if name == "tutorialvesde":
        # The tutorial's `dx = sigma^t dw` (model.sigma); it samples down to t = 1e-3.
        return sde_lib.TutorialVESDE(m.sigma, m.num_scales), 1e-3
    raise ValueError(
        f"Unknown config.training.sde {config.training.sde!r}; valid: {sorted(sde_lib.SDES)}"
    )


def init_params(config, model, key) -> Any:
    """Initial network params (the original `init_model`): dummy batch of the data shape."""
    size, channels = config.data.image_size, config.data.num_channels
    x = jnp.zeros((1, size, size, channels), jnp.float32)
    int_labels = config.model.name in INT_LABEL_MODELS
    labels = jnp.zeros((1,), jnp.int32 if int_labels else jnp.float32)
    params_key, dropout_key = jax.random.split(key)
    variables = model.init({"params": params_key, "dropout": dropout_key}, x, labels, train=False)
    return variables["params"]


def create_train_state(config, model, tx, key) -> TrainState:
    """Step 0, EMA starting at the initial params (as the JAX original)."""
    return new_train_state(init_params(config, model, key), tx)


def init_train_state(config, model, tx, key) -> TrainState:
    """`create_train_state`, jitted; the init's freed host memory (~0.5 GB for the CIFAR-10
    models) and its executable are handed back to the OS once the state exists."""
    state = jax.jit(lambda k: create_train_state(config, model, tx, k))(key)
    jax.block_until_ready(state)  # the init's temporaries are freed only when it has run
    utils.release_host_memory()
    return state


def abstract_train_state(config, model, tx) -> TrainState:
    """Shapes and dtypes of `create_train_state` (the restore target); allocates nothing."""
    return jax.eval_shape(lambda: create_train_state(config, model, tx, jax.random.key(0)))


def score_loss_fn(config, sde, model, train: bool):
    """`loss_fn(key, params, x)` for the config's objective (continuous / SMLD / DDPM).

    `training.compute_dtype='bfloat16'` runs the network in bfloat16 (float32 params, loss and
    gradients; `models.utils.get_model_fn`).
    """
    continuous = config.training.continuous
    dtype = mutils.compute_dtype(config.training.get("compute_dtype", "float32"))

    def score_fn(params, x, t, key):
        return mutils.get_score_fn(
            sde, model, params, train=train, continuous=continuous, dtype=dtype
        )(x, t, key)

    def model_fn(params, x, labels, key):
        return mutils.get_model_fn(model, params, train=train, dtype=dtype)(x, labels, key)

    return losses.get_loss_fn(
        sde,
        score_fn=score_fn,
        model_fn=model_fn,
        continuous=continuous,
        reduce_mean=config.training.reduce_mean,
        likelihood_weighting=config.training.likelihood_weighting,
    )


def restore_score_params(config, workdir: str, model, *, max_step=None):
    """EMA params of the newest good score-model checkpoint of `workdir` (at most `max_step`).

    Returns:
      `(ema_params, step)`.

    Raises:
      FileNotFoundError: no such checkpoint (the message says how to train one).
    """
    tx = losses.get_optimizer(config)
    return checkpoints.restore_ema_params(
        workdir,
        abstract_train_state(config, model, tx),
        snapshot_freq=config.training.snapshot_freq,
        tx=tx,
        max_step=max_step,
        what="score-model",
        hint="train one first: python main.py --config CFG --workdir W --mode train",
    )
