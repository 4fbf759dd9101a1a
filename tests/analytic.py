"""Closed-form Gaussian test problems shared by the sampler, likelihood and loss tests.

Data `p_0 = N(mu, s^2 I)`. Every SDE here is linear, so `p_t = N(a(t) mu, a(t)^2 s^2 + std(t)^2)`
with `a(t), std(t)` from `sde.marginal_prob` and the exact score is available in closed form.
"""

import jax.numpy as jnp
import numpy as np

import sde_lib
from sde_lib import batch_bcast

MU, S = 0.5, 0.3

SDES = {
    "vesde": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
    "vpsde": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvpsde": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
}
# Sampling eps of the original code: 1e-5 for VE, 1e-3 for VP and sub-VP.
SAMPLING_EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}


def marginal(sde, t, mu=MU, s=S):
    """Mean coefficient and total variance of p_t: `(a(t) mu, a^2 s^2 + std^2)`, each `[B]`."""
    a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1), t.dtype), t)
    a = a[:, 0]
    return a * mu, a**2 * s**2 + std**2


def exact_score_fn(sde, mu=MU, s=S):
    """Exact score of p_t for Gaussian data."""

    def score_fn(x, t):
        mean, var = marginal(sde, t, mu, s)
        return -(x - batch_bcast(mean, x)) / batch_bcast(var, x)

    return score_fn


def exact_logp(sde, x, t, mu=MU, s=S):
    """log p_t(x) per example for Gaussian data."""
    mean, var = marginal(sde, t, mu, s)
    d = int(np.prod(x.shape[1:]))
    sq = jnp.sum(((x - batch_bcast(mean, x)) ** 2).reshape(x.shape[0], -1), axis=-1)
    return -0.5 * d * jnp.log(2 * np.pi * var) - 0.5 * sq / var
