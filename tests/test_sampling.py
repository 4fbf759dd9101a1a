"""Samplers against analytic Gaussian scores, SDE solver order, determinism, sharding, errors.

Data p_0 = N(MU, S^2 I) (tests/analytic.py); with the exact score every sampler must return
samples with mean MU and std S. 4096 x 2 samples: the standard error of the mean is
S / sqrt(8192) = 0.0033 and of the std about 0.8 %. Tolerances (measured errors in brackets):
  * predictor-corrector and predictor-only: |mean - MU| < 0.02, |std / S - 1| < 0.04
    (worst measured: 0.0067 and 0.020, from the N = 1000 discretization).
  * corrector-only (paper's C2000: 2 Langevin steps per level): Langevin 0.02 / 0.04 [0.0013,
    0.0071]; annealed Langevin (NCSN's ALD) on VE 0.02 / 0.06 [0.0017, 0.029]. ALD is NCSN's
    VE sampler; with its std-based step size it mixes slowly on VP / sub-VP (the step is
    (snr std(t))^2 with std(t) <= 1), so there it only has to land near the data: 0.08 / 0.15
    [0.045, 0.145].
  * probability-flow ODE (Dopri5, rtol = atol = 1e-5): 0.02 / 0.02.
"""

import inspect
import itertools

import analytic
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sampling
import sde_lib
from configs.testing import ddpmpp_tiny
from samplers import fast_samplers, sde_solvers

SHAPE = (4096, 2)


def _pc_cases():
    for name, p, c in itertools.product(analytic.SDES, sampling.PREDICTORS, sampling.CORRECTORS):
        if (p, c) == ("none", "none") or (p == "ancestral_sampling" and name == "subvpsde"):
            continue
        if p in sde_solvers.NFE_PER_STEP and c != "none":
            continue  # the two-stage predictors with correctors: tests/test_sde_solvers.py
        yield name, p, c


@pytest.mark.parametrize("name,predictor,corrector", list(_pc_cases()))
def test_pc_sampler_recovers_gaussian_data(name, predictor, corrector):
    sde = analytic.SDES[name]
    corrector_only = predictor == "none"
    n_steps = 2 if corrector_only else 1  # C2000 of the paper: 2 corrector steps per level.
    sampler = sampling.get_pc_sampler(
        sde,
        analytic.exact_score_fn(sde),
        SHAPE,
        predictor,
        corrector,
        snr=0.16,
        n_steps=n_steps,
        eps=analytic.SAMPLING_EPS[name],
    )
    x, nfe = sampler(jax.random.key(1))
    mean_tol, std_tol = 0.02, 0.04
    if corrector_only and corrector == "ald":
        mean_tol, std_tol = (0.02, 0.06) if name == "vesde" else (0.08, 0.15)
    assert np.all(np.isfinite(x))
    assert abs(float(x.mean()) - analytic.MU) < mean_tol
    assert abs(float(x.std()) / analytic.S - 1) < std_tol
    evals_per_step = sampling.PREDICTOR_NFE.get(predictor, 1)
    assert nfe == sde.N * (evals_per_step + (corrector != "none") * n_steps)


@pytest.mark.parametrize("name", list(analytic.SDES))
def test_ode_sampler_recovers_gaussian_data(name):
    sde = analytic.SDES[name]
    sampler = sampling.get_ode_sampler(
        sde, analytic.exact_score_fn(sde), SHAPE, eps=analytic.SAMPLING_EPS[name]
    )
    x, nfe = sampler(jax.random.key(2))
    assert abs(float(x.mean()) - analytic.MU) < 0.02
    assert abs(float(x.std()) / analytic.S - 1) < 0.02
    assert 10 < int(nfe) < 1000


