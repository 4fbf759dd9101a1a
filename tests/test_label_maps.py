"""Label maps of `models.utils.get_score_fn`: how a discrete-time model is queried between its
training levels (the paper's Table 1 'linear' P2000 and Table 4 'round' P2000).

Paper (App. G; shared/reference/score_sde_facts.md section 8): "P2000 uses linear
interpolation of noise scales, s'(x,i) = s(x, i/2). VE keeps sigma_min and sigma_max. VP halves
beta_min and beta_max before doubling N." Table 4: "the rounding-interpolation P2000
(s(x, floor(i/2)))". Checked with stand-in networks that echo their labels (or divide by the
sigma table as the VE networks do), on the sampling grid a 2N-level sampler really uses.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import sde_lib
from configs.testing import ddpm_tiny
from models import utils as mutils

N = 10  # training levels; the sampler uses 2N


class EchoLabels(nn.Module):
    """Output = the labels it receives (broadcast); no params."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        return jnp.ones_like(x) * labels.astype(x.dtype)[:, None, None, None]


class SigmaScaled(nn.Module):
    """A VE network with `scale_by_sigma`: h(x) / sigmas[int(label)], here h = 1."""

    sigmas: tuple
    scale_by_sigma: bool = True

    @nn.compact
    def __call__(self, x, labels, train=False):
        used = jnp.asarray(self.sigmas)[labels.astype(jnp.int32)]
        return jnp.ones_like(x) / used[:, None, None, None]


def _grid(sde_2n, eps):
    """The PC sampler's times on a 2N-level grid, and the grid's level index i (ascending)."""
    t = np.linspace(sde_2n.T, eps, sde_2n.N)
    return t, sde_2n.N - 1 - np.arange(sde_2n.N)


def _score(sde, model, t, label_map):
    score_fn = mutils.get_score_fn(sde, model, {}, continuous=False, label_map=label_map)
    x = jnp.zeros((len(t), 1, 1, 1))
    return np.asarray(score_fn(x, jnp.asarray(t, jnp.float32)))[:, 0, 0, 0]


def test_vp_2n_tables_halve_the_per_step_betas():
    """Doubling N with the SDE's beta_min / beta_max kept halves DDPM's per-step betas."""
    sde, sde_2n = sde_lib.VPSDE(0.1, 20.0, 1000), sde_lib.VPSDE(0.1, 20.0, 2000)
    beta = sde.discrete_betas  # DDPM's beta_1 = 1e-4 ... beta_N = 0.02
    np.testing.assert_allclose(beta[[0, -1]], [1e-4, 0.02], rtol=1e-12)
    np.testing.assert_allclose(sde_2n.discrete_betas, np.linspace(beta[0] / 2, beta[-1] / 2, 2000))
    # So level i of the 2N chain has the noise of level ~i / 2 of the trained one: log
    # alpha_bar of level 2j + 1 (as many betas as levels 0..j, each halved) is within 5 % of
    # level j's, within two levels everywhere (dt = 1 / N in the tables shifts the high end).
    log_abar = np.log(sde.alphas_cumprod)
    log_abar_2n = np.log(sde_2n.alphas_cumprod)[1::2]
    assert np.all(np.abs(log_abar_2n / log_abar - 1) < 0.05)
    level = np.interp(-log_abar_2n, -log_abar, np.arange(1000))
    assert np.all(np.abs(level - np.arange(1000)) < 2)
    # Halving the SDE's beta_min / beta_max instead (0.05, 10) would halve the total noise.
    log_abar_half = np.log(sde_lib.VPSDE(0.05, 10.0, 2000).alphas_cumprod)[1::2]
    np.testing.assert_allclose(log_abar_half / log_abar, 0.5, atol=0.03)


