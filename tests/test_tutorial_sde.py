"""The tutorial's VE SDE `dx = sigma^t dw` end to end: config -> SDE, the network bridge,
samplers and likelihood with the exact Gaussian score (tests/analytic.py: N(MU, S^2 I) data).

The closed forms of `sde_lib.TutorialVESDE` itself are in tests/test_sde_lib.py.
"""

import analytic
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import likelihood
import sampling
import sde_lib
from configs.tutorial import fashion_mnist_sigma25, fashion_mnist_sigma50
from models import utils as mutils
from training import score_model

SDE = sde_lib.TutorialVESDE(sigma=25.0, N=1000)
EPS = 1e-3  # the tutorial's (and sde_from_config's) sampling eps
SHAPE = (4096, 2)


@pytest.mark.parametrize(
    "module,sigma", [(fashion_mnist_sigma25, 25.0), (fashion_mnist_sigma50, 50.0)]
)
def test_configs_build_the_tutorial_sde_and_a_scale_by_sigma_network(module, sigma):
    config = module.get_config()
    sde, eps = score_model.sde_from_config(config)
    assert sde == sde_lib.TutorialVESDE(sigma=sigma, N=500) and eps == 1e-3
    assert config.training.continuous and not config.data.centered
    model = mutils.get_model(config)
    assert model.embedding_type == "fourier" and model.scale_by_sigma


class _EchoLabels(nn.Module):
    """Stand-in network: returns its labels broadcast to x's shape."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        return x * 0 + labels[:, None, None, None]


def test_score_fn_feeds_the_marginal_std_and_refuses_discrete():
    """labels = std(t) (a scale_by_sigma network then divides its output by them)."""
    t = jnp.asarray([1e-3, 0.3, 1.0])
    x = jnp.ones((3, 2, 2, 1))
    score = mutils.get_score_fn(SDE, _EchoLabels(), {}, continuous=True)(x, t)
    expected = np.sqrt((25.0 ** (2 * np.asarray(t, np.float64)) - 1) / (2 * np.log(25.0)))
    np.testing.assert_allclose(score[:, 0, 0, 0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="continuous=True"):
        mutils.get_score_fn(SDE, _EchoLabels(), {}, continuous=False)


# Slow: compiling NCSN++ takes ~26 s on 2 cores; the labels fed to the network are checked by
# the stand-in test above in the default suite.
@pytest.mark.slow
def test_tiny_network_output_is_divided_by_std():
    """A tiny NCSN++ with `scale_by_sigma`: std(t) x score is the unscaled network output."""
    config = fashion_mnist_sigma25.get_config()
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 8, (1, 2), ()
    config.data.image_size = 8
    model = mutils.get_model(config)
    sde, _ = score_model.sde_from_config(config)
    params = score_model.init_params(config, model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.asarray([0.01, 0.9])
    std = sde.marginal_prob(x, t)[1]
    # Jitted: op-by-op dispatch of NCSN++ takes about a minute on 2 cores.
    score = jax.jit(mutils.get_score_fn(sde, model, params, continuous=True))(x, t)
    unscaled = model.clone(scale_by_sigma=False)
    raw = jax.jit(lambda x, s: unscaled.apply({"params": params}, x, s, train=False))(x, std)
    np.testing.assert_allclose(score * std[:, None, None, None], raw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion", "platen", "sra1"])
def test_pc_samplers_recover_gaussian_data(predictor):
    """The tolerances of tests/test_sampling.py: |mean - MU| < 0.02, |std / S - 1| < 0.04."""
    sampler = sampling.get_pc_sampler(
        SDE, analytic.exact_score_fn(SDE), SHAPE, predictor, "none", eps=EPS
    )
    x, nfe = sampler(jax.random.key(1))
    assert abs(float(x.mean()) - analytic.MU) < 0.02
    assert abs(float(x.std()) / analytic.S - 1) < 0.04
    assert nfe == SDE.N * sampling.PREDICTOR_NFE.get(predictor, 1)


def test_pc_with_langevin_and_ode_sampler_recover_gaussian_data():
    score_fn = analytic.exact_score_fn(SDE)
    pc = sampling.get_pc_sampler(
        SDE, score_fn, SHAPE, "reverse_diffusion", "langevin", snr=0.16, eps=EPS
    )
    ode = sampling.get_ode_sampler(SDE, score_fn, SHAPE, eps=EPS)
    for sampler in (pc, ode):
        x, _ = sampler(jax.random.key(2))
        assert abs(float(x.mean()) - analytic.MU) < 0.02
        assert abs(float(x.std()) / analytic.S - 1) < 0.04


def test_likelihood_matches_exact_gaussian_logp():
    """bits/dim through the flow ODE with the exact divergence vs the closed form: log p_eps(x)
    plus the prior's mismatch log N(z; 0, std(1)^2) - log p_T(z) (as tests/test_likelihood.py)."""
    x = analytic.MU + analytic.S * jax.random.normal(jax.random.key(3), (64, 2))
    fn = likelihood.get_likelihood_fn(SDE, analytic.exact_score_fn(SDE), exact_divergence=True)
    bpd, z, _ = fn(jax.random.key(4), x)
    mismatch = SDE.prior_logp(z) - analytic.exact_logp(SDE, z, jnp.ones(64))
    logp = analytic.exact_logp(SDE, x, jnp.full((64,), 1e-5)) + mismatch
    np.testing.assert_allclose(bpd, -logp / np.log(2.0) / 2 + 8.0, atol=1e-3)
