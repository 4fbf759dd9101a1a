"""Platen's derivative-free Milstein scheme (`sde_solvers.platen_step`, predictor 'platen').

* Additive noise (the reverse SDE of every SDE in sde_lib): the correction term is exactly 0,
  so with the same key the predictor is `euler_maruyama_update`, step for step and bit for bit,
  and a whole PC run returns the same samples.
* Multiplicative noise (geometric Brownian motion, closed-form solution from the Brownian path):
  strong order 1.0 against Euler-Maruyama's 0.5, as fitted slopes of log E|X_n(T) - X(T)|.
* One score evaluation per step (host-callback count).
"""

import dataclasses
import functools

import analytic
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampling
import sde_lib
from samplers import sde_solvers

SDES = {
    **analytic.SDES,
    "tutorialvesde": sde_lib.TutorialVESDE(sigma=25.0, N=1000),
}
EPS = {**analytic.SAMPLING_EPS, "tutorialvesde": 1e-3}


@pytest.mark.parametrize("name", list(SDES))
def test_platen_step_is_euler_maruyama_for_additive_noise(name):
    """Same key, same x, several t: identical (x, x_mean), and the correction alone is 0."""
    sde = SDES[name]
    score_fn = analytic.exact_score_fn(sde)
    x = 0.5 + jax.random.normal(jax.random.key(1), (16, 3))
    for i, t in enumerate((1.0, 0.5, 0.01, EPS[name])):
        vec_t = jnp.full((16,), t)
        key = jax.random.key(10 + i)
        em = sampling.euler_maruyama_update(key, x, vec_t, sde=sde, score_fn=score_fn)
        pl = sde_solvers.platen_update(key, x, vec_t, sde=sde, score_fn=score_fn)
        np.testing.assert_array_equal(pl[0], em[0])
        np.testing.assert_array_equal(pl[1], em[1])
    # The low-level step with the same z equals sampling.euler_maruyama_step (any dt).
    rsde = sde.reverse(score_fn)
    drift = lambda y, t: rsde.sde(y, t)[0]
    g = lambda y, t: sde.sde(y, t)[1]
    z = jax.random.normal(jax.random.key(2), x.shape)
    for dt in (-1e-3, -0.1):
        step = sde_solvers.platen_step(drift, g, x, vec_t, dt, z)
        np.testing.assert_array_equal(
            step[0], sampling.euler_maruyama_step(rsde, x, vec_t, dt, z)[0]
        )


@pytest.mark.parametrize("name", list(SDES))
def test_platen_sampler_equals_euler_maruyama_sampler(name):
    """A whole PC run (N = 100, exact Gaussian score): the same samples and the same NFE."""
    sde = SDES[name]
    sde = dataclasses.replace(sde, N=100)
    runs = {
        p: sampling.get_pc_sampler(
            sde, analytic.exact_score_fn(sde), (256, 2), p, "none", eps=EPS[name]
        )(jax.random.key(3))
        for p in ("euler_maruyama", "platen")
    }
    np.testing.assert_array_equal(runs["platen"][0], runs["euler_maruyama"][0])
    assert runs["platen"][1] == runs["euler_maruyama"][1] == sde.N


def test_platen_nfe_matches_callback_count():
    """One score call per step: the supporting value only re-evaluates g(t), not the score."""
    sde = sde_lib.TutorialVESDE(sigma=25.0, N=20)
    calls = []
    exact = analytic.exact_score_fn(sde)

    def score_fn(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    x, nfe = sampling.get_pc_sampler(sde, score_fn, (8, 2), "platen", "none")(jax.random.key(0))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert nfe == sampling.PREDICTOR_NFE["platen"] * sde.N == len(calls) == 20


# --------------------------------------------------------------------------------------------
# Strong order on geometric Brownian motion dX = mu X dt + s X dW (multiplicative noise).
# --------------------------------------------------------------------------------------------

MU, SIG = 0.5, 0.8
NS = (8, 16, 32, 64, 128)
N_FINE, N_PATHS = 2**10, 2000


@functools.partial(jax.jit, static_argnums=(0,))
def _solve(scheme, x0, dW, T):
    """`len(dW)` steps of `scheme` ('em' or 'platen') on [0, T] from the coarse increments."""
    h = T / dW.shape[0]
    drift = lambda x, t: MU * x
    diffusion = lambda x, t: SIG * x

    def body(x, w):
        if scheme == "em":
            return x + drift(x, None) * h + diffusion(x, None) * w, None
        z = w / jnp.sqrt(h)
        return sde_solvers.platen_step(drift, diffusion, x, jnp.zeros(x.shape[0]), h, z)[0], None

    return jax.lax.scan(body, x0, dW)[0]


def test_platen_strong_order_one_on_gbm():
    """Fitted strong orders over 8..128 steps against the exact X(T) = x0 exp((mu - s^2/2) T +
    s W(T)) on 2000 paths (float64). Measured: Platen 0.975, EM 0.497; Platen's error is 2.9x below
    EM's at 8 steps and 10.6x at 128."""
    T = 1.0
    with jax.enable_x64():
        dw = jax.random.normal(jax.random.key(4), (N_FINE, N_PATHS, 1)) * np.sqrt(T / N_FINE)
        x0 = jnp.ones((N_PATHS, 1))
        exact = x0 * jnp.exp((MU - 0.5 * SIG**2) * T + SIG * dw.sum(0))
        errs = {"em": [], "platen": []}
        for n in NS:
            dW = dw.reshape(n, N_FINE // n, N_PATHS, 1).sum(1)
            for scheme in errs:
                errs[scheme].append(float(jnp.mean(jnp.abs(_solve(scheme, x0, dW, T) - exact))))
    hs = T / np.asarray(NS)
    order = {k: np.polyfit(np.log(hs), np.log(v), 1)[0] for k, v in errs.items()}
    assert abs(order["platen"] - 1.0) < 0.15, (order, errs)
    assert abs(order["em"] - 0.5) < 0.15, (order, errs)
    assert all(p < e for p, e in zip(errs["platen"], errs["em"])), errs
