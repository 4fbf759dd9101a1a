"""Controllable generation against closed forms: conditional sampling, inpainting, colorization.

  * Class-conditional: data is an equal mixture of N(mu_k, S^2 I), k = 0, 1, in 2-D. Each p_t is
    the mixture of the two Gaussian marginals, whose score and component posterior p_t(k | x)
    (the exact noise-conditional classifier) are closed-form. score + grad log p_t(k | x) is the
    score of component k, so the guided sampler must return component k.
  * Inpainting: Gaussian data N(mu, Sigma) with a correlated Sigma; the unknown coordinates must
    follow the conditional Gaussian given the known ones, which must be kept exactly.
  * Colorization: the same per pixel for RGB, conditioned on the gray channel of the decoupled
    space `x M`, which must be kept.
Tolerances are about 4 standard errors plus discretisation slack (measured values in the
comments).
"""

import os

import analytic
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import workdir_helpers
from PIL import Image

import controllable_generation as cg
import sampling
import sde_lib
import utils
from experiments import classifier as cl_train
from experiments import controllable as cl
from models import wideresnet_noise_conditional as wrn
from sde_lib import batch_bcast
from training import devices, steps
from training.state import TrainState

# --------------------------------------------------------------------------------------------
# Closed forms.
# --------------------------------------------------------------------------------------------

MIX_MU = np.array([[-1.0, -1.0], [1.0, 1.0]], np.float32)  # component means [K, D]
MIX_S = 0.3


def _mean_var(sde, t, s2):
    """a(t) [B] and the per-direction variance a^2 s2 + std^2 ([B] or [B, D] for s2 [D])."""
    a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1), t.dtype), t)
    a = a[:, 0]
    s2 = jnp.asarray(s2)
    a_ = a.reshape((-1,) + (1,) * s2.ndim)
    std_ = std.reshape((-1,) + (1,) * s2.ndim)
    return a, a_**2 * s2 + std_**2


def mixture_logits(sde):
    """Exact log pi_k + log N(x; a mu_k, v I): logits of the posterior p_t(k | x)."""

    def logit_fn(x, t):
        a, var = _mean_var(sde, t, MIX_S**2)
        mean = a[:, None, None] * jnp.asarray(MIX_MU)[None]  # [B, K, D]
        sq = jnp.sum((x[:, None, :] - mean) ** 2, axis=-1)
        d = x.shape[-1]
        return -0.5 * sq / var[:, None] - 0.5 * d * jnp.log(2 * np.pi * var)[:, None]

    return logit_fn


def mixture_score(sde):
    """Exact score of the mixture marginal: sum_k p_t(k | x) (-(x - a mu_k) / v)."""
    logit_fn = mixture_logits(sde)

    def score_fn(x, t):
        a, var = _mean_var(sde, t, MIX_S**2)
        w = jax.nn.softmax(logit_fn(x, t), axis=-1)
        mean = a[:, None, None] * jnp.asarray(MIX_MU)[None]
        return jnp.sum(w[..., None] * -(x[:, None, :] - mean), axis=1) / var[:, None]

    return score_fn


def gaussian_score(sde, mu, cov):
    """Exact score of p_t for data N(mu, cov) on the last axis: -(a^2 cov + std^2 I)^-1 (x - a mu)."""
    lam, u = np.linalg.eigh(cov)
    mu, lam, u = (jnp.asarray(v, jnp.float32) for v in (mu, lam, u))

    def score_fn(x, t):
        a, var = _mean_var(sde, t, lam)  # var [B, D] in the eigenbasis
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (lam.shape[0],)
        y = (x - batch_bcast(a, x) * mu) @ u
        return (-y / var.reshape(shape)) @ u.T

    return score_fn


def conditional_gaussian(mu, cov, known, value):
    """Mean and covariance of the unknown coordinates given x[known] = value."""
    k, u = np.flatnonzero(known), np.flatnonzero(~known)
    gain = cov[np.ix_(u, k)] @ np.linalg.inv(cov[np.ix_(k, k)])
    mean = mu[u] + gain @ (value - mu[k])
    return mean, cov[np.ix_(u, u)] - gain @ cov[np.ix_(k, u)]


