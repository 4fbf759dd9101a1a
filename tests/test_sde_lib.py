"""Closed-form checks of sde_lib: marginals, reverse drifts, discretizations, priors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import sde_lib

ALL_SDES = [
    sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
    sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    sde_lib.TutorialVESDE(sigma=25.0, N=1000),
]
IDS = ["ve", "vp", "subvp", "tutorial_ve"]


def _coeffs(sde, t):
    """Linear drift coefficient b(t) (f = b(t) x) and g(t)^2 at scalar time t, in float64."""
    x = jnp.ones((1, 1), jnp.float64)
    drift, g = sde.sde(x, jnp.full((1,), t, jnp.float64))
    return float(drift[0, 0]), float(g[0]) ** 2


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_matches_moment_odes(sde):
    """mean' = b m and var' = 2 b var + g^2 (var(0) = 0), integrated numerically in float64."""
    with jax.enable_x64():

        def rhs(t, y):
            b, g2 = _coeffs(sde, t)
            return [b * y[0], 2 * b * y[1] + g2]

        ts = np.array([1e-3, 0.1, 0.3, 0.5, 0.8, 1.0])
        sol = integrate.solve_ivp(rhs, (0.0, 1.0), [1.0, 0.0], t_eval=ts, rtol=1e-11, atol=1e-13)
        mean, std = sde.marginal_prob(jnp.ones((len(ts), 1), jnp.float64), jnp.asarray(ts))
        if isinstance(sde, sde_lib.VESDE):
            # VE starts at sigma_min, not 0: var(t) = sigma(t)^2 - sigma_min^2 + sigma_min^2.
            expected_var = sol.y[1] + sde.sigma_min**2
        else:
            expected_var = sol.y[1]
        np.testing.assert_allclose(np.asarray(mean[:, 0]), sol.y[0], rtol=1e-8)
        np.testing.assert_allclose(np.asarray(std) ** 2, expected_var, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_reverse_drifts(sde, key):
    """Reverse SDE drift f - g^2 s and diffusion g; probability-flow drift f - g^2 s / 2, no noise."""
    x = jax.random.normal(key, (3, 4, 4, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    score_fn = lambda x, t: jnp.sin(x) * t[:, None, None, None]
    f, g = sde.sde(x, t)
    s = score_fn(x, t)
    g2 = (g**2)[:, None, None, None]
    drift, diffusion = sde.reverse(score_fn).sde(x, t)
    np.testing.assert_allclose(drift, f - g2 * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffusion, g, rtol=1e-6)
    drift, diffusion = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift, f - 0.5 * g2 * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(diffusion, jnp.zeros_like(g))
    # The discrete reverse step follows the same rule on (f_i, G_i).
    fd, Gd = sde.discretize(x, t)
    rev_f, rev_G = sde.reverse(score_fn, probability_flow=True).discretize(x, t)
    np.testing.assert_allclose(
        rev_f, fd - 0.5 * (Gd**2)[:, None, None, None] * s, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(rev_G, jnp.zeros_like(Gd))


@pytest.mark.parametrize(
    "cls", [sde_lib.VESDE, sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.TutorialVESDE]
)
def test_discretize_converges_to_sde_dt(cls):
    """f_i -> f dt and G_i -> g sqrt(dt) as N grows (dt = 1/N); the error falls with N."""
    with jax.enable_x64():
        x = jnp.full((3, 2), 0.7, jnp.float64)
        t = jnp.array([0.25, 0.5, 0.75], jnp.float64)
        errors = []
        for n in (100, 1000, 10000):
            sde = cls(N=n)
            f, G = sde.discretize(x, t)
            drift, g = sde.sde(x, t)
            err_g = np.max(np.abs(np.asarray(G) / np.asarray(g * np.sqrt(1.0 / n)) - 1))
            if isinstance(sde, (sde_lib.VESDE, sde_lib.TutorialVESDE)):
                err_f = float(np.max(np.abs(f)))  # both are exactly zero
            else:
                err_f = np.max(np.abs(np.asarray(f) / np.asarray(drift / n) - 1))
            errors.append(max(err_g, err_f))
        if cls is sde_lib.subVPSDE:
            # sub-VP uses the generic Euler-Maruyama discretization: equal by construction.
            assert max(errors) < 1e-12, errors
        else:
            assert errors[-1] < 2e-3, errors
            assert errors[0] > errors[1] > errors[2], errors


def test_vp_discretize_reproduces_ddpm_betas():
    """G_i^2 = beta_i and f_i = (sqrt(1 - beta_i) - 1) x at t_i = i / (N - 1)."""
    with jax.enable_x64():
        sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
        betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
        np.testing.assert_allclose(sde.discrete_betas, betas, rtol=1e-12)
        np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
        i = np.array([0, 1, 500, 999])
        t = jnp.asarray((i + 0.5) / 999)  # any t in [i/(N-1), (i+1)/(N-1)) maps to i
        x = jnp.ones((4, 1), jnp.float64)
        f, G = sde.discretize(x, t)
        np.testing.assert_allclose(np.asarray(G) ** 2, betas[np.minimum(i, 999)], rtol=1e-12)
        np.testing.assert_allclose(f[:, 0], np.sqrt(1 - betas[i]) - 1, rtol=1e-12)


def test_ve_discretize_reproduces_smld_sigmas():
    """Geometric sigmas; G_i^2 = sigma_i^2 - sigma_{i-1}^2 with sigma_{-1} = 0."""
    with jax.enable_x64():
        sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
        sigmas = 0.01 * (50.0 / 0.01) ** (np.arange(10) / 9)
        np.testing.assert_allclose(sde.discrete_sigmas, sigmas, rtol=1e-12)
        i = np.array([0, 1, 5, 9])
        t = jnp.asarray(i / 9.0 + 1e-9)
        _, G = sde.discretize(jnp.ones((4, 1), jnp.float64), t)
        prev = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
        np.testing.assert_allclose(np.asarray(G) ** 2, sigmas[i] ** 2 - prev**2, rtol=1e-10)


def test_timestep_floors_like_the_original():
    """The discrete index is int(t (N - 1)), a floor: t just below 1 maps to N - 2."""
    sde = sde_lib.VPSDE(N=10)
    t = jnp.array([1.0, 0.999, 0.0, 0.5])
    np.testing.assert_array_equal(sde_lib.timestep_index(t, sde.N, sde.T), [9, 8, 0, 4])


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_prior_logp_matches_scipy_norm(sde, key):
    z = sde.prior_sampling(key, (5, 3, 4, 2))
    scale = {sde_lib.VESDE: "sigma_max", sde_lib.TutorialVESDE: "prior_std"}.get(type(sde))
    scale = getattr(sde, scale) if scale else 1.0
    expected = jax.scipy.stats.norm.logpdf(z, 0.0, scale).reshape(5, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
    np.testing.assert_allclose(jnp.std(z), scale, rtol=0.15)


def test_subvp_std_is_variance_of_vp_without_sqrt():
    """sub-VP std = 1 - alpha^2 = VP var (paper Eq. 12 / App. B: no square root)."""
    t = jnp.linspace(0.01, 1.0, 7)
    x = jnp.ones((7, 1))
    _, std_vp = sde_lib.VPSDE().marginal_prob(x, t)
    _, std_sub = sde_lib.subVPSDE().marginal_prob(x, t)
    np.testing.assert_allclose(std_sub, std_vp**2, rtol=1e-5)


def test_get_sde_and_errors():
    assert sde_lib.get_sde("VPSDE", N=10) == sde_lib.VPSDE(N=10)
    valid = r"valid names: \['subvpsde', 'tutorialvesde', 'vesde', 'vpsde'\]"
    with pytest.raises(ValueError, match=valid):
        sde_lib.get_sde("vesd")
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(3,\).*\(2,\)"):
        sde_lib.VPSDE().marginal_prob(jnp.ones((3, 2)), jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"per-example vector has shape \(4,\)"):
        sde_lib.batch_bcast(jnp.ones(4), jnp.ones((3, 2)))


def test_sdes_are_hashable_static_args():
    """Frozen dataclasses can be jit static arguments; the discrete tables stay NumPy."""
    sde = sde_lib.VPSDE(N=100)
    assert hash(sde) == hash(sde_lib.VPSDE(N=100))
    assert isinstance(sde.discrete_betas, np.ndarray)
    f = jax.jit(lambda s, x: s.marginal_prob(x, jnp.ones(x.shape[:1]))[1], static_argnums=0)
    np.testing.assert_allclose(
        f(sde, jnp.ones((2, 2))), sde.marginal_prob(jnp.ones((2, 2)), jnp.ones(2))[1]
    )


# --------------------------------------------------------------------------------------------
# The score-SDE tutorial's VE SDE, dx = sigma^t dw.


@pytest.mark.parametrize("sigma", [25.0, 50.0])
def test_tutorial_ve_closed_forms(sigma):
    """g(t) = sigma^t, std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)), mean x, prior std std(1)."""
    with jax.enable_x64():
        sde = sde_lib.get_sde("tutorialvesde", sigma=sigma, N=500)
        t = jnp.asarray([1e-5, 1e-3, 0.1, 0.5, 1.0])
        x = jnp.full((5, 2), 0.3, jnp.float64)
        drift, g = sde.sde(x, t)
        np.testing.assert_array_equal(drift, 0.0)
        np.testing.assert_allclose(g, sigma ** np.asarray(t), rtol=1e-12)
        mean, std = sde.marginal_prob(x, t)
        np.testing.assert_array_equal(mean, x)
        expected = np.sqrt((sigma ** (2 * np.asarray(t)) - 1) / (2 * np.log(sigma)))
        np.testing.assert_allclose(std, expected, rtol=1e-9)  # expm1 keeps small t exact
        assert sde.prior_std == pytest.approx(expected[-1], rel=1e-12)
        # The tutorial's prior std: 9.85 (sigma 25), 17.87 (sigma 50).
        assert sde.prior_std == pytest.approx({25.0: 9.8454, 50.0: 17.872}[sigma], rel=1e-4)


def test_tutorial_ve_discretize_is_the_exact_transition():
    """G^2 = std(t)^2 - std(t - 1/N)^2, with t - 1/N clipped at 0 on the first step."""
    with jax.enable_x64():
        sde = sde_lib.TutorialVESDE(sigma=25.0, N=10)
        t = jnp.asarray([0.05, 0.1, 0.55, 1.0])
        x = jnp.ones((4, 3), jnp.float64)
        f, G = sde.discretize(x, t)
        var = lambda s: (25.0 ** (2 * s) - 1) / (2 * np.log(25.0))
        prev = np.maximum(np.asarray(t) - 0.1, 0.0)
        np.testing.assert_allclose(np.asarray(G) ** 2, var(np.asarray(t)) - var(prev), rtol=1e-10)
        np.testing.assert_array_equal(f, 0.0)


def test_tutorial_ve_refuses_sigma_at_most_one():
    with pytest.raises(ValueError, match="sigma > 1"):
        sde_lib.TutorialVESDE(sigma=1.0)
