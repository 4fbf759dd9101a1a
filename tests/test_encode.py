"""Encoding through the probability-flow ODE (experiments/encode.py, paper Sec. 4.3).

* With the exact score of Gaussian data the flow map is affine per coordinate,
  `z = m_T + (x - m_eps) sqrt(v_T / v_eps)`: the encoder hits it and decode(encode(x)) = x.
* slerp / lerp: endpoints, norms, the parallel fallback.
* The command on a tiny random DDPM++ (8x8 RGB): files, strip shapes and the round-trip error.
"""

import json
import os

import analytic
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import losses
from configs.testing import ddpmpp_tiny
from experiments import encode
from models import utils as mutils
from training import checkpoints, score_model


@pytest.mark.parametrize("name", ["vpsde", "vesde"])
def test_gaussian_flow_map_and_round_trip(name):
    sde = analytic.SDES[name]
    score_fn = analytic.exact_score_fn(sde)
    enc, dec = encode.get_codec(sde, score_fn)
    x = analytic.MU + analytic.S * jax.random.normal(jax.random.key(0), (16, 4))
    z, _, nfe_enc = enc(jax.random.key(1), x)
    m_e, v_e = analytic.marginal(sde, jnp.full((1,), encode.ENCODE_EPS))
    m_T, v_T = analytic.marginal(sde, jnp.ones(1))
    np.testing.assert_allclose(z, m_T + (x - m_e) * jnp.sqrt(v_T / v_e), rtol=1e-3, atol=1e-3)
    x_rec, nfe_dec = dec(jax.random.key(2), z)
    # Two adaptive solves at rtol = atol = 1e-5: measured max error 2e-6 (VP), 1e-5 (VE).
    np.testing.assert_allclose(x_rec, x, atol=1e-4)
    assert int(nfe_enc) > 10 and int(nfe_dec) > 10


def test_slerp_and_lerp():
    z0 = jnp.asarray([[3.0, 0.0], [0.0, 0.0]])
    z1 = jnp.asarray([[0.0, 3.0], [0.0, 0.0]])
    s = jnp.linspace(0.0, 1.0, 5)
    path = encode.slerp(z0, z1, s)
    assert path.shape == (5, 2, 2)
    np.testing.assert_allclose(path[0], z0, atol=1e-6)
    np.testing.assert_allclose(path[-1], z1, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(path.reshape(5, -1), axis=-1), 3.0, rtol=1e-6)
    mid = encode.lerp(z0, z1, s)[2]
    np.testing.assert_allclose(jnp.linalg.norm(mid), 3.0 / np.sqrt(2.0), rtol=1e-6)
    # Parallel latents: slerp is the straight line (no 0/0).
    np.testing.assert_allclose(encode.slerp(z0, 2.0 * z0, s), encode.lerp(z0, 2.0 * z0, s))


def _tiny_workdir(tmp_path):
    """A random-init DDPM++ checkpoint on 8x8 RGB images, plus a folder of images.

    The output layer starts at zero (init_scale = 0), so the score is 0 and the flow is the
    linear VP drift `-beta(t) x / 2`: a well-conditioned, non-trivial map (it shrinks the images
    by a(T) = e^-5.03). A random network with a non-zero output is no score of anything and its
    flow is not numerically invertible (measured: round-trip error 2.5 with init_scale = 0.01);
    the nonlinear case is the exact Gaussian score above.
    """
    config = ddpmpp_tiny.get_config()
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = ()
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    state = jax.jit(lambda k: score_model.create_train_state(config, model, tx, k))(
        jax.random.key(0)
    )
    manager = checkpoints.checkpoint_manager(str(tmp_path / "w"), config.training.snapshot_freq)
    checkpoints.save_checkpoint(manager, state)
    manager.close()
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return config, str(tmp_path / "w"), str(folder)


def test_command_writes_round_trip_and_interpolation_strips(tmp_path):
    config, workdir, folder = _tiny_workdir(tmp_path)
    summary = encode.run(config, workdir, num=3, pair=(0, 2), steps=4, image_folder=folder)
    out = os.path.join(workdir, "encode")
    # Rows: images | reconstructions | error x 10, 3 columns of 8 px with 2 px padding.
    assert np.asarray(Image.open(os.path.join(out, "round_trip.png"))).shape == (32, 32, 3)
    # x_a | 4 decoded interpolants | x_b in one row.
    strip = np.asarray(Image.open(os.path.join(out, "interpolation.png")))
    assert strip.shape == (12, 6 * 10 + 2, 3)
    # Tolerance: the encoder's absolute error (atol 1e-5 on latents of size ~e^-5) grows by
    # 1 / a(T) = e^5 on the way back: measured max 1.0e-3 in model units ([-1, 1]). 2e-3 stays
    # below half an 8-bit level (1/255 = 3.9e-3 in these units), so every rounded byte returns.
    assert summary["round_trip"]["max_abs"] < 2e-3, summary
    assert summary["round_trip"]["rounded_bytes_changed"] == 0.0, summary
    assert json.load(open(os.path.join(out, "encode.json")))["round_trip"] == summary["round_trip"]
    arrays = np.load(os.path.join(out, "encode.npz"))
    assert arrays["latents"].shape == (3, 8, 8, 3) and arrays["interpolation"].shape == (4, 8, 8, 3)
    # The interpolation ends decode the two latents, i.e. reproduce the two images.
    np.testing.assert_allclose(
        arrays["interpolation"][[0, -1]], arrays["images"][[0, 2]], atol=2e-3
    )
    with pytest.raises(ValueError, match="valid"):
        encode.run(config, workdir, num=3, image_folder=folder, interpolation="cubic")
    with pytest.raises(ValueError, match="--pair"):
        encode.run(config, workdir, num=3, pair=(0, 3), image_folder=folder)