def _cov(d, seed, rho=0.8):
    """A correlated covariance with unit-ish scale."""
    a = np.random.default_rng(seed).normal(size=(d, d))
    c = rho * (a @ a.T) / d + (1 - rho) * np.eye(d)
    return 0.25 * c / np.mean(np.diag(c))


# --------------------------------------------------------------------------------------------
# Class-conditional sampling.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vesde", "vpsde"])
def test_conditional_sampler_recovers_chosen_component(name):
    sde = analytic.SDES[name]
    n = 2048
    grad_fn = cg.get_classifier_grad_fn(mixture_logits(sde))
    sampler = cg.get_pc_conditional_sampler(
        sde, mixture_score(sde), grad_fn, (n, 2), "reverse_diffusion", "langevin",
        eps=analytic.SAMPLING_EPS[name],
    )  # fmt: skip
    labels = jnp.arange(n) % 2
    x, nfe = sampler(jax.random.key(0), labels)
    x, labels = np.asarray(x), np.asarray(labels)
    dist = np.linalg.norm(x[:, None, :] - MIX_MU[None], axis=-1)
    assert np.mean(np.argmin(dist, -1) == labels) > 0.97  # measured 1.000
    for k in (0, 1):
        xk = x[labels == k]
        # 1024 samples: standard error of the mean 0.3 / 32 = 0.009; measured <= 0.014, 3.9 %.
        np.testing.assert_allclose(xk.mean(0), MIX_MU[k], atol=0.04)
        np.testing.assert_allclose(xk.std(0), MIX_S, rtol=0.08)
    assert nfe == 2 * sde.N


def test_conditional_sampler_scale_zero_is_the_unconditional_sampler():
    """scale=0 ignores the classifier and reproduces sampling.get_pc_sampler bit for bit,
    which samples both components of the mixture."""
    sde = analytic.SDES["vesde"]
    shape = (512, 2)
    kw = dict(eps=1e-5, snr=0.16)
    grad_fn = cg.get_classifier_grad_fn(mixture_logits(sde))
    pc = (sde, mixture_score(sde), grad_fn, shape, "reverse_diffusion", "langevin")
    cond = cg.get_pc_conditional_sampler(*pc, scale=0.0, host_loop=False, **kw)
    plain = sampling.get_pc_sampler(
        sde, mixture_score(sde), shape, "reverse_diffusion", "langevin", **kw
    )
    labels = jnp.zeros(shape[0], jnp.int32)
    x, _ = cond(jax.random.key(3), labels)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(plain(jax.random.key(3))[0]))
    # The host-loop driver (the CPU default) runs the same levels with the same keys.
    for scale in (0.0, 1.0):
        host = cg.get_pc_conditional_sampler(*pc, scale=scale, host_loop=True, **kw)
        device = cg.get_pc_conditional_sampler(*pc, scale=scale, host_loop=False, **kw)
        np.testing.assert_allclose(
            host(jax.random.key(4), labels)[0], device(jax.random.key(4), labels)[0], atol=1e-4
        )
    assert 0.4 < float(np.mean(x[:, 0] > 0)) < 0.6


