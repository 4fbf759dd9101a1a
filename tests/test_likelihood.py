"""Bits/dim through the probability-flow ODE against exact Gaussian log-densities.

Data p_0 = N(MU, Sigma) with a full (correlated) 4x4 covariance, so that the Jacobian of the
flow is not diagonal and Hutchinson's estimator is genuinely stochastic (for a diagonal
Jacobian the Rademacher estimate is exact). Every SDE here is linear:
p_t = N(a MU, a^2 Sigma + std^2 I), with a closed-form score and density.

The flow integrated from eps gives `log p_eps(x) = log p_T(z) + delta`, and the code reports
`log prior(z) + delta`; the expected value is therefore `log p_eps(x) + log prior(z) - log p_T(z)`
(the prior mismatch is up to ~0.01 nats for VP, whose p_T keeps a mean of MU e^-5).
Tolerances: exact divergence 1e-3 bpd (float32 solve at rtol = atol = 1e-5; measured < 2e-4);
Hutchinson: the batch-mean error within 4 standard errors + 1e-3 of zero.
"""

import analytic
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import likelihood
import sampling

EPS = 1e-5
D = 4
_rng = np.random.default_rng(0)
Q, _ = np.linalg.qr(_rng.normal(size=(D, D)))
LAMBDA = np.array([0.05, 0.1, 0.2, 0.4])
MU = np.array([0.5, -0.2, 0.1, 0.3])


def _coeffs(sde, t):
    a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return a[:, 0], std


def correlated_score_fn(sde):
    """Exact score of p_t: -Q diag(1 / (a^2 lambda + std^2)) Q^T (x - a MU)."""

    def score_fn(x, t):
        a, std = _coeffs(sde, t)
        inv = 1.0 / (a[:, None] ** 2 * LAMBDA + std[:, None] ** 2)  # [B, D]
        r = (x - a[:, None] * MU) @ Q
        return (-(r * inv)) @ Q.T

    return score_fn


def correlated_logp(sde, x, t):
    a, std = _coeffs(sde, t)
    var = a[:, None] ** 2 * LAMBDA + std[:, None] ** 2
    r = (x - a[:, None] * MU) @ Q
    return -0.5 * jnp.sum(jnp.log(2 * np.pi * var) + r**2 / var, axis=-1)


def _expected_bpd(sde, x, z, offset):
    prior_mismatch = sde.prior_logp(z) - correlated_logp(sde, z, jnp.ones(x.shape[0]))
    logp = correlated_logp(sde, x, jnp.full((x.shape[0],), EPS)) + prior_mismatch
    return -logp / np.log(2.0) / D + offset


def _data(key, n):
    return MU + (jax.random.normal(key, (n, D)) * np.sqrt(LAMBDA)) @ Q.T


@pytest.mark.parametrize("name", list(analytic.SDES))
def test_exact_divergence_bpd_matches_gaussian_density(name):
    sde = analytic.SDES[name]
    x = _data(jax.random.key(0), 64)
    fn = likelihood.get_likelihood_fn(sde, correlated_score_fn(sde), exact_divergence=True)
    bpd, z, nfe = fn(jax.random.key(1), x)
    np.testing.assert_allclose(bpd, _expected_bpd(sde, x, z, offset=8.0), atol=1e-3)
    assert z.shape == x.shape and int(nfe) > 10


@pytest.mark.parametrize("hutchinson_type", ["Rademacher", "Gaussian"])
@pytest.mark.parametrize("name", list(analytic.SDES))
def test_hutchinson_bpd_is_unbiased(name, hutchinson_type):
    sde = analytic.SDES[name]
    x = _data(jax.random.key(2), 512)
    fn = likelihood.get_likelihood_fn(
        sde,
        correlated_score_fn(sde),
        hutchinson_type=hutchinson_type,
        inverse_scaler=lambda v: (v + 1.0) / 2.0,  # centred data: offset 7
    )
    bpd, z, _ = fn(jax.random.key(3), x)
    err = np.asarray(bpd - _expected_bpd(sde, x, z, offset=7.0))
    se = err.std() / np.sqrt(len(err))
    assert err.std() > 1e-3  # the estimator really is stochastic
    assert abs(err.mean()) < 4 * se + 1e-3, (err.mean(), se)


def test_encode_decode_round_trip():
    """likelihood's latent z, decoded by the ODE sampler from T to eps, gives x back."""
    sde = analytic.SDES["vpsde"]
    score_fn = analytic.exact_score_fn(sde)
    x = analytic.MU + analytic.S * jax.random.normal(jax.random.key(4), (8, 2, 2, 1))
    _, z, _ = likelihood.get_likelihood_fn(sde, score_fn, exact_divergence=True)(
        jax.random.key(0), x
    )
    decoded, _ = sampling.get_ode_sampler(sde, score_fn, x.shape, eps=EPS)(jax.random.key(0), z)
    np.testing.assert_allclose(decoded, x, atol=1e-3)


def test_bpd_offset_follows_the_inverse_scaler():
    """The offset is 7 - inverse_scaler(-1): 8 for identity, 7 for the centring scaler."""
    sde = analytic.SDES["vpsde"]
    x = jax.random.uniform(jax.random.key(5), (4, 2, 2, 1))
    score_fn = analytic.exact_score_fn(sde)
    b_id, _, _ = likelihood.get_likelihood_fn(sde, score_fn, exact_divergence=True)(
        jax.random.key(0), x
    )
    b_c, _, _ = likelihood.get_likelihood_fn(
        sde, score_fn, exact_divergence=True, inverse_scaler=lambda v: (v + 1) / 2
    )(jax.random.key(0), x)
    np.testing.assert_allclose(b_id - b_c, 1.0, atol=1e-6)


def test_bad_hutchinson_type():
    with pytest.raises(ValueError, match=r"valid types: \['Rademacher', 'Gaussian'\]"):
        likelihood.get_likelihood_fn(analytic.SDES["vpsde"], lambda x, t: x, hutchinson_type="rad")
