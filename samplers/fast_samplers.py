"""Fast probability-flow ODE samplers: DPM-Solver(++), DDIM and EDM's Heun sampler.

Pure math on arrays and a `score_fn(x, t)` (`t` of shape `[B]`); every step loop runs on device
(`lax.scan` over precomputed time grids, so 1000 steps do not unroll).

Every SDE of `sde_lib` is linear, `x_t = alpha_t x_0 + sigma_t eps`, so the probability-flow ODE
has the semi-linear form that DPM-Solver integrates exactly in its linear part. The schedule view
of each SDE (`schedules.log_alpha_sigma`, `schedules.marginal_lambda`, `schedules.inverse_lambda`) is closed form:

  * VP:     log alpha = -t^2 (b1 - b0)/4 - t b0/2,  sigma = sqrt(1 - alpha^2)
  * sub-VP: same alpha,                             sigma = 1 - alpha^2
  * VE:     alpha = 1,                              sigma = s_min (s_max / s_min)^t

with the half log-SNR `lambda_t = log(alpha_t / sigma_t)`, decreasing in t. The network view:
noise prediction `eps = -sigma_t score` and data prediction `x0 = (x - sigma_t eps) / alpha_t`.

References:
  Lu, Zhou, Bao, Chen, Li, Zhu. DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
    Sampling in Around 10 Steps. NeurIPS 2022 (arXiv:2206.00927). Eqs. (3.7) DPM-Solver-1,
    Alg. 1 DPM-Solver-2, Alg. 2 DPM-Solver-3; Sec. 3.4 / App. C "DPM-Solver-fast" schedule.
  Lu, Zhou, Bao, Chen, Li, Zhu. DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models (arXiv:2211.01095). Alg. 1 (2S), Alg. 2 (2M).
  Song, Meng, Ermon. Denoising Diffusion Implicit Models. ICLR 2021 (arXiv:2010.02502), Eq. (12)
    with sigma = 0.
  Karras, Aittala, Aila, Laine. Elucidating the Design Space of Diffusion-Based Generative Models.
    NeurIPS 2022 (arXiv:2206.00364). Alg. 1 (deterministic Heun), Eq. (5) time steps.
Official code consulted for the order schedules: LuChengTHU/dpm-solver `dpm_solver_pytorch.py`.

Departures from the official code, each noted at its line: the third-order multistep update
doubles the official second difference (the official update is only locally O(h^3), see
`multistep_update`); `denoise` costs one extra NFE, as the official `denoise_to_zero`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from samplers import common, schedules
from sde_lib import batch_bcast

ScoreFn = Callable[[Array, Array], Array]

# --------------------------------------------------------------------------------------------
# DPM-Solver updates. One code path serves both parameterisations: with `hh = h` (noise
# prediction, 'dpmsolver') or `hh = -h` (data prediction, 'dpmsolver++'), a ratio `a` and a
# coefficient `c`, the official formulas all read `x_t = a x - c expm1(hh) m_s - ...`:
#   'dpmsolver':   a = alpha_t / alpha_s, c = sigma_t, m = eps_theta
#   'dpmsolver++': a = sigma_t / sigma_s, c = alpha_t, m = x0_theta
# (e.g. phi_2 = expm1(-h)/h + 1 of DPM-Solver++ is -(expm1(hh)/hh - 1) at hh = -h).
# --------------------------------------------------------------------------------------------

ALGORITHMS = ("dpmsolver", "dpmsolver++")


def dynamic_thresholding(x0: Array, ratio: float = 0.995, max_val: float = 1.0) -> Array:
    """Dynamic thresholding of a data prediction (Saharia et al. 2022, Imagen, Sec. 2.3).

    Per example, `s = max(quantile(|x0|, ratio), max_val)`; `x0` is clipped to `[-s, s]` and
    divided by `s`, so it lies in `[-1, 1]` (with `max_val = 1`, images already in range are
    unchanged). As the official DPM-Solver code's `dynamic_thresholding_fn`.
    """
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, ratio, axis=1), max_val)
    s = batch_bcast(s.astype(x0.dtype), x0)
    return jnp.clip(x0, -s, s) / s


class Parameterization(NamedTuple):
    """The prediction type: model evaluation and the ratio / coefficient / signed step.

    `Parameterization(score_fn, data=False)` is 'dpmsolver' (noise prediction), `data=True`
    'dpmsolver++' (data prediction); `singlestep_update` / `multistep_update` take it.
    """

    score_fn: ScoreFn
    data: bool  # True for 'dpmsolver++'.
    correct_x0: Callable[[Array], Array] | None = None  # e.g. dynamic thresholding.

    def model(self, x: Array, p: schedules.Points) -> Array:
        score = self.score_fn(x, jnp.full((x.shape[0],), p.t, x.dtype))
        alpha, sigma = jnp.exp(p.log_alpha), jnp.exp(p.log_sigma)
        if self.data:
            x0 = schedules.data_prediction(x, score, alpha, sigma)
            return x0 if self.correct_x0 is None else self.correct_x0(x0)
        return schedules.noise_prediction(score, sigma)

    def hh(self, p_s: schedules.Points, p_t: schedules.Points) -> Array:
        h = (p_t.log_alpha - p_t.log_sigma) - (p_s.log_alpha - p_s.log_sigma)
        return -h if self.data else h

    def ratio(self, p_s: schedules.Points, p_t: schedules.Points) -> Array:
        if self.data:
            return jnp.exp(p_t.log_sigma - p_s.log_sigma)
        return jnp.exp(p_t.log_alpha - p_s.log_alpha)

    def coef(self, p_t: schedules.Points) -> Array:
        return jnp.exp(p_t.log_alpha if self.data else p_t.log_sigma)


def _phi2(z: Array) -> Array:
    """`expm1(z)/z - 1`, the second-order coefficient of DPM-Solver (Eq. 3.8 integrals)."""
    return jnp.expm1(z) / z - 1.0


def _first_update(param: Parameterization, x, m_s, p_s, p_t):
    """DPM-Solver-1 = DDIM (DPM-Solver Eq. 3.7; DPM-Solver++ Eq. 5 at order 1)."""
    hh = param.hh(p_s, p_t)
    return param.ratio(p_s, p_t) * x - param.coef(p_t) * jnp.expm1(hh) * m_s


def singlestep_update(order: int, param: Parameterization, x, ps: schedules.Points):
    """One singlestep DPM-Solver-`order` step over `ps` = (s, [s1, [s2,]] t), `order` NFE.

    DPM-Solver Alg. 1 (order 2, r1 = 1/2 on the logSNR grid) and Alg. 2 (order 3, r1 = 1/3,
    r2 = 2/3), 'dpmsolver' solver type; with data prediction DPM-Solver++(2S/3S).
    The intermediate times come from the grid, so r1, r2 are read off their lambdas, as in the
    official code (they are 1/2, 1/3, 2/3 exactly for skip_type='logSNR').
    """
    p_s, p_t = schedules.point_at(ps, 0), schedules.point_at(ps, -1)
    m_s = param.model(x, p_s)
    x_t = _first_update(param, x, m_s, p_s, p_t)
    if order == 1:
        return x_t
    hh = param.hh(p_s, p_t)
    p_1 = schedules.point_at(ps, 1)
    r1 = param.hh(p_s, p_1) / hh
    # Intermediate point s1 by a first-order step, then the model there.
    m_1 = param.model(_first_update(param, x, m_s, p_s, p_1), p_1)
    if order == 2:
        return x_t - (0.5 / r1) * param.coef(p_t) * jnp.expm1(hh) * (m_1 - m_s)
    p_2 = schedules.point_at(ps, 2)
    r2 = param.hh(p_s, p_2) / hh
    # Second intermediate point s2 uses the first difference (Alg. 2, line 5).
    x_2 = _first_update(param, x, m_s, p_s, p_2)
    x_2 = x_2 - (r2 / r1) * param.coef(p_2) * _phi2(r2 * hh) * (m_1 - m_s)
    m_2 = param.model(x_2, p_2)
    return x_t - (1.0 / r2) * param.coef(p_t) * _phi2(hh) * (m_2 - m_s)


def multistep_update(
    order: int, param: Parameterization, x, ms, ps: tuple[schedules.Points, ...], p_t
):
    """Multistep DPM-Solver-`order` from `ps[0]` to `p_t`, no model evaluation.

    `ms`, `ps`: the last model outputs and their points, newest first. Order 2 is DPM-Solver++
    Alg. 2 (2M) for data prediction; order 3 is the official third-order multistep update with
    its second difference doubled (see the departure note at `d2`).
    The exact step is `x_t = a x - c [(e^hh - 1) m + (e^hh - 1 - hh) m' + (e^hh - 1 - hh -
    hh^2/2) m'']` (derivatives in signed lambda), so `d1 ~ hh m'` and `d2 ~ hh^2 m''`.
    """
    x_t = _first_update(param, x, ms[0], ps[0], p_t)
    if order == 1:
        return x_t
    hh = param.hh(ps[0], p_t)
    r0 = param.hh(ps[1], ps[0]) / hh
    d1_0 = (ms[0] - ms[1]) / r0
    if order == 2:
        return x_t - 0.5 * param.coef(p_t) * jnp.expm1(hh) * d1_0
    r1 = param.hh(ps[2], ps[1]) / hh
    d1_1 = (ms[1] - ms[2]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    # Departure: the official code (and diffusers) use `(d1_0 - d1_1) / (r0 + r1)`, which is
    # hh^2 m'' / 2, half of what phi3 = (e^hh - 1 - hh - hh^2/2) / hh^2 multiplies: that update
    # has local error O(h^3) (globally 2nd order); this one O(h^4) (measured in the tests).
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    phi2 = _phi2(hh)
    phi3 = phi2 / hh - 0.5
    return x_t - param.coef(p_t) * (phi2 * d1 + phi3 * d2)


# --------------------------------------------------------------------------------------------
# Order schedules.
# --------------------------------------------------------------------------------------------

METHODS = ("singlestep", "multistep", "singlestep_fixed")
# Official docstring: lower orders at the last steps only when steps < 15 (its current code
# says 10; we follow the documented 15).
LOWER_ORDER_FINAL_BELOW = 15


def singlestep_orders(steps: int, order: int) -> list[int]:
    """DPM-Solver-fast: orders of the segments, summing to `steps` NFE (paper App. C)."""
    if order == 3:
        k = steps // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
        return [3] * (k - len(tail)) + tail
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    return [1] * steps


def multistep_orders(steps: int, order: int, lower_order_final: bool = True) -> np.ndarray:
    """Order of step i = 1..steps: warm-up `min(i, order)`, then `order` (lower at the end)."""
    i = np.arange(1, steps + 1)
    orders = np.minimum(i, order)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        orders = np.minimum(orders, steps + 1 - i)
    return orders


def _validate(order, method, algorithm, skip_type, steps):
    if order not in (1, 2, 3):
        raise ValueError(f"order must be one of [1, 2, 3], got {order!r}")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods: {list(METHODS)}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algorithm!r}; valid algorithms: {list(ALGORITHMS)}")
    if skip_type not in schedules.SKIP_TYPES:
        raise ValueError(
            f"Unknown skip_type {skip_type!r}; valid skip types: {list(schedules.SKIP_TYPES)}"
        )
    if int(steps) < 1 or (method != "singlestep" and int(steps) < order):
        raise ValueError(f"steps={steps} is too small for method {method!r} with order {order}")


def _segments(sde, method, order, steps, skip_type, t_T, t_0):
    """Singlestep plan: a list of `(order_k, inner_times [n_k, order_k + 1])`, grouped runs."""
    if method == "singlestep_fixed":
        orders = [order] * (steps // order)
    else:
        orders = singlestep_orders(steps, order)
    if skip_type == "logSNR" or method == "singlestep_fixed":
        outer = schedules.get_time_steps(sde, skip_type, t_T, t_0, len(orders))
    else:
        # Official: the outer points are the NFE grid's points at the cumulative orders.
        outer = schedules.get_time_steps(sde, skip_type, t_T, t_0, steps)[np.cumsum([0] + orders)]
    plan, start = [], 0
    for k in sorted(set(orders), reverse=True):  # orders are non-increasing: runs of 3, 2, 1.
        n = orders.count(k)
        inner = schedules.get_time_steps(
            sde, skip_type, outer[start : start + n], outer[start + 1 :][:n], k
        )
        plan.append((k, inner))
        start += n
    return plan


# --------------------------------------------------------------------------------------------
# Samplers.
# --------------------------------------------------------------------------------------------


def _run_singlestep(param, x, plan, sde, sharding):
    for k, inner in plan:  # At most three runs (orders 3, 2, 1): a static loop of scans.

        def body(x, t_inner, k=k):
            return common.constrain(
                singlestep_update(k, param, x, schedules.schedule_points(sde, t_inner)), sharding
            ), None

        x, _ = jax.lax.scan(body, x, inner)
    return x


def _run_multistep(param, x, grid: schedules.Points, orders: np.ndarray, order: int, sharding):
    """Multistep loop: one scan over steps 1..steps-1 (update, then evaluate), a last update."""
    steps = len(orders)
    branches = [functools.partial(multistep_update, k, param) for k in range(1, order + 1)]

    def history(i):
        return tuple(schedules.point_at(grid, jnp.maximum(i - j, 0)) for j in range(1, order + 1))

    def body(carry, xs):
        x, ms = carry
        i, k = xs
        x = jax.lax.switch(k - 1, branches, x, ms, history(i), schedules.point_at(grid, i))
        x = common.constrain(x, sharding)
        ms = (param.model(x, schedules.point_at(grid, i)),) + ms[:-1]  # newest first
        return (x, ms), None

    ms = (param.model(x, schedules.point_at(grid, 0)),) * order
    xs = (jnp.arange(1, steps), jnp.asarray(orders[:-1], jnp.int32))
    (x, ms), _ = jax.lax.scan(body, (x, ms), xs)
    # The last step needs no model evaluation after it (official code).
    x = branches[int(orders[-1]) - 1](x, ms, history(steps), schedules.point_at(grid, steps))
    return common.constrain(x, sharding)


def _finish(sde, score_fn, x, eps, nfe, denoise, inverse_scaler) -> tuple[Array, int]:
    if denoise:
        # One extra NFE: x0 prediction at t = eps (official `denoise_to_zero`).
        x = Parameterization(score_fn, True).model(
            x, schedules.schedule_points(sde, jnp.asarray(eps, x.dtype))
        )
        nfe += 1
    return inverse_scaler(x), nfe


def _make_sampler(sde, shape, sharding, solve: Callable[[Array], Array]):
    """`sampler(key, z=None)`: draws `z` from the prior unless given, then `solve`s, jitted."""

    @jax.jit
    def run(key, z):
        x = sde.prior_sampling(key, shape) if z is None else z
        return solve(common.constrain(x, sharding))

    def sampler(key, z=None):
        if z is not None and tuple(z.shape) != shape:
            raise ValueError(f"latent z has shape {tuple(z.shape)}, expected {shape}")
        return run(key, z)

    return sampler


def get_dpm_solver_sampler(
    sde,
    score_fn: ScoreFn,
    shape,
    *,
    steps: int = 20,
    order: int = 2,
    method: str = "multistep",
    algorithm: str = "dpmsolver",
    skip_type: str = "logSNR",
    eps: float = 1e-3,
    lower_order_final: bool = True,
    denoise: bool = False,
    thresholding: bool = False,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """DPM-Solver / DPM-Solver++ sampler of the probability-flow ODE from T to `eps`.

    Args:
      sde: `sde_lib.VPSDE`, `subVPSDE` or `VESDE` (alpha = 1).
      score_fn: `score_fn(x, t)` with `x` of `shape` and `t` of shape `[B]`.
      shape: `(B, ...)`.
      steps: the NFE budget. 'singlestep' (DPM-Solver-fast) and 'multistep' use exactly `steps`
        score evaluations; 'singlestep_fixed' uses `(steps // order) * order`.
      order: 1, 2 or 3. Order 1 is DDIM for every method and algorithm.
      method: 'singlestep', 'multistep' or 'singlestep_fixed' (all segments of order `order`).
      algorithm: 'dpmsolver' (noise prediction) or 'dpmsolver++' (data prediction).
      skip_type: 'logSNR', 'time_uniform' or 'time_quadratic' spacing between T and `eps`.
      eps: final time.
      lower_order_final: multistep only: orders `min(order, steps + 1 - i)` at the last steps
        when `steps < 15` (stabilises very few steps).
      denoise: return the x0 prediction at `eps`; costs one extra NFE (counted in `nfe`).
      thresholding: 'dpmsolver++' only: `dynamic_thresholding` of every data prediction
        (for pixel-space models with data in [-1, 1], as the official code's option); it keeps
        trajectories of an imperfect model from leaving the data range.
      inverse_scaler: applied to the output (None means identity).
      sharding: optional sharding of the batch (see `sampling.get_pc_sampler`).

    Returns:
      `sampler(key, z=None) -> (x, nfe)`, jitted; `z` replaces the prior draw; `nfe` is an int.
    """
    shape = common.check_shape(shape)
    _validate(order, method, algorithm, skip_type, steps)
    schedules.check_sde(sde)  # Fails now, not at trace time, for an unsupported SDE.
    if thresholding and algorithm != "dpmsolver++":
        raise ValueError(
            f"thresholding needs algorithm='dpmsolver++' (data prediction), not {algorithm!r}"
        )
    inverse_scaler = inverse_scaler or common.identity
    correct_x0 = dynamic_thresholding if thresholding else None
    param = Parameterization(score_fn, algorithm == "dpmsolver++", correct_x0)
    orders = multistep_orders(steps, order, lower_order_final) if method == "multistep" else None
    # Singlestep (DPM-Solver-fast) orders sum to `steps`; the fixed variant drops the remainder.
    nfe = (steps // order) * order if method == "singlestep_fixed" else steps

    def solve(x):
        t_T, t_0 = jnp.asarray(sde.T, x.dtype), jnp.asarray(eps, x.dtype)
        if method == "multistep":
            grid = schedules.schedule_points(
                sde, schedules.get_time_steps(sde, skip_type, t_T, t_0, steps)
            )
            x = _run_multistep(param, x, grid, orders, order, sharding)
        else:
            plan = _segments(sde, method, order, steps, skip_type, t_T, t_0)
            x = _run_singlestep(param, x, plan, sde, sharding)
        return _finish(sde, score_fn, x, eps, nfe, denoise, inverse_scaler)

    return _make_sampler(sde, shape, sharding, solve)


def get_ddim_sampler(
    sde,
    score_fn: ScoreFn,
    shape,
    *,
    steps: int = 50,
    skip_type: str = "time_uniform",
    eps: float = 1e-3,
    denoise: bool = False,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """Deterministic DDIM (Song et al. 2020, Eq. 12 with sigma = 0): DPM-Solver-1, `steps` NFE.

    `x_t = alpha_t x0_theta(x_s) + sigma_t eps_theta(x_s)`; uniform time steps by default, as
    DDIM's uniform skip of the discrete steps.
    """
    return get_dpm_solver_sampler(
        sde, score_fn, shape, steps=steps, order=1, method="multistep", skip_type=skip_type,
        eps=eps, denoise=denoise, inverse_scaler=inverse_scaler, sharding=sharding,
    )  # fmt: skip


def edm_time_steps(sde, steps: int, rho: float, eps, dtype=None) -> Array:
    """`steps + 1` times with EDM's noise levels (Karras et al. Eq. 5) in `sigma_t / alpha_t`.

    `s_i = (s_max^(1/rho) + i/steps (s_min^(1/rho) - s_max^(1/rho)))^rho`, i = 0..steps, with
    s_max, s_min the noise-to-signal ratio at T and eps (EDM's sigma for VP), mapped back to t
    through `schedules.inverse_lambda(-log s_i)`. Departure: EDM appends sigma = 0; we end at `eps`.
    """
    t_T, t_0 = jnp.asarray(sde.T, dtype), jnp.asarray(eps, dtype)
    s_max, s_min = (
        jnp.exp(-schedules.marginal_lambda(sde, t_T)),
        jnp.exp(-schedules.marginal_lambda(sde, t_0)),
    )
    i = jnp.arange(steps + 1, dtype=t_T.dtype)
    ramp = s_max ** (1 / rho) + i / steps * (s_min ** (1 / rho) - s_max ** (1 / rho))
    ts = schedules.inverse_lambda(sde, -rho * jnp.log(ramp))
    return ts.at[0].set(t_T).at[-1].set(t_0)


HEUN_VARIABLES = ("t", "sigma")


def _heun_loop(deriv, y, us, points: schedules.Points, sharding):
    """Heun steps over the grid `us` (EDM Alg. 1, lines 4-8), Euler on the last step."""

    def heun_step(y, xs):
        u_cur, u_next, p_cur, p_next = xs
        d_cur = deriv(y, p_cur)
        y_euler = y + (u_next - u_cur) * d_cur  # Euler step.
        d_next = deriv(y_euler, p_next)  # Apply 2nd order correction.
        return common.constrain(y + (u_next - u_cur) * 0.5 * (d_cur + d_next), sharding), None

    pairs = (
        us[:-2],
        us[1:-1],
        schedules.point_at(points, slice(0, -2)),
        schedules.point_at(points, slice(1, -1)),
    )
    y, _ = jax.lax.scan(heun_step, y, pairs)
    # Last step: Euler (EDM's last step goes to sigma = 0, where the derivative is undefined).
    return common.constrain(
        y + (us[-1] - us[-2]) * deriv(y, schedules.point_at(points, -2)), sharding
    )


def get_heun_sampler(
    sde,
    score_fn: ScoreFn,
    shape,
    *,
    steps: int = 18,
    rho: float = 7.0,
    eps: float = 1e-3,
    variable: str = "t",
    denoise: bool = False,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Alg. 1) on the PF ODE.

    Runs over the `steps` intervals of `edm_time_steps`: Heun on all but the last, Euler on the
    last (as EDM), so `2 steps - 1` NFE (+1 with `denoise`). `variable` picks the integration
    variable of the same ODE:
      * 't': `dx/dt = f(x, t) - g(t)^2 score / 2` (Song et al. 2021, Eq. 13) in the SDE's own
        time, EDM's treatment of the original VP / VE parameterisations.
      * 'sigma': EDM's choice sigma(t) = t, s(t) = 1 (Sec. 3): `y = x / alpha_t` against the
        noise-to-signal ratio `u = sigma_t / alpha_t`, `dy/du = eps_theta(x, t)` (DDIM's ODE,
        Song et al. 2020 Eq. 14). Nearly linear for Gaussian-like data: far more accurate at
        few steps, notably for VE, where the t-variable ODE decays like exp(-t log(s_max/s_min)).

    Returns:
      `sampler(key, z=None) -> (x, nfe)`, jitted.
    """
    shape = common.check_shape(shape)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if variable not in HEUN_VARIABLES:
        raise ValueError(f"Unknown variable {variable!r}; valid variables: {list(HEUN_VARIABLES)}")
    schedules.check_sde(sde)
    inverse_scaler = inverse_scaler or common.identity
    rsde = sde.reverse(score_fn, probability_flow=True)
    param = Parameterization(score_fn, data=False)
    nfe = 2 * steps - 1

    def drift_t(x, p):
        return rsde.sde(x, jnp.full((shape[0],), p.t, x.dtype))[0]

    def drift_sigma(y, p):
        return param.model(jnp.exp(p.log_alpha) * y, p)  # dy/du = eps_theta(alpha y, t).

    def solve(x):
        points = schedules.schedule_points(sde, edm_time_steps(sde, steps, rho, eps, x.dtype))
        if variable == "t":
            x = _heun_loop(drift_t, x, points.t, points, sharding)
        else:
            y = x * jnp.exp(-points.log_alpha[0])
            us = jnp.exp(points.log_sigma - points.log_alpha)
            x = _heun_loop(drift_sigma, y, us, points, sharding) * jnp.exp(points.log_alpha[-1])
        return _finish(sde, score_fn, x, eps, nfe, denoise, inverse_scaler)

    return _make_sampler(sde, shape, sharding, solve)


FAST_SAMPLERS = {
    "dpm_solver": get_dpm_solver_sampler,
    "ddim": get_ddim_sampler,
    "heun": get_heun_sampler,
}


def get_fast_sampler(name: str, sde, score_fn: ScoreFn, shape, **kwargs):
    """Builds a fast sampler by name: `get_fast_sampler('dpm_solver', sde, s, shape, order=3)`.

    Raises:
      ValueError: for an unknown name, listing the valid ones (`FAST_SAMPLERS`).
    """
    if name not in FAST_SAMPLERS:
        raise ValueError(f"Unknown fast sampler {name!r}; valid names: {sorted(FAST_SAMPLERS)}")
    return FAST_SAMPLERS[name](sde, score_fn, shape, **kwargs)
