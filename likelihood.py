"""Exact likelihood (bits/dim) through the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2).

`log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt`, with the flow drift
`f~ = f - g^2 s / 2`, integrated on device with diffrax from `eps` to `T`. The divergence is the
Hutchinson estimate `E[e^T J e]` (Rademacher or Gaussian `e`, drawn once per solve, as the
original), or the exact trace of the Jacobian for small data.

Bits per dimension as the original code:
`bpd = -(prior_logp(z) + delta_logp) / ln 2 / D + 7 - inverse_scaler(-1)`,
which is `+8` for data in [0, 1] and `+7` for data centred to [-1, 1] (the 256-bin offset plus the
log-Jacobian of the scaler). The data must already be uniformly dequantised, `(255 x + U) / 256`
(done in datasets.py, not here); otherwise the result is over-optimistic (score_sde#24).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

import sampling
from models import utils as mutils

HUTCHINSON_TYPES = ("Rademacher", "Gaussian")


def get_div_fn(fn: Callable[[Array, Array], Array]):
    """Hutchinson divergence `e^T (d fn / dx) e` per example, one Jacobian-vector product."""

    def div_fn(x: Array, t: Array, e: Array) -> Array:
        _, jvp = jax.jvp(lambda y: fn(y, t), (x,), (e,))
        return jnp.sum((jvp * e).reshape(x.shape[0], -1), axis=-1)

    return div_fn


def get_exact_div_fn(fn: Callable[[Array, Array], Array]):
    """Exact divergence `tr(d fn / dx)` per example: D Jacobian-vector products (small data)."""

    def div_fn(x: Array, t: Array, e: Array | None = None) -> Array:
        del e
        b, d = x.shape[0], int(np.prod(x.shape[1:]))

        def diag_entry(i):
            basis = jnp.zeros((b, d), x.dtype).at[:, i].set(1.0).reshape(x.shape)
            _, jvp = jax.jvp(lambda y: fn(y, t), (x,), (basis,))
            return jvp.reshape(b, d)[:, i]

        return jnp.sum(jax.lax.map(diag_entry, jnp.arange(d)), axis=0)

    return div_fn


def _noise(key: Array, shape, hutchinson_type: str, dtype) -> Array:
    if hutchinson_type == "Gaussian":
        return jax.random.normal(key, shape, dtype)
    return jax.random.rademacher(key, shape, dtype)


def get_likelihood_fn(
    sde,
    score_fn: Callable[[Array, Array], Array],
    *,
    hutchinson_type: str = "Rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    inverse_scaler: Callable[[Array], Array] | None = None,
    exact_divergence: bool = False,
    method: str = "RK45",
    progress: bool = False,
):
    """Creates `likelihood_fn(key, x) -> (bpd [B], z, nfe)` (original `get_likelihood_fn`).

    Args:
      sde: forward SDE. score_fn: `score_fn(x, t)`, `t` of shape `[B]`.
      hutchinson_type: "Rademacher" or "Gaussian" probe vectors (ignored if exact_divergence).
      rtol, atol: tolerances of the adaptive solver (default Dopri5, scipy's RK45).
      eps: start time of the integration (1e-5 in the paper for every SDE).
      inverse_scaler: maps model space to data space; None means identity (data in [0, 1]).
      exact_divergence: use the exact Jacobian trace (cost D JVPs per drift evaluation).
      method: a name in `sampling.ODE_SOLVERS`.
      progress: show a progress bar of the solve (`sampling.solve_ode`).

    Returns:
      `likelihood_fn(key, x)`: bits/dim `[B]`, the latent `z = x(T)`, and the number of drift
      evaluations (each also evaluates the divergence).
    """
    if hutchinson_type not in HUTCHINSON_TYPES:
        raise ValueError(
            f"Unknown hutchinson_type {hutchinson_type!r}; valid types: {list(HUTCHINSON_TYPES)}"
        )
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift_fn(x, t):
        return rsde.sde(x, t)[0]

    div_fn = get_exact_div_fn(drift_fn) if exact_divergence else get_div_fn(drift_fn)
    # Offset of the original code: log2 |d inverse_scaler / dx| + 8 == 7 - inverse_scaler(-1)
    # for the affine scalers used here.
    scaler = inverse_scaler or (lambda v: v)
    offset = 7.0 - float(np.asarray(scaler(np.float64(-1.0))))  # NumPy: safe under tracing

    @jax.jit
    def likelihood_fn(key, x):
        e = _noise(key, x.shape, hutchinson_type, x.dtype)
        b = x.shape[0]

        def ode_func(t, state):
            y, _ = state
            vec_t = jnp.full((b,), t, y.dtype)
            return drift_fn(y, vec_t), div_fn(y, vec_t, e)

        init = (x, jnp.zeros((b,), x.dtype))
        (z, delta_logp), nfe = sampling.solve_ode(
            ode_func, init, eps, sde.T, rtol=rtol, atol=atol, method=method, progress=progress
        )
        prior_logp = sde.prior_logp(z)
        d = np.prod(x.shape[1:])
        bpd = -(prior_logp + delta_logp) / np.log(2.0) / d + offset
        return bpd, z, nfe

    return likelihood_fn


def get_model_likelihood_fn(sde, model, inverse_scaler, *, hutchinson_type="Rademacher", eps=1e-5,
                            progress=False):  # fmt: skip
    """`bpd_fn(key, params, x) -> (bpd, z, nfe)` for a Flax score network.

    As the original, the network is queried as a continuous-time model (`continuous=True`).
    """

    def bpd_fn(key, params, x):
        score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=True)
        fn = get_likelihood_fn(
            sde, score_fn, hutchinson_type=hutchinson_type, eps=eps, inverse_scaler=inverse_scaler,
            progress=progress,
        )  # fmt: skip
        return fn(key, x)

    return jax.jit(bpd_fn)