def test_ode_sampler_decodes_given_latent_and_flow_is_exact_for_gaussians():
    """For Gaussian data the flow map is affine: x(eps) = m(eps) + sqrt(v(eps)/v(T)) (z - m(T))."""
    sde = analytic.SDES["vpsde"]
    eps = 1e-3
    z = jax.random.normal(jax.random.key(3), (16, 2))
    sampler = sampling.get_ode_sampler(sde, analytic.exact_score_fn(sde), (16, 2), eps=eps)
    x, _ = sampler(jax.random.key(0), z=z)
    m_T, v_T = analytic.marginal(sde, jnp.ones(1))
    m_e, v_e = analytic.marginal(sde, jnp.full((1,), eps))
    expected = m_e + jnp.sqrt(v_e / v_T) * (z - m_T)
    np.testing.assert_allclose(x, expected, atol=2e-4)
    with pytest.raises(ValueError, match=r"latent z has shape \(3, 2\), expected \(16, 2\)"):
        sampler(jax.random.key(0), z=jnp.zeros((3, 2)))


def test_ode_nfe_counts_every_drift_evaluation():
    """The reported NFE equals the number of score evaluations counted by a host callback."""
    sde = analytic.SDES["vesde"]
    exact = analytic.exact_score_fn(sde)
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    sampler = sampling.get_ode_sampler(sde, counting_score, (8, 2), eps=1e-5)
    x, nfe = sampler(jax.random.key(0))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert len(calls) == int(nfe)


