"""Samplers: predictor-corrector (Algorithms 1-5 of Song et al. 2021) and the probability-flow ODE.

Pure math on arrays and a `score_fn(x, t)`; every loop runs on device (`lax.fori_loop`, diffrax).
`get_sampler(name, sde, score_fn, shape, **options)` builds any sampler by name, those of
`samplers/` (DPM-Solver, DDIM, Heun, adaptive) included; `get_sampling_fn(config, ...)`, the
paper's entry point, is the only function here that reads a config.

Predictors and correctors are plain functions
  `update(key, x, t, *, sde, score_fn, ...) -> (x, x_mean)`
looked up by name in `PREDICTORS` / `CORRECTORS`. `x_mean` is the update without the injected
noise; the PC sampler returns the last `x_mean` when `denoise=True` (the original code's
`noise_removal`).

Parity notes (deliberate, each matches the original code):
  * The time grid is `linspace(T, eps, N)`, while Euler-Maruyama and `discretize` use `dt = 1/N`.
  * Each grid point runs the corrector first, then the predictor (paper Alg. 1 shows P then C).
  * The Langevin step size uses batch means of the per-example score and noise norms. Under
    `jax.jit` with a sharded batch, `jnp.mean` is a global mean (the original `pmean`).
Departure: the returned NFE counts real score evaluations (a `none` predictor or corrector costs
nothing, the two-stage `sra1` / `stochastic_heun` predictors two, `platen` one: `PREDICTOR_NFE`),
whereas the original reports the nominal `N (n_steps + 1)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
from jax import Array

import sde_lib
from models import utils as mutils
from samplers import common, fast_samplers, sde_solvers
from sde_lib import batch_bcast

ScoreFn = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------------------------
# Predictors: one reverse-time step at time t.
# --------------------------------------------------------------------------------------------


def euler_maruyama_step(rsde, x, t, dt, z):
    """One Euler-Maruyama step `x + drift dt + diffusion sqrt(|dt|) z` with given noise `z`."""
    drift, diffusion = rsde.sde(x, t)
    # Deterministic part of the step.
    x_mean = x + drift * dt
    # Brownian increment with variance |dt|.
    x = x_mean + batch_bcast(diffusion, x) * jnp.sqrt(jnp.abs(dt)) * z
    return x, x_mean


def euler_maruyama_update(key, x, t, *, sde, score_fn, probability_flow=False):
    """Euler-Maruyama step of the reverse SDE (or Euler step of the flow ODE), `dt = -1/N`."""
    rsde = sde.reverse(score_fn, probability_flow)
    z = jax.random.normal(key, x.shape, x.dtype)
    return euler_maruyama_step(rsde, x, t, -1.0 / rsde.N, z)


def reverse_diffusion_update(key, x, t, *, sde, score_fn, probability_flow=False):
    """Reverse-diffusion step `x_i = x_{i+1} - f + G^2 s + G z` (paper Eq. 46-47, App. E)."""
    rev_f, rev_G = sde.reverse(score_fn, probability_flow).discretize(x, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    x_mean = x - rev_f
    x = x_mean + batch_bcast(rev_G, x) * z
    return x, x_mean


def _ancestral_ve(key, x, t, *, sde, score_fn):
    # SMLD ancestral step between sigma_i and sigma_{i-1} (paper Eq. 47).
    i = sde_lib.timestep_index(t, sde.N, sde.T)
    sigmas = jnp.asarray(sde.discrete_sigmas, x.dtype)
    sigma = sigmas[i]
    adjacent_sigma = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[i - 1])
    score = score_fn(x, t)
    x_mean = x + score * batch_bcast(sigma**2 - adjacent_sigma**2, x)
    std = jnp.sqrt(adjacent_sigma**2 * (sigma**2 - adjacent_sigma**2) / sigma**2)
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_bcast(std, x) * z, x_mean


def _ancestral_vp(key, x, t, *, sde, score_fn):
    # DDPM ancestral step (Ho et al. 2020, Alg. 2, with the score in place of -eps/std).
    i = sde_lib.timestep_index(t, sde.N, sde.T)
    beta = jnp.asarray(sde.discrete_betas, x.dtype)[i]
    score = score_fn(x, t)
    x_mean = (x + batch_bcast(beta, x) * score) / batch_bcast(jnp.sqrt(1.0 - beta), x)
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_bcast(jnp.sqrt(beta), x) * z, x_mean


def ancestral_sampling_update(key, x, t, *, sde, score_fn, probability_flow=False):
    """Ancestral sampling of the SMLD (VE) or DDPM (VP) discretization."""
    if probability_flow:
        raise ValueError("ancestral_sampling does not support probability_flow=True")
    if isinstance(sde, sde_lib.VESDE):
        return _ancestral_ve(key, x, t, sde=sde, score_fn=score_fn)
    if isinstance(sde, sde_lib.VPSDE):
        return _ancestral_vp(key, x, t, sde=sde, score_fn=score_fn)
    raise ValueError(
        f"ancestral_sampling supports VESDE and VPSDE only, not {type(sde).__name__}; "
        "use reverse_diffusion or euler_maruyama"
    )


def none_predictor_update(key, x, t, *, sde, score_fn, probability_flow=False):
    """No predictor: corrector-only sampling."""
    del key, t, sde, score_fn, probability_flow
    return x, x


PREDICTORS = {
    "euler_maruyama": euler_maruyama_update,
    "reverse_diffusion": reverse_diffusion_update,
    "ancestral_sampling": ancestral_sampling_update,
    # Two-stage stochastic Runge-Kutta methods for the additive-noise reverse SDE (sde_solvers).
    "sra1": sde_solvers.sra1_update,
    "stochastic_heun": sde_solvers.stochastic_heun_update,
    # Platen's derivative-free Milstein scheme: Euler-Maruyama for additive noise (sde_solvers).
    "platen": sde_solvers.platen_update,
    "none": none_predictor_update,
}

# Score evaluations per predictor step, for the NFE count (1 where not listed).
PREDICTOR_NFE = {"none": 0, **sde_solvers.NFE_PER_STEP}


# --------------------------------------------------------------------------------------------
# Correctors: n_steps of Langevin MCMC at fixed time t.
# --------------------------------------------------------------------------------------------


def _langevin_alpha(sde, t: Array) -> Array:
    """The DDPM `alpha_i` for VP/sub-VP (scales the step, paper Alg. 5); 1 for VE."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        return jnp.asarray(sde.alphas, t.dtype)[sde_lib.timestep_index(t, sde.N, sde.T)]
    return jnp.ones_like(t)