def _tiny_conditional(**kw):
    """A guided sampler on the analytic mixture with N = 10 levels (fast in both drivers)."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
    grad_fn = cg.get_classifier_grad_fn(mixture_logits(sde))
    return cg.get_pc_conditional_sampler(
        sde, mixture_score(sde), grad_fn, (64, 2), "reverse_diffusion", "langevin", eps=1e-5, **kw
    )


def test_conditional_device_and_host_loops_agree():
    """The `lax.fori_loop` driver and the host loop over jitted `pc_step` run the same levels with
    the same keys: equal samples up to float rounding (measured: bit-identical on this setup)."""
    labels = jnp.arange(64) % 2
    device = _tiny_conditional(host_loop=False)(jax.random.key(7), labels)
    host = _tiny_conditional(host_loop=True)(jax.random.key(7), labels)
    assert device[1] == host[1] == 2 * 10
    np.testing.assert_allclose(host[0], device[0], rtol=1e-5, atol=1e-5)


def _count_pc_calls(monkeypatch):
    """Wraps `sampling.pc_loop` / `pc_step` (looked up at call time) with trace-time counters."""
    calls = {"pc_loop": 0, "pc_step": 0}
    for name in calls:
        fn = getattr(sampling, name)

        def counted(*args, _fn=fn, _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(sampling, name, counted)
    return calls


@pytest.mark.parametrize("mode", ["device", "host"])
def test_loops_env_picks_the_conditional_driver(monkeypatch, mode):
    """`host_loop=None` follows `$SCORE_SDE_LOOPS` (utils.device_loops): 'device' runs
    `sampling.pc_loop` (lax.fori_loop) even on CPU, 'host' steps `sampling.pc_step` from Python;
    an explicit `host_loop` overrides the environment."""
    monkeypatch.setenv(utils.LOOPS_ENV, mode)
    labels = jnp.zeros(64, jnp.int32)
    calls = _count_pc_calls(monkeypatch)
    _tiny_conditional()(jax.random.key(0), labels)
    assert calls["pc_loop"] == (mode == "device") and calls["pc_step"] >= 1
    calls.update(pc_loop=0, pc_step=0)
    _tiny_conditional(host_loop=mode == "device")(jax.random.key(0), labels)
    assert calls["pc_loop"] == (mode == "host")


# One tiny WRN (depth 10, width 1) for all classifier tests: XLA:CPU compiles random inits slowly.
TINY_WRN = wrn.WideResnet(depth=10, widen_factor=1, num_classes=2, temb_dim=32)


@pytest.fixture(scope="module")
def tiny_wrn_params():
    init = jax.jit(TINY_WRN.init)
    return init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), jnp.ones(1))["params"]


def test_classifier_grad_matches_finite_differences(tiny_wrn_params):
    """jax.grad of log softmax at the labels vs central differences along unit directions: on
    the tiny WRN (float32, h = 3e-3: the rounding of the two float32 log-probabilities over 2h,
    up to 2.5e-3 of the largest derivative at h = 1e-3, would decide the test; the AD gradient
    equals flax's `nn.GroupNorm` network's to 3.5e-7) and on the analytic posterior (float64,
    h = 1e-5)."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
    t = jnp.array([0.3, 0.7])
    logit_fn = cg.get_logit_fn(TINY_WRN, tiny_wrn_params, sde)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    _check_fd(logit_fn, x, t, jnp.array([1, 0]), h=3e-3, rtol=6e-3)
    with jax.enable_x64():
        x = jnp.array([[0.3, -0.2], [1.5, 0.4]], jnp.float64)
        _check_fd(
            mixture_logits(sde), x, t.astype(jnp.float64), jnp.array([0, 1]), h=1e-5, rtol=1e-6
        )


def _check_fd(logit_fn, x, t, labels, h, rtol):
    grad = jax.jit(cg.get_classifier_grad_fn(logit_fn))(x, t, labels)
    assert grad.shape == x.shape

    @jax.jit
    def log_p(x):  # per-example log p(label | x), [B]
        logp = jax.nn.log_softmax(logit_fn(x, t), axis=-1)
        return jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]

    for i in range(3):
        v = jax.random.normal(jax.random.key(10 + i), x.shape, x.dtype)
        v = v / jnp.linalg.norm(v.reshape(x.shape[0], -1), axis=-1).reshape(
            (-1,) + (1,) * (x.ndim - 1)
        )
        fd = (log_p(x + h * v) - log_p(x - h * v)) / (2 * h)
        ad = jnp.sum((grad * v).reshape(x.shape[0], -1), axis=-1)
        np.testing.assert_allclose(ad, fd, rtol=0, atol=rtol * float(jnp.abs(ad).max()))