def test_denoise_and_corrector_then_predictor_order():
    """One grid point (N = 1) computed by hand: Langevin corrector first, then reverse
    diffusion; `denoise` returns the predictor's noise-free mean."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1)
    score_fn = analytic.exact_score_fn(sde)
    key = jax.random.key(7)
    snr = 0.16
    outs = {}
    for denoise in (True, False):
        sampler = sampling.get_pc_sampler(
            sde, score_fn, (64, 2), "reverse_diffusion", "langevin", snr=snr, denoise=denoise
        )
        outs[denoise] = sampler(key)[0]
    # Hand computation with the sampler's key derivation.
    prior_key, loop_key = jax.random.split(key)
    x = sde.prior_sampling(prior_key, (64, 2))
    c_key, p_key = jax.random.split(jax.random.fold_in(loop_key, 0))
    t = jnp.ones(64)
    # Corrector (one Langevin step at t = T).
    s = score_fn(x, t)
    z = jax.random.normal(jax.random.fold_in(c_key, 0), x.shape)
    norm = lambda v: jnp.mean(jnp.linalg.norm(v, axis=-1))
    e = 2 * (snr * norm(z) / norm(s)) ** 2
    x = x + e * s + jnp.sqrt(2 * e) * z
    # Predictor: x_mean = x + (sigma_0^2 - 0) s (the first SMLD level has no neighbour).
    sigma = sde.discrete_sigmas[0]
    x_mean = x + sigma**2 * score_fn(x, t)
    x_noisy = x_mean + sigma * jax.random.normal(p_key, x.shape)
    np.testing.assert_allclose(outs[True], x_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[False], x_noisy, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Strong order of Euler-Maruyama.
# --------------------------------------------------------------------------------------------


class _LinearSDE(sde_lib.SDE):
    """Forward SDE whose reverse with a zero score is, in reverse time tau = T - t,
    dX = a X dtau + (c + d X) dW (scalar, D = 1). `t` is ignored."""

    def __init__(self, a, c, d, N=1):
        self.a, self.c, self.d, self.N = a, c, d, N

    def sde(self, x, t):
        return -self.a * x, self.c + self.d * x[:, 0]


def _strong_order(sde, exact_fn, n_paths=4000, n_fine=2**11, T=1.0):
    """Fits log E|X_EM(T) - X(T)| against log dt over dt = T / 2^k, one Brownian path set."""
    key = jax.random.key(11)
    dw = jax.random.normal(key, (n_fine, n_paths, 1)) * jnp.sqrt(T / n_fine)
    x0 = jnp.ones((n_paths, 1))
    exact = exact_fn(x0, dw, T)
    rsde = sde.reverse(lambda x, t: jnp.zeros_like(x))
    t = jnp.zeros(n_paths)
    dts, errs = [], []
    for k in (4, 5, 6, 7, 8):
        n = 2**k
        inc = dw.reshape(n, n_fine // n, n_paths, 1).sum(1)
        dt = T / n

        def body(x, w, dt=dt):
            x, _ = sampling.euler_maruyama_step(rsde, x, t, -dt, w / np.sqrt(dt))
            return x, None

        x, _ = jax.lax.scan(body, x0, inc)
        dts.append(dt)
        errs.append(float(jnp.mean(jnp.abs(x - exact))))
    return np.polyfit(np.log(dts), np.log(errs), 1)[0]


def test_euler_maruyama_strong_order_ou_and_gbm():
    """OU (additive noise): EM is strong order 1.0 (it coincides with Milstein). Geometric
    Brownian motion (multiplicative noise): strong order 0.5. Tolerance +-0.25 each."""
    a, c = -1.5, 0.8

    def ou_exact(x0, dw, T):
        # X(T) = e^{aT} x0 + c int e^{a(T-s)} dW(s), the integral on the fine grid (O(h_fine)).
        n = dw.shape[0]
        s = (jnp.arange(n) + 0.5) * (T / n)
        return jnp.exp(a * T) * x0 + c * jnp.sum(jnp.exp(a * (T - s))[:, None, None] * dw, 0)

    mu, sig = 0.5, 0.8

    def gbm_exact(x0, dw, T):
        return x0 * jnp.exp((mu - 0.5 * sig**2) * T + sig * jnp.sum(dw, 0))

    order_ou = _strong_order(_LinearSDE(a, c, 0.0), ou_exact)
    order_gbm = _strong_order(_LinearSDE(mu, 0.0, sig), gbm_exact)
    assert abs(order_ou - 1.0) < 0.25, order_ou
    assert abs(order_gbm - 0.5) < 0.25, order_gbm


# --------------------------------------------------------------------------------------------
# Determinism, compilation, sharding.
# --------------------------------------------------------------------------------------------


def test_same_key_same_samples_and_no_recompilation():
    sde = sde_lib.VPSDE(N=50)
    exact = analytic.exact_score_fn(sde)
    traces = []

    def score_fn(x, t):
        traces.append(1)  # Python side effect: runs only while tracing.
        return exact(x, t)

    sampler = sampling.get_pc_sampler(sde, score_fn, (32, 2), "reverse_diffusion", "langevin")
    a, _ = sampler(jax.random.key(0))
    n_traces = len(traces)
    b, _ = sampler(jax.random.key(0))
    c, _ = sampler(jax.random.key(1))
    assert len(traces) == n_traces, "the sampler was traced again on the second call"
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kind", ["pc", "ode"])
def test_sharded_sampler_matches_single_device(kind):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    # Auto axes: the compiler propagates the batch sharding through diffrax's internals.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    sde = sde_lib.VESDE(N=100)
    score_fn = analytic.exact_score_fn(sde)
    if kind == "pc":
        make = lambda sh: sampling.get_pc_sampler(
            sde, score_fn, (64, 2), "reverse_diffusion", "langevin", eps=1e-5, sharding=sh
        )
    else:
        make = lambda sh: sampling.get_ode_sampler(sde, score_fn, (64, 2), eps=1e-5, sharding=sh)
    single, _ = make(None)(jax.random.key(5))
    sharded, _ = make(sharding)(jax.random.key(5))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------


def test_unknown_names_list_valid_ones():
    sde = sde_lib.VPSDE(N=10)
    score = analytic.exact_score_fn(sde)
    with pytest.raises(ValueError, match=r"Unknown predictor 'euler'.*'ancestral_sampling'"):
        sampling.get_pc_sampler(sde, score, (4, 2), "euler", "none")
    with pytest.raises(ValueError, match=r"Unknown corrector 'lang'.*'ald', 'langevin', 'none'"):
        sampling.get_pc_sampler(sde, score, (4, 2), "none", "lang")
    with pytest.raises(ValueError, match=r"Unknown ODE method 'rk4'.*'RK45'"):
        sampling.get_ode_sampler(sde, score, (4, 2), method="rk4")(jax.random.key(0))


def test_invalid_combinations_and_shapes():
    score = lambda x, t: -x
    with pytest.raises(ValueError, match="probability_flow"):
        sampling.get_pc_sampler(
            sde_lib.VPSDE(N=10), score, (4, 2), "ancestral_sampling", "none", probability_flow=True
        )
    with pytest.raises(ValueError, match="VESDE and VPSDE only, not subVPSDE"):
        sampling.get_pc_sampler(sde_lib.subVPSDE(N=10), score, (4, 2), "ancestral_sampling", "none")
    with pytest.raises(ValueError, match=r"shape must be \(batch, \.\.\.\)"):
        sampling.get_pc_sampler(sde_lib.VPSDE(N=10), score, (4,), "euler_maruyama", "none")
    # A score function returning the wrong batch shape is reported with both shapes.
    bad_t = lambda x, t: -x * t[:2, None]
    with pytest.raises((ValueError, TypeError), match=r"\(4,? ?2?\)|shapes"):
        sampling.get_pc_sampler(sde_lib.VPSDE(N=10), bad_t, (4, 2), "euler_maruyama", "none")(
            jax.random.key(0)
        )


# --------------------------------------------------------------------------------------------
# get_sampling_fn: every config.sampling.method through a counting stand-in network.
# --------------------------------------------------------------------------------------------


class _CountingModel:
    """Stand-in for a Flax model: output 0, counts evaluations with a host callback."""

    def __init__(self):
        self.calls = 0

    def apply(self, variables, x, labels, train=False):
        del variables, train

        def count(_):
            self.calls += 1

        jax.debug.callback(count, labels)
        return jnp.zeros_like(x)


@pytest.mark.parametrize(
    "method,fields",
    [
        ("pc", {}),
        ("ode", {"rtol": 1e-3, "atol": 1e-3}),
        ("dpm_solver", {"steps": 12, "dpm_order": 3, "dpm_method": "singlestep"}),
        ("ddim", {"steps": 7}),
        ("heun", {"steps": 5}),
        ("adaptive", {"reltol": 0.1}),
    ],
)
def test_get_sampling_fn_methods_report_real_nfe(method, fields):
    config = ddpmpp_tiny.get_config()
    with config.unlocked():
        config.sampling.method = method
        config.sampling.update(fields)
    sde = sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    model = _CountingModel()
    fn = sampling.get_sampling_fn(config, sde, model, (2, 4, 4, 1), lambda x: x, 1e-3)
    x, nfe = fn(jax.random.key(0), {})
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert x.shape == (2, 4, 4, 1) and np.all(np.isfinite(x))
    assert int(nfe) == model.calls > 0
    if method in ("dpm_solver", "ddim"):
        assert int(nfe) == fields["steps"]
    if method == "heun":
        assert int(nfe) == 2 * fields["steps"] - 1


def test_get_sampling_fn_unknown_method_lists_valid_ones():
    config = ddpmpp_tiny.get_config()
    config.sampling.method = "dpm-solver"
    with pytest.raises(ValueError, match="dpm_solver.*heun.*adaptive"):
        sampling.get_sampling_fn(config, sde_lib.VPSDE(N=25), None, (2, 4, 4, 1), None, 1e-3)


def test_sampling_fields_are_keywords_of_the_samplers():
    """Every `config.sampling` field that get_sampling_fn reads lands on a keyword argument of
    the method's factory, and every method has its fields."""
    assert (
        set(sampling.SAMPLING_FIELDS)
        == set(sampling.SAMPLER_FACTORIES)
        == set(sampling.SAMPLING_METHODS)
    )
    assert set(sampling.ODE_METHODS) <= set(sampling.SAMPLER_FACTORIES)
    for method, fields in sampling.SAMPLING_FIELDS.items():
        params = inspect.signature(sampling.SAMPLER_FACTORIES[method]).parameters
        assert set(fields) | {"eps", "inverse_scaler", "sharding"} <= set(params), method


def test_get_sampler_builds_by_name_without_a_config():
    sde = analytic.SDES["vpsde"]
    score_fn = analytic.exact_score_fn(sde)
    x, nfe = sampling.get_sampler("ddim", sde, score_fn, (8, 2), steps=5)(jax.random.key(0))
    y, _ = fast_samplers.get_ddim_sampler(sde, score_fn, (8, 2), steps=5)(jax.random.key(0))
    np.testing.assert_array_equal(x, y)
    assert int(nfe) == 5
    with pytest.raises(ValueError, match="pc.*ode.*dpm_solver.*ddim.*heun.*adaptive"):
        sampling.get_sampler("dpm", sde, score_fn, (8, 2))