def _batch_norm_mean(v: Array) -> Array:
    """Mean over the (global) batch of per-example L2 norms."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def _langevin_loop(key, x, t, *, score_fn, n_steps, step_size_fn):
    """Runs `n_steps` of `x <- x + e s(x, t) + sqrt(2 e) z` with `e = step_size_fn(score, z)`."""

    def body(j, carry):
        x, _ = carry
        score = score_fn(x, t)
        z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        step_size = step_size_fn(score, z)
        x_mean = x + batch_bcast(step_size, x) * score
        x = x_mean + batch_bcast(jnp.sqrt(2.0 * step_size), x) * z
        return x, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def langevin_update(key, x, t, *, sde, score_fn, snr, n_steps):
    """Langevin corrector with the signal-to-noise step size (paper Alg. 4 and 5).

    `e = 2 alpha (snr ||z|| / ||s||)^2`, norms averaged over the whole batch.
    """
    alpha = _langevin_alpha(sde, t)

    def step_size_fn(score, z):
        ratio = snr * _batch_norm_mean(z) / _batch_norm_mean(score)
        return 2.0 * alpha * ratio**2

    return _langevin_loop(key, x, t, score_fn=score_fn, n_steps=n_steps, step_size_fn=step_size_fn)


def ald_update(key, x, t, *, sde, score_fn, snr, n_steps):
    """Annealed Langevin dynamics of NCSN/NCSNv2: `e = 2 alpha (snr std(t))^2`."""
    alpha = _langevin_alpha(sde, t)
    std = sde.marginal_prob(x, t)[1]
    step_size = 2.0 * alpha * (snr * std) ** 2
    return _langevin_loop(
        key, x, t, score_fn=score_fn, n_steps=n_steps, step_size_fn=lambda s, z: step_size
    )


def none_corrector_update(key, x, t, *, sde, score_fn, snr, n_steps):
    """No corrector: predictor-only sampling."""
    del key, t, sde, score_fn, snr, n_steps
    return x, x


CORRECTORS = {"langevin": langevin_update, "ald": ald_update, "none": none_corrector_update}


def get_predictor(name: str):
    """Looks up a predictor update function by name."""
    if name not in PREDICTORS:
        raise ValueError(f"Unknown predictor {name!r}; valid predictors: {sorted(PREDICTORS)}")
    return PREDICTORS[name]


def get_corrector(name: str):
    """Looks up a corrector update function by name."""
    if name not in CORRECTORS:
        raise ValueError(f"Unknown corrector {name!r}; valid correctors: {sorted(CORRECTORS)}")
    return CORRECTORS[name]


# --------------------------------------------------------------------------------------------
# Predictor-corrector sampler.
# --------------------------------------------------------------------------------------------


def check_pc(sde, predictor: str, corrector: str, probability_flow: bool, n_steps: int):
    """Looks up the updates (errors list the valid names) and validates ancestral sampling.

    Fails at construction, not at trace time. Returns:
      `((predictor_update, corrector_update), nfe)`, `nfe` the score evaluations of a run.
    """
    updates = (get_predictor(predictor), get_corrector(corrector))
    if predictor == "ancestral_sampling":
        if probability_flow:
            raise ValueError("ancestral_sampling does not support probability_flow=True")
        if not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
            raise ValueError(
                f"ancestral_sampling supports VESDE and VPSDE only, not {type(sde).__name__}"
            )
    nfe = sde.N * (PREDICTOR_NFE.get(predictor, 1) + (corrector != "none") * n_steps)
    return updates, nfe


def _no_projection(key, x, x_mean, t):
    del key, t
    return x, x_mean


def pc_step(i, carry, key, *, sde, score_fn, updates, snr, n_steps, probability_flow, eps,
            sharding, project=_no_projection):  # fmt: skip
    """Noise level `i` of `pc_loop`: corrector then predictor at `t_i` of `linspace(T, eps, N)`.

    `carry` is `(x, x_mean)`; `project(key, x, x_mean, t) -> (x, x_mean)` runs after each update
    (the imputation of controllable_generation) with keys of its own, so without a constraint
    the samples equal those of `get_pc_sampler`.
    """
    p_update, c_update = updates
    x, _ = carry
    vec_t = jnp.full((x.shape[0],), jnp.linspace(sde.T, eps, sde.N)[i], x.dtype)
    step_key = jax.random.fold_in(key, i)
    c_key, p_key = jax.random.split(step_key)
    c_proj_key, p_proj_key = jax.random.split(jax.random.fold_in(step_key, 1))
    # Corrector first, then predictor, as in the original code.
    x, x_mean = c_update(c_key, x, vec_t, sde=sde, score_fn=score_fn, snr=snr, n_steps=n_steps)
    x, x_mean = project(c_proj_key, x, x_mean, vec_t)
    x, x_mean = p_update(
        p_key, x, vec_t, sde=sde, score_fn=score_fn, probability_flow=probability_flow
    )
    x, x_mean = project(p_proj_key, x, x_mean, vec_t)
    return common.constrain(x, sharding), common.constrain(x_mean, sharding)


def pc_loop(key, x, **step_kwargs):
    """`sde.N` levels of `pc_step` from `x` at T to eps on device; returns the last
    `(x, x_mean)`. Keyword arguments as `pc_step`."""
    body = functools.partial(pc_step, key=key, **step_kwargs)
    return jax.lax.fori_loop(0, step_kwargs["sde"].N, body, (x, x))


def get_pc_sampler(
    sde,
    score_fn: ScoreFn,
    shape,
    predictor: str,
    corrector: str,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """Creates the predictor-corrector sampler (paper Alg. 1; original `get_pc_sampler`).

    Args:
      sde: forward SDE (`sde_lib.VESDE`, `VPSDE` or `subVPSDE`).
      score_fn: `score_fn(x, t)` with `x` of `shape` and `t` of shape `[B]`.
      shape: `(B, ...)`, the batch of samples to draw.
      predictor: a name in `PREDICTORS`. corrector: a name in `CORRECTORS`.
      snr: signal-to-noise ratio of the corrector step size.
      n_steps: corrector steps per noise level.
      probability_flow: predictor integrates the probability-flow ODE instead of the SDE.
      denoise: return the noise-free mean of the last step.
      eps: final time; the grid is `linspace(T, eps, N)`.
      inverse_scaler: applied to the output (None means identity).
      sharding: optional sharding of the batch, e.g. `NamedSharding(mesh, P('data'))` over a
        mesh with `AxisType.Auto` axes.

    Returns:
      `sampler(key) -> (x, nfe)`, jitted; `nfe` is the number of score evaluations.
    """
    shape = common.check_shape(shape)
    updates, nfe = check_pc(sde, predictor, corrector, probability_flow, n_steps)
    inverse_scaler = inverse_scaler or common.identity
    loop = functools.partial(
        pc_loop, sde=sde, score_fn=score_fn, updates=updates, snr=snr, n_steps=n_steps,
        probability_flow=probability_flow, eps=eps, sharding=sharding,
    )  # fmt: skip

    @jax.jit
    def pc_sampler(key):
        prior_key, loop_key = jax.random.split(key)
        x = common.constrain(sde.prior_sampling(prior_key, shape), sharding)
        x, x_mean = loop(loop_key, x)
        return inverse_scaler(x_mean if denoise else x)

    def sampler(key):
        return pc_sampler(key), nfe

    return sampler


# --------------------------------------------------------------------------------------------
# Probability-flow ODE (diffrax, on device).
# --------------------------------------------------------------------------------------------

ODE_SOLVERS = {
    "RK45": diffrax.Dopri5,  # scipy's name in the original configs; Dormand-Prince 5(4).
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
}


class LogTimeProgressMeter(diffrax.TqdmProgressMeter):
    """A tqdm bar of the log-time progress `log(t / t0) / log(t1 / t0)`: adaptive steps shrink
    towards t = 0 (the likelihood ODE spends most of its steps below t = 0.01), so the linear
    fraction of [t0, t1] would sit near 0 % for most of a solve."""

    t0: float = 1.0
    t1: float = 1.0

    def step(self, state, progress):
        t = self.t0 + progress * (self.t1 - self.t0)
        return super().step(state, jnp.log(t / self.t0) / jnp.log(self.t1 / self.t0))


def _progress_meter(progress: bool, t0: float, t1: float):
    if not progress:
        return diffrax.NoProgressMeter()
    if min(t0, t1) > 0 and t0 != t1:
        return LogTimeProgressMeter(refresh_steps=10, t0=t0, t1=t1)
    return diffrax.TqdmProgressMeter(refresh_steps=10)


def solve_ode(drift, y0, t0: float, t1: float, *, rtol: float, atol: float, method: str = "RK45",
              progress: bool = False):  # fmt: skip
    """Adaptive solve of `dy/dt = drift(t, y)` from t0 to t1 (either direction) on device.

    `progress` shows a bar of the integrated fraction of [t0, t1] in log time (a host callback
    every 10 steps; the result is the same).

    Returns:
      `(y1, nfe)`: the solution pytree at t1 and the number of drift evaluations.
    """
    if method not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE method {method!r}; valid methods: {sorted(ODE_SOLVERS)}")
    solver = ODE_SOLVERS[method]()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: drift(t, y)),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,  # Hairer's initial step heuristic, like scipy.
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=diffrax.ForwardMode(),
        max_steps=100_000,
        progress_meter=_progress_meter(progress, t0, t1),
    )
    y1 = jax.tree.map(lambda v: v[-1], sol.ys)
    return y1, ode_nfe(solver, sol.stats["num_steps"])


def ode_nfe(solver, num_steps: Array) -> Array:
    """Drift evaluations of a diffrax explicit Runge-Kutta solve with automatic initial step.

    Measured (a counting callback in the drift, tests/test_sampling.py): every attempted step,
    accepted or rejected, evaluates `len(tableau.c)` stages, plus one evaluation at the start.
    """
    return len(solver.tableau.c) * num_steps + 1


def get_ode_sampler(
    sde,
    score_fn: ScoreFn,
    shape,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = False,
    eps: float = 1e-3,
    inverse_scaler: Callable[[Array], Array] | None = None,
    method: str = "RK45",
    sharding: jax.sharding.Sharding | None = None,
):
    """Probability-flow ODE sampler (paper Sec. 4.3), integrated from T to eps with diffrax.

    Returns:
      `sampler(key, z=None) -> (x, nfe)`: draws the latent from the prior unless `z` is given
      (decoding a latent from `likelihood` inverts the encoding up to solver tolerance).
    """
    shape = common.check_shape(shape)
    inverse_scaler = inverse_scaler or common.identity
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(t, x):
        return rsde.sde(x, jnp.full((shape[0],), t, x.dtype))[0]

    @jax.jit
    def ode_sampler(key, z):
        prior_key, denoise_key = jax.random.split(key)
        x = sde.prior_sampling(prior_key, shape) if z is None else z
        x = common.constrain(x, sharding)
        x, nfe = solve_ode(drift, x, sde.T, eps, rtol=rtol, atol=atol, method=method)
        if denoise:
            # One reverse-diffusion step at t=eps without noise (the original's denoise step).
            vec_eps = jnp.full((shape[0],), eps, x.dtype)
            _, x = reverse_diffusion_update(denoise_key, x, vec_eps, sde=sde, score_fn=score_fn)
            nfe = nfe + 1
        return inverse_scaler(x), nfe

    def sampler(key, z=None):
        if z is not None and tuple(z.shape) != shape:
            raise ValueError(f"latent z has shape {tuple(z.shape)}, expected {shape}")
        return ode_sampler(key, z)

    return sampler


# --------------------------------------------------------------------------------------------
# Samplers by name, and the config entry point (the original `get_sampling_fn`).
# --------------------------------------------------------------------------------------------

# `config.sampling.method` -> factory `(sde, score_fn, shape, **options) -> sampler`.
SAMPLER_FACTORIES = {
    "pc": get_pc_sampler,
    "ode": get_ode_sampler,
    "dpm_solver": fast_samplers.get_dpm_solver_sampler,
    "ddim": fast_samplers.get_ddim_sampler,
    "heun": fast_samplers.get_heun_sampler,
    "adaptive": sde_solvers.get_adaptive_sampler,
}
SAMPLING_METHODS = tuple(SAMPLER_FACTORIES)
# Methods that integrate the probability-flow ODE: like the original ODE sampler, they query
# the model as a continuous-time one; the SDE samplers follow `config.training.continuous`.
ODE_METHODS = ("ode", "dpm_solver", "ddim", "heun")

_REQUIRED = object()  # A field every config sets (configs/default_*_configs.py).
_FAST_FIELDS = {"steps": ("steps", 20), "denoise": ("fast_denoise", False)}
# The `config.sampling` fields of each method, as `sampler keyword: (field, default)`. The
# fields beyond the original's have defaults, so the paper's configs need none of them.
SAMPLING_FIELDS = {
    "pc": {
        "predictor": ("predictor", _REQUIRED),
        "corrector": ("corrector", _REQUIRED),
        "snr": ("snr", _REQUIRED),
        "n_steps": ("n_steps_each", _REQUIRED),
        "probability_flow": ("probability_flow", _REQUIRED),
        "denoise": ("noise_removal", _REQUIRED),
    },
    "ode": {
        "denoise": ("noise_removal", _REQUIRED),
        "rtol": ("rtol", 1e-5),
        "atol": ("atol", 1e-5),
    },
    "dpm_solver": {
        **_FAST_FIELDS,
        "order": ("dpm_order", 2),
        "method": ("dpm_method", "multistep"),
        "algorithm": ("dpm_algorithm", "dpmsolver"),
        "skip_type": ("skip_type", "logSNR"),
        "thresholding": ("dpm_thresholding", False),
    },
    "ddim": {**_FAST_FIELDS, "skip_type": ("skip_type", "time_uniform")},
    "heun": {**_FAST_FIELDS, "rho": ("heun_rho", 7.0), "variable": ("heun_variable", "t")},
    "adaptive": {
        "denoise": ("noise_removal", _REQUIRED),
        "abstol": ("abstol", -1.0),  # < 0: one 8-bit level, from `config.data.centered`.
        "reltol": ("reltol", 0.05),
        "h_init": ("h_init", 0.01),
    },
}


def get_sampler(name: str, sde, score_fn: ScoreFn, shape, **options):
    """Builds the sampler `name` (a key of `SAMPLER_FACTORIES`) on a score function; no config.

    E.g. `get_sampler("ddim", sde, score_fn, shape, steps=10)`, or `get_sampler("pc", sde,
    score_fn, shape, predictor="reverse_diffusion", corrector="langevin", snr=0.16)`.

    Args:
      name: 'pc', 'ode', 'dpm_solver', 'ddim', 'heun' or 'adaptive' (`SAMPLING_METHODS`).
      sde, score_fn, shape: as `get_pc_sampler`.
      **options: keyword arguments of that method's factory (`get_pc_sampler`,
        `get_ode_sampler`, `fast_samplers.get_dpm_solver_sampler`, `get_ddim_sampler`,
        `get_heun_sampler`, `sde_solvers.get_adaptive_sampler`).

    Returns:
      The factory's `sampler(key) -> (x, nfe)`.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    if name not in SAMPLER_FACTORIES:
        raise ValueError(f"Unknown sampler {name!r}; valid: {list(SAMPLER_FACTORIES)}")
    return SAMPLER_FACTORIES[name](sde, score_fn, shape, **options)