def test_noise_level_is_ve_equivalent():
    t = jnp.array([0.1, 0.5, 1.0])
    ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(cg.noise_level(ve, t), ve.marginal_prob(jnp.zeros((3, 1)), t)[1])
    vp = sde_lib.VPSDE()
    a, std = vp.marginal_prob(jnp.ones((3, 1)), t)
    np.testing.assert_allclose(cg.noise_level(vp, t), std / a[:, 0], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Inpainting and colorization.
# --------------------------------------------------------------------------------------------


# Replacement imputation is only approximately the conditional: the Langevin corrector is what
# pulls the unknown part to p_t(x_u | x_k) (measured error of the first conditional mean:
# predictor-only 0.20 (VE and VP); PC with one corrector step 0.007 (VE) and 0.044 (VP); three
# steps 0.005 (VE) and 0.013 (VP)). VE is tested in the paper's setting, VP with 3 steps.
@pytest.mark.parametrize("name,n_steps", [("vesde", 1), ("vpsde", 3)])
def test_inpainter_keeps_known_and_samples_the_conditional(name, n_steps):
    sde = analytic.SDES[name]
    d, n = 4, 4096
    mu, cov = np.array([0.2, -0.1, 0.4, 0.0]), _cov(d, seed=1)
    known = np.array([True, False, True, False])
    value = np.array([0.5, 0.0, -0.3, 0.0])
    # The unknown entries of `data` are garbage: they must never leak into the result.
    data = jnp.asarray(np.where(known, value, 100.0), jnp.float32)[None].repeat(n, 0)
    inpainter = cg.get_pc_inpainter(
        sde, gaussian_score(sde, mu, cov), "reverse_diffusion", "langevin", n_steps=n_steps,
        eps=analytic.SAMPLING_EPS[name],
    )  # fmt: skip
    x, nfe = inpainter(jax.random.key(1), data, known[None].astype(np.float32))
    x = np.asarray(x)
    np.testing.assert_array_equal(x[:, known], np.asarray(data)[:, known])
    mean, c = conditional_gaussian(mu, cov, known, value[known])
    xu = x[:, ~known]
    # Conditional std 0.4-0.5: standard error of the mean 0.007, of the covariance ~0.005.
    np.testing.assert_allclose(xu.mean(0), mean, atol=0.025)
    np.testing.assert_allclose(np.cov(xu.T), c, atol=0.01, rtol=0.08)
    assert nfe == (1 + n_steps) * sde.N


def test_inpainter_with_empty_mask_is_the_unconditional_sampler():
    sde = analytic.SDES["vpsde"]
    score_fn = analytic.exact_score_fn(sde)
    data = jnp.full((64, 3), 7.0)
    inpainter = cg.get_pc_inpainter(sde, score_fn, "euler_maruyama", "langevin")
    x, _ = inpainter(jax.random.key(5), data, jnp.zeros((1, 3)))
    plain = sampling.get_pc_sampler(sde, score_fn, (64, 3), "euler_maruyama", "langevin")
    np.testing.assert_allclose(np.asarray(x), np.asarray(plain(jax.random.key(5))[0]), atol=1e-6)


def test_sharded_inpainter_matches_single_device():
    """Batch sharded over the 8 simulated devices: same samples (global Langevin norms)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=50)
    mu, cov = np.zeros(4), _cov(4, seed=3)
    data = jnp.ones((64, 4))
    mask = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    sharding = NamedSharding(devices.make_mesh(), P("data"))
    outs = [
        cg.get_pc_inpainter(sde, gaussian_score(sde, mu, cov), "reverse_diffusion", "langevin",
                            sharding=sh)(jax.random.key(0), data, mask)[0]
        for sh in (None, sharding)
    ]  # fmt: skip
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), atol=1e-5)


def test_color_matrix_is_orthogonal_with_gray_first_column():
    m = cg.COLOR_M.astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(m[:, 0], np.full(3, 1 / np.sqrt(3)), atol=1e-6)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    np.testing.assert_allclose(cg.couple(cg.decouple(x)), x, atol=1e-5)
    np.testing.assert_allclose(cg.decouple(x)[..., 0], x.sum(-1) / np.sqrt(3), atol=1e-5)


@pytest.mark.parametrize("name", ["vesde", "subvpsde"])
def test_colorizer_keeps_gray_and_samples_the_conditional_colours(name):
    sde = analytic.SDES[name]
    n = 2048
    mu, cov = np.array([0.3, 0.1, -0.2]), _cov(3, seed=2, rho=0.9)
    gray_value = 0.15  # R = G = B
    gray = jnp.full((n, 1, 2, 3), gray_value, jnp.float32)
    colorizer = cg.get_pc_colorizer(
        sde, gaussian_score(sde, mu, cov), "reverse_diffusion", "langevin",
        eps=analytic.SAMPLING_EPS[name],
    )  # fmt: skip
    x, _ = colorizer(jax.random.key(2), gray)
    y = np.asarray(cg.decouple(x)).reshape(-1, 3)
    np.testing.assert_allclose(y[:, 0], np.sqrt(3) * gray_value, atol=1e-5)
    # The decoupled data N(M^T mu, M^T cov M), conditioned on channel 0.
    m = cg.COLOR_M.astype(np.float64)
    mean, c = conditional_gaussian(m.T @ mu, m.T @ cov @ m, np.array([1, 0, 0], bool),
                                   np.array([np.sqrt(3) * gray_value]))  # fmt: skip
    # Conditional std ~0.2; measured: gray channel 1e-7, mean 0.005, covariance 0.0025.
    np.testing.assert_allclose(y[:, 1:].mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(y[:, 1:].T), c, atol=0.008, rtol=0.1)


def test_bad_inputs_raise_clear_errors():
    sde = analytic.SDES["vesde"]
    score_fn = analytic.exact_score_fn(sde)
    with pytest.raises(ValueError, match="valid predictors"):
        cg.get_pc_inpainter(sde, score_fn, "nope", "langevin")
    with pytest.raises(ValueError, match="valid correctors"):
        cg.get_pc_colorizer(sde, score_fn, "reverse_diffusion", "nope")
    with pytest.raises(ValueError, match="does not broadcast"):
        cg.get_pc_inpainter(sde, score_fn, "reverse_diffusion", "none")(
            jax.random.key(0), jnp.zeros((4, 3)), jnp.ones((4, 2))
        )
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        cg.get_pc_colorizer(sde, score_fn, "reverse_diffusion", "none")(
            jax.random.key(0), jnp.zeros((4, 8, 8, 1))
        )
    sampler = cg.get_pc_conditional_sampler(
        sde, score_fn, None, (4, 2), "reverse_diffusion", "none"
    )
    with pytest.raises(ValueError, match="labels must be integers"):
        sampler(jax.random.key(0), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="valid masks"):
        cl.get_mask("star", jax.random.key(0), (1, 8, 8, 3))
    with pytest.raises(ValueError, match="6 n \\+ 4"):
        wrn.WideResnet(depth=12).init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), jnp.ones(1))


def test_masks_mark_known_pixels():
    shape = (2, 8, 8, 3)
    half = cl.get_mask("half", jax.random.key(0), shape)
    assert half[:, :, :4].min() == 1 and half[:, :, 4:].max() == 0
    center = cl.get_mask("center", jax.random.key(0), shape)
    assert center[:, 2:6, 2:6].max() == 0 and center.sum() == 2 * 3 * (64 - 16)
    rand = cl.get_mask("random", jax.random.key(0), shape)
    assert np.all(rand == rand[..., :1]) and 0.3 < rand.mean() < 0.7


# --------------------------------------------------------------------------------------------
# The classifier: architecture and training.
# --------------------------------------------------------------------------------------------


def test_wideresnet_shapes_and_noise_dependence(tiny_wrn_params):
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    apply = jax.jit(lambda x, sigmas: TINY_WRN.apply({"params": tiny_wrn_params}, x, sigmas))
    logits = apply(x, jnp.full(3, 0.1))
    assert logits.shape == (3, 2) and np.all(np.isfinite(logits))
    assert np.abs(logits - apply(x, jnp.full(3, 10.0))).max() > 1e-3
    # WRN-28-10 of the released CIFAR-10 classifier: 4 blocks per group, widths 160/320/640.
    full = jax.eval_shape(
        lambda: wrn.WideResnet().init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), jnp.ones(1))
    )["params"]
    assert len(full["WideResnetGroup_2"]) == 4
    assert full["WideResnetGroup_2"]["WideResnetBlock_3"]["conv2"]["kernel"].shape == (
        3, 3, 640, 640,
    )  # fmt: skip
    assert full["GaussianFourierProjection_0"]["W"].shape == (128,)


def _toy_batch(n=32, size=8):
    """Class 0: bright left half; class 1: bright right half (mean-free after standardising)."""
    labels = np.arange(n) % 2
    cols = np.arange(size) < size // 2
    pattern = np.where(labels[:, None] == 0, cols[None], ~cols[None]).astype(np.float32)
    rng = np.random.default_rng(0)
    images = pattern[:, None, :, None] * np.ones((1, size, 1, 3)) - 0.5
    images = images + 0.1 * rng.normal(size=images.shape)
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


def test_classifier_training_step_reduces_loss(tiny_wrn_params):
    sde = sde_lib.VPSDE(N=100)
    tx = optax.adam(1e-3)
    params = jax.tree.map(jnp.copy, tiny_wrn_params)
    state = TrainState(jnp.asarray(0), params, jax.tree.map(jnp.copy, params), tx.init(params))
    loss_fn = cl_train.get_classifier_loss_fn(sde, TINY_WRN, eps=1e-3)
    images, labels = _toy_batch()
    base_key = jax.random.key(1)
    step = steps.make_train_step(loss_fn, tx, 0.9, base_key, has_aux=True)
    batch = (images[None], labels[None])  # one step per call
    # The loss under step 0's key (t and noise draws): the objective the first step descends.
    loss_at = jax.jit(lambda p: loss_fn(jax.random.fold_in(base_key, 0), p, (images, labels))[0])
    before = float(loss_at(state.params))
    state, metrics = step(state, batch)
    assert int(state.step) == 1
    np.testing.assert_allclose(float(metrics["loss"][0]), before, rtol=1e-5)
    assert float(loss_at(state.params)) < before - 0.05  # measured 1.13 -> 0.98
    for _ in range(60):
        state, metrics = step(state, batch)
    assert float(loss_at(state.params)) < 0.5 * before  # measured 0.29


# --------------------------------------------------------------------------------------------
# Command line, end to end on the tiny DDPM++ config.
# --------------------------------------------------------------------------------------------


def _tiny_workdir(tmp_path):
    return workdir_helpers.tiny_workdir(tmp_path, attn_resolutions=(8,), num_images=2)


def test_cli_inpaint_end_to_end(tmp_path):
    config, workdir, folder = _tiny_workdir(tmp_path)
    path = cl.run(config, workdir, "inpaint", image_folder=folder, num=2, mask="half")
    assert path == os.path.join(workdir, "controllable", "inpaint.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 10 + 2, 2 * 10 + 2, 3)  # rows: input | mask | result
    out = np.load(os.path.join(workdir, "controllable", "inpaint.npz"))
    known = out["mask"].astype(bool)
    np.testing.assert_array_equal(out["result"][known], out["input"][known])
    assert out["result"].shape == (2, 8, 8, 3)
    # Clear errors: bad mask, wrong image size, no checkpoint, no classifier.
    with pytest.raises(ValueError, match="valid masks"):
        cl.run(config, workdir, "inpaint", image_folder=folder, num=2, mask="star")
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(big / "a.png")
    with pytest.raises(ValueError, match="image_size=8"):
        cl.run(config, workdir, "inpaint", image_folder=str(big), num=1)
    with pytest.raises(FileNotFoundError, match="No score-model checkpoint"):
        cl.run(config, str(tmp_path / "empty"), "colorize", image_folder=folder, num=2)
    with pytest.raises(FileNotFoundError, match="No classifier checkpoint"):
        cl.run(config, workdir, "conditional", num=2)


@pytest.mark.slow
def test_train_classifier_resumes_exactly_and_guides_the_cli(tmp_path):
    """train_classifier for 4 steps equals 2 steps + a resumed 2; then --mode conditional."""
    config, workdir, _ = _tiny_workdir(tmp_path)
    config.data.path = str(tmp_path / "data.npz")
    rng = np.random.default_rng(0)
    np.savez(
        config.data.path,
        x_train=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 32),
        x_test=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 16),
    )
    cfg = cl_train.get_classifier_config()
    cfg.model.update(depth=10, widen_factor=1, temb_dim=32)
    cfg.training.update(batch_size=8, n_iters=4, log_freq=1, snapshot_freq=2)
    cfg.training.snapshot_freq_for_preemption = 2
    full = cl_train.train_classifier(config, str(tmp_path / "full"), cfg)
    cfg.training.n_iters = 2
    cl_train.train_classifier(config, str(tmp_path / "resumed"), cfg)
    cfg.training.n_iters = 4
    resumed = cl_train.train_classifier(config, str(tmp_path / "resumed"), cfg)
    assert int(full.step) == int(resumed.step) == 4
    jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
    path = cl.run(config, workdir, "conditional", classifier_workdir=str(tmp_path / "full"),
                  labels=[1, 3], num=2)  # fmt: skip
    samples = np.load(os.path.join(workdir, "controllable", "conditional.npz"))
    assert os.path.exists(path) and samples["result"].shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(samples["labels"], [1, 3])