def test_ve_2n_tables_keep_sigma_min_and_max():
    sde_2n = sde_lib.VESDE(0.01, 50.0, 2 * N)
    np.testing.assert_allclose(sde_2n.discrete_sigmas[[0, -1]], [0.01, 50.0], rtol=1e-12)
    # Every other level of the 2N table is within half a level of the N table.
    ratio = sde_2n.discrete_sigmas[::2] / sde_lib.VESDE(0.01, 50.0, N).discrete_sigmas
    assert np.all((ratio <= 1 + 1e-12) & (ratio > (0.01 / 50.0) ** (0.5 / (N - 1))))


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_ve_labels_linear_and_round(eps):
    sde = sde_lib.VESDE(0.01, 50.0, N)
    t, i = _grid(sde_lib.VESDE(0.01, 50.0, 2 * N), eps)
    # The network sees descending labels (0 = sigma_max): (N - 1) - i/2 up to the grid's ends.
    linear = (N - 1) - _score(sde, EchoLabels(), t, "linear")
    assert np.all(np.abs(linear - i / 2) <= 0.5 + 1e-5)
    np.testing.assert_allclose(linear, (N - 1) * t, rtol=1e-5, atol=1e-5)  # u = t (N - 1)
    # 'round' is Table 4's floor(i / 2) (within eps of the grid's low end) and the original's
    # labels (label_map=None).
    rounded = (N - 1) - _score(sde, EchoLabels(), t, "round")
    np.testing.assert_array_equal(rounded, i // 2)
    np.testing.assert_array_equal(rounded, (N - 1) - _score(sde, EchoLabels(), t, None))


def test_ve_linear_divides_by_the_interpolated_sigma():
    """`scale_by_sigma` networks divide by sigmas[int(label)]; 'linear' makes it sigma(t)."""
    sde = sde_lib.VESDE(0.01, 50.0, N)
    sigmas = tuple(float(s) for s in np.asarray(mutils.get_sigmas(_config())))
    model = SigmaScaled(sigmas)
    t, _ = _grid(sde_lib.VESDE(0.01, 50.0, 2 * N), 1e-5)
    sigma_t = 0.01 * (50.0 / 0.01) ** t  # = sigma_max (sigma_min / sigma_max)^(level / (N-1))
    np.testing.assert_allclose(_score(sde, model, t, "linear"), 1 / sigma_t, rtol=1e-4)
    # 'round' divides by the nearest table entry, as the original.
    level = np.round((1 - t) * (N - 1)).astype(int)
    np.testing.assert_allclose(_score(sde, model, t, "round"), 1 / np.asarray(sigmas)[level])


def test_vp_labels_and_std_linear_and_round():
    sde = sde_lib.VPSDE(0.1, 20.0, 25)  # beta_max / N < 1 for the DDPM tables
    t, i = _grid(sde_lib.VPSDE(0.1, 20.0, 50), 1e-3)
    # The stand-in outputs its label, so -score * std recovers the label the network saw.
    table = sde.sqrt_1m_alphas_cumprod
    u = t * (25 - 1)
    for label_map, expected_labels, expected_std in [
        ("linear", u, np.interp(u, np.arange(25), table)),
        ("round", np.round(u), table[np.round(u).astype(int)]),
        (None, u, table[u.astype(int)]),  # the original: fractional label, floored std
    ]:
        score = _score(sde, EchoLabels(), t, label_map)
        np.testing.assert_allclose(-score * expected_std, expected_labels, rtol=1e-4, atol=1e-5)
    # 'linear' is within half a level of i / 2; 'round' is floor(i / 2).
    assert np.all(np.abs(u - i / 2) <= 0.5 + 1e-6)
    np.testing.assert_array_equal(np.round(u)[:-2], (i // 2)[:-2])  # eps = 1e-3 shifts the end


def test_label_map_errors_and_continuous_models():
    sde = sde_lib.VESDE(0.01, 50.0, N)
    with pytest.raises(ValueError, match=r"Unknown label_map 'nearest'; valid: None, \['linear'"):
        mutils.get_score_fn(sde, EchoLabels(), {}, label_map="nearest")
    # A continuous-time model is queried at sigma(t) whatever the label map.
    t = np.array([0.3, 0.7])
    fn = mutils.get_score_fn(sde, EchoLabels(), {}, continuous=True, label_map="linear")
    out = np.asarray(fn(jnp.zeros((2, 1, 1, 1)), jnp.asarray(t)))[:, 0, 0, 0]
    np.testing.assert_allclose(out, 0.01 * 5000.0**t, rtol=1e-5)


def _config():
    config = ddpm_tiny.get_config()
    config.training.sde = "vesde"
    config.model.num_scales = N
    config.model.sigma_min, config.model.sigma_max = 0.01, 50.0
    return config