def get_sampling_fn(config, sde, model, shape, inverse_scaler, eps, sharding=None, score_sde=None):
    """Builds `sampling_fn(key, params) -> (x, nfe)` from `config.sampling` for a Flax model.

    The one function of this module that reads a config: it turns the fields of
    `SAMPLING_FIELDS[config.sampling.method]` into keyword options of `get_sampler`.
    `config.sampling.method`:
      * 'pc': predictor, corrector, snr, n_steps_each, probability_flow, noise_removal;
      * 'ode': diffrax Dopri5 at rtol = atol = 1e-5 (`sampling.rtol/atol` if set),
        denoise = noise_removal;
      * 'dpm_solver' / 'ddim' / 'heun' (samplers/fast_samplers.py): `sampling.steps` (NFE
        budget; Heun's number of intervals), `dpm_order`, `dpm_method`, `dpm_algorithm`,
        `skip_type`, `dpm_thresholding`, `heun_rho`, `heun_variable`, `fast_denoise` (final x0
        prediction, one more NFE);
      * 'adaptive' (samplers/sde_solvers.py, "Gotta Go Fast"): `sampling.abstol`, `reltol`,
        `h_init`, denoise = noise_removal.
    As the original, the ODE paths (`ODE_METHODS`) query the model as a continuous one. The
    function is jitted once; params are an argument, so new params do not recompile.
    `score_sde` (default `sde`) is the SDE the model was trained with: the score function maps
    t to the model's labels with its N, so sampling with another N (Table 1's P2000) queries a
    discrete-time model at `s(x, i N_train / N)`, the paper's interpolation.

    Raises:
      ValueError: an unknown method, predictor or corrector (listing the valid names).
    """
    s = config.sampling
    method = s.method.lower()
    if method not in SAMPLER_FACTORIES:
        raise ValueError(
            f"Unknown config.sampling.method {s.method!r}; valid: {list(SAMPLING_METHODS)}"
        )
    options = {
        name: s[field] if default is _REQUIRED else s.get(field, default)
        for name, (field, default) in SAMPLING_FIELDS[method].items()
    }
    if method == "pc":
        # Unknown names fail here, not at the first call.
        get_predictor(options["predictor"])
        get_corrector(options["corrector"])
    if method == "adaptive" and options["abstol"] < 0:
        # One 8-bit level in model units, as the paper's runs: 2/255 on [-1, 1], 1/255 on [0, 1].
        options["abstol"] = 0.0078 if config.data.centered else 0.0039
    options.update(eps=eps, inverse_scaler=inverse_scaler, sharding=sharding)
    continuous = True if method in ODE_METHODS else config.training.continuous
    score_sde = sde if score_sde is None else score_sde
    # The network's activation dtype ('bfloat16' on request; the sampler's state stays float32).
    dtype = mutils.compute_dtype(s.get("compute_dtype", "float32"))

    def sampling_fn(key, params):
        score_fn = mutils.get_score_fn(
            score_sde, model, params, train=False, continuous=continuous, dtype=dtype
        )
        return get_sampler(method, sde, score_fn, shape, **options)(key)

    return jax.jit(sampling_fn)
