"""The schedule view of the linear SDEs that the fast samplers integrate.

Every SDE of `sde_lib` is linear, `x_t = alpha_t x_0 + sigma_t eps`, so the probability-flow ODE
has the semi-linear form that DPM-Solver integrates exactly in its linear part. Closed forms:

  * VP:     log alpha = -t^2 (b1 - b0)/4 - t b0/2,  sigma = sqrt(1 - alpha^2)
  * sub-VP: same alpha,                             sigma = 1 - alpha^2
  * VE:     alpha = 1,                              sigma = s_min (s_max / s_min)^t

with the half log-SNR `lambda_t = log(alpha_t / sigma_t)`, decreasing in t, and its inverse; the
network views (noise prediction `eps = -sigma_t score`, data prediction
`x0 = (x - sigma_t eps) / alpha_t`); the time grids (`get_time_steps`) and the per-time tables
(`Points`) the solvers step over.

References:
  Lu, Zhou, Bao, Chen, Li, Zhu. DPM-Solver (arXiv:2206.00927), Sec. 3.1 and App. D (time steps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

import sde_lib

# --------------------------------------------------------------------------------------------
# Noise-schedule view of the linear SDEs.
# --------------------------------------------------------------------------------------------


def _vp_log_alpha_sigma(sde, t):
    log_alpha = sde.log_mean_coeff(t)
    # log sigma = log(1 - alpha^2) / 2 with expm1: no cancellation near t = 0.
    return log_alpha, 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


def _subvp_log_alpha_sigma(sde, t):
    log_alpha = sde.log_mean_coeff(t)
    return log_alpha, jnp.log(-jnp.expm1(2.0 * log_alpha))  # sigma = 1 - alpha^2 (Eq. 12).


def _ve_log_alpha_sigma(sde, t):
    log_ratio = np.log(sde.sigma_max / sde.sigma_min)
    return jnp.zeros_like(t), np.log(sde.sigma_min) + t * log_ratio


def _t_from_neg_log_alpha(sde, c):
    """Solves `(b1 - b0) t^2 / 4 + b0 t / 2 = c` (i.e. log alpha_t = -c) for t >= 0.

    The root `4c / (sqrt(b0^2 + 4 (b1 - b0) c) + b0)` avoids the cancellation of the textbook
    formula (the official code uses the same form).
    """
    b0, b1 = sde.beta_min, sde.beta_max
    return 4.0 * c / (jnp.sqrt(b0**2 + 4.0 * (b1 - b0) * c) + b0)


def _vp_inverse_lambda(sde, lam):
    # alpha^2 = sigmoid(2 lambda)  =>  -log alpha = softplus(-2 lambda) / 2.
    return _t_from_neg_log_alpha(sde, 0.5 * jax.nn.softplus(-2.0 * lam))


def _subvp_inverse_lambda(sde, lam):
    # alpha / (1 - alpha^2) = e^lambda  =>  1/alpha - alpha = e^-lambda  =>  -log alpha =
    # asinh(e^-lambda / 2), stable for both signs of lambda.
    return _t_from_neg_log_alpha(sde, jnp.arcsinh(0.5 * jnp.exp(-lam)))


def _ve_inverse_lambda(sde, lam):
    return (-lam - np.log(sde.sigma_min)) / np.log(sde.sigma_max / sde.sigma_min)


# Exact types (subVPSDE is not a VPSDE subclass, but match exactly all the same).
_SCHEDULES = {
    sde_lib.VPSDE: (_vp_log_alpha_sigma, _vp_inverse_lambda),
    sde_lib.subVPSDE: (_subvp_log_alpha_sigma, _subvp_inverse_lambda),
    sde_lib.VESDE: (_ve_log_alpha_sigma, _ve_inverse_lambda),
}


def check_sde(sde):
    """The closed forms of `sde`'s class; raises a ValueError naming the supported SDEs."""
    if type(sde) not in _SCHEDULES:
        valid = sorted(cls.__name__ for cls in _SCHEDULES)
        raise ValueError(f"Fast samplers support the SDEs {valid}, not {type(sde).__name__}")
    return _SCHEDULES[type(sde)]


