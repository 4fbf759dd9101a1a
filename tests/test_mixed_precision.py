"""Mixed precision (`training.compute_dtype` / `sampling.compute_dtype` = 'bfloat16'): the
network runs in bfloat16, parameters, optimizer state, gradients and loss stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses
from configs.testing import ddpmpp_tiny, ncsnpp_tiny
from models import utils as mutils
from training import score_model, steps

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %). The DSM loss is a mean of
# squared errors over many pixels, so the roundings mostly average out: measured 7e-5 relative
# on the tiny DDPM++ below (with a non-zero output layer). 2 % leaves room for other models.
BF16_LOSS_RTOL = 2e-2


def _config(module, dtype):
    config = module.get_config()
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
    config.optim.warmup = 0  # every step moves the params
    config.training.n_jitted_steps = 1
    config.training.compute_dtype = dtype
    # The paper's configs zero the output layer at init (init_scale 0): the first loss would
    # not see the network at all. A non-zero output layer makes the loss depend on it.
    config.model.init_scale = 1.0
    return config


def _one_step(module, dtype):
    config = _config(module, dtype)
    sde, _ = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    loss_fn = score_model.score_loss_fn(config, sde, model, train=True)
    step = steps.make_train_step(loss_fn, tx, 0.9, jax.random.key(0))
    state = score_model.init_train_state(config, model, tx, jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (1, 8, 8, 8, 3)) * 2 - 1
    new_state, metrics = step(state, images)
    return loss_fn, state, new_state, metrics, images[0]


@pytest.mark.parametrize(
    "module",
    [ddpmpp_tiny, pytest.param(ncsnpp_tiny, marks=pytest.mark.slow)],  # NCSN++: slow to compile
    ids=["ddpmpp_vp", "ncsnpp_ve"],
)
def test_bf16_train_step_loss_close_to_fp32_and_state_stays_fp32(module):
    _, _, fp32_state, fp32, _ = _one_step(module, "float32")
    loss_fn, state, bf16_state, bf16, images = _one_step(module, "bfloat16")
    relative = float(np.max(np.abs(bf16["loss"] / fp32["loss"] - 1)))
    print(f"{module.__name__}: fp32 loss {fp32['loss']}, bf16 {bf16['loss']}, rel. {relative:.2e}")
    assert 0 < relative < BF16_LOSS_RTOL  # bf16 really changes the arithmetic, by < 2 %
    assert bool(np.all(bf16["finite"]))
    for tree in (bf16_state.params, bf16_state.ema_params, bf16_state.opt_state):
        dtypes = {a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}
        assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
    # The convolutions really run in bfloat16; the loss comes out float32.
    jaxpr = str(jax.make_jaxpr(loss_fn)(jax.random.key(0), state.params, images))
    assert "conv_general_dilated" in jaxpr and "bf16[" in jaxpr
    out = jax.eval_shape(loss_fn, jax.random.key(0), state.params, images)
    assert jax.tree.leaves(out)[0].dtype == jnp.float32


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="float16"):
        mutils.compute_dtype("float16")