def log_alpha_sigma(sde, t: Array) -> tuple[Array, Array]:
    """`(log alpha_t, log sigma_t)` of `x_t = alpha_t x_0 + sigma_t eps`, any shape of `t`.

    Closed forms equal to `sde.marginal_prob` (mean coefficient, std), computed in log space.
    """
    return check_sde(sde)[0](sde, jnp.asarray(t))


def alpha_sigma(sde, t: Array) -> tuple[Array, Array]:
    """`(alpha_t, sigma_t)`: mean coefficient and std of p_{0t}, any shape of `t`."""
    log_alpha, log_sigma = log_alpha_sigma(sde, t)
    return jnp.exp(log_alpha), jnp.exp(log_sigma)


def marginal_lambda(sde, t: Array) -> Array:
    """Half log-SNR `lambda_t = log(alpha_t / sigma_t)` (DPM-Solver Sec. 3.1), any shape."""
    log_alpha, log_sigma = log_alpha_sigma(sde, t)
    return log_alpha - log_sigma


def inverse_lambda(sde, lam: Array) -> Array:
    """Closed-form inverse `t(lambda)` of `marginal_lambda`, any shape."""
    return check_sde(sde)[1](sde, jnp.asarray(lam))


def noise_prediction(score: Array, sigma: Array) -> Array:
    """`eps_theta = -sigma_t score` (sigma broadcastable against score)."""
    return -sigma * score


def data_prediction(x: Array, score: Array, alpha: Array, sigma: Array) -> Array:
    """`x0_theta = (x - sigma_t eps_theta) / alpha_t = (x + sigma_t^2 score) / alpha_t`."""
    return (x - sigma * noise_prediction(score, sigma)) / alpha


# --------------------------------------------------------------------------------------------
# Time grids.
# --------------------------------------------------------------------------------------------

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


def get_time_steps(sde, skip_type: str, t_start: Array, t_end: Array, n: int) -> Array:
    """`n + 1` times from `t_start` to `t_end` (`[..., n + 1]` for arrays of endpoints).

    'logSNR' is uniform in lambda (DPM-Solver's choice for low resolution), 'time_uniform'
    uniform in t, 'time_quadratic' uniform in sqrt(t) (DDIM's CIFAR-10 spacing). The endpoints
    are returned exactly (the lambda round trip is not applied to them).
    """
    t_start, t_end = jnp.asarray(t_start)[..., None], jnp.asarray(t_end)[..., None]
    frac = jnp.linspace(0.0, 1.0, n + 1, dtype=t_start.dtype)
    if skip_type == "logSNR":
        lam_s, lam_e = marginal_lambda(sde, t_start), marginal_lambda(sde, t_end)
        ts = inverse_lambda(sde, lam_s + frac * (lam_e - lam_s))
    elif skip_type == "time_uniform":
        ts = t_start + frac * (t_end - t_start)
    elif skip_type == "time_quadratic":
        ts = (jnp.sqrt(t_start) + frac * (jnp.sqrt(t_end) - jnp.sqrt(t_start))) ** 2
    else:
        raise ValueError(f"Unknown skip_type {skip_type!r}; valid skip types: {list(SKIP_TYPES)}")
    return ts.at[..., 0].set(t_start[..., 0]).at[..., -1].set(t_end[..., 0])


class Points(NamedTuple):
    """Times and their schedule values, arrays of one shape (a pytree, indexable in scans)."""

    t: Array
    log_alpha: Array
    log_sigma: Array


def schedule_points(sde, t: Array) -> Points:
    """`Points` of the times `t` (any shape): `t` with `log_alpha_sigma(sde, t)`."""
    return Points(t, *log_alpha_sigma(sde, t))


def point_at(points: Points, i) -> Points:
    """The entries `i` (an index or a slice) of every field of `points`."""
    return jax.tree.map(lambda v: v[i], points)
