"""Tests for ddls.py: the latent energy and its gradient, the Langevin chain against a known
Gaussian target, the step-size schedule, and `run_ddls` end to end on the tiny DCGAN.

Analytic target: with d(G(z)) := -(z - m)^T A (z - m) / 2 + ||z||^2 / 2 the energy is
E(z) = (z - m)^T A (z - m) / 2, so exp(-E) is N(m, A^-1).
"""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax import numpy as jnp

import datasets
import utils
from configs.testing import dcgan_tiny
from experiments import ddls as ddls_experiment
from experiments import extractor
from experiments import gan as gan_lib
from samplers import ddls
from training import sample_eval

M = np.array([1.0, -0.5, 0.25])
A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.5]])


def gaussian_logit_fn(m=M, a=A):
    m, a = jnp.asarray(m), jnp.asarray(a)

    def logit_fn(z):
        r = z - m
        return -0.5 * jnp.einsum("bi,ij,bj->b", r, a, r) + 0.5 * jnp.sum(z**2, axis=-1)

    return logit_fn


def test_energy_gradient_matches_central_differences():
    """grad E of a nonlinear logit (a random tanh MLP) vs central differences, float64."""
    with jax.enable_x64():
        w1 = jax.random.normal(jax.random.key(0), (5, 16), jnp.float64)
        w2 = jax.random.normal(jax.random.key(1), (16,), jnp.float64)
        logit_fn = lambda z: jnp.tanh(z @ w1) @ w2
        z = jax.random.normal(jax.random.key(2), (3, 5), jnp.float64)
        grad = ddls.get_energy_grad_fn(logit_fn)(z)
        h = 1e-6
        fd = np.zeros((3, 5))
        for j in range(5):
            dz = jnp.zeros_like(z).at[:, j].set(h)
            fd[:, j] = (ddls.energy(z + dz, logit_fn) - ddls.energy(z - dz, logit_fn)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)
        # E = ||z||^2 / 2 - d: the prior part alone is z.
        np.testing.assert_allclose(ddls.get_energy_grad_fn(lambda z: 0.0 * z[:, 0])(z), z)


def test_chain_recovers_gaussian_target():
    """8192 chains of 900 steps from N(0, I) (eps 0.1 decayed x0.3 every 300 steps, ending at
    0.009): mean and covariance of the final z match N(m, A^-1). Standard errors with 8192
    chains: ~0.011 for the mean and <= 0.016 for covariance entries; tolerances ~4.5 SE plus the
    O(eps) bias of unadjusted Langevin (~0.2% at eps 0.009)."""
    sampler = ddls.get_ddls_sampler(
        gaussian_logit_fn(), step_size=0.1, n_steps=900, decay=0.3, decay_every=300,
        host_loop=False,
    )  # fmt: skip
    z0 = jax.random.normal(jax.random.key(0), (8192, 3))
    z, _, eps = sampler(jax.random.key(1), z0)
    z = np.asarray(z, np.float64)
    np.testing.assert_allclose(z.mean(0), M, atol=0.05)
    np.testing.assert_allclose(np.cov(z.T), np.linalg.inv(A), atol=0.07)
    assert eps[-1] == pytest.approx(0.009, rel=1e-5)


def test_chain_has_the_stationary_variance_of_the_stated_update():
    """With a large constant step the unadjusted chain is biased in a known way: for
    E = lam z^2 / 2, z <- (1 - eps lam / 2) z + sqrt(eps) n has stationary variance
    1 / (lam (1 - eps lam / 4)). eps = 0.5, lam = 2: 2/3 (the target's is 1/2), so a
    wrong factor on the gradient or the noise would fail here."""
    lam, eps = 2.0, 0.5
    logit_fn = gaussian_logit_fn(np.zeros(1), np.array([[lam]]))
    sampler = ddls.get_ddls_sampler(logit_fn, step_size=eps, n_steps=60, host_loop=False)
    z, _, _ = sampler(jax.random.key(3), jnp.zeros((20000, 1)))
    expected = 1.0 / (lam * (1 - eps * lam / 4))
    # SE of a variance with n = 20000: sqrt(2 / n) * var ~ 0.0067.
    np.testing.assert_allclose(np.var(np.asarray(z)), expected, atol=0.03)


@pytest.mark.parametrize("host_loop", [False, True])
def test_step_size_schedule_and_records_match_a_replayed_chain(host_loop):
    """The sizes actually used are step_size * decay ** (i // decay_every); the final z and
    the records equal a host-side replay of the Langevin update with those sizes and the same noise."""
    step_size, decay, every, n = 0.2, 0.5, 3, 8
    logit_fn = gaussian_logit_fn()
    sampler = ddls.get_ddls_sampler(logit_fn, step_size=step_size, n_steps=n, decay=decay,
                                    decay_every=every, record_steps=(8, 0, 3, 3),
                                    host_loop=host_loop)  # fmt: skip
    z0 = jax.random.normal(jax.random.key(0), (4, 3))
    key = jax.random.key(5)
    z, records, eps_used = sampler(key, z0)
    expected_eps = [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]  # by hand
    np.testing.assert_allclose(eps_used, expected_eps, rtol=1e-6)
    np.testing.assert_allclose(ddls.step_sizes(step_size, n, decay, every), expected_eps, rtol=1e-6)
    # Replay: chain b's noise at step i is normal(fold_in(key_b, i)), key_b = split(key)[b].
    keys = jax.random.split(key, 4)
    grad_fn = ddls.get_energy_grad_fn(logit_fn)
    zr, replay = z0, {0: z0}
    for i, eps in enumerate(expected_eps):
        noise = jnp.stack([jax.random.normal(jax.random.fold_in(k, i), (3,)) for k in keys])
        zr = zr - 0.5 * eps * grad_fn(zr) + np.sqrt(eps) * noise
        replay[i + 1] = zr
    assert records.shape == (3, 4, 3)  # sorted, de-duplicated steps 0, 3, 8
    for r, step in zip(records, (0, 3, 8)):
        np.testing.assert_allclose(r, replay[step], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, replay[8], rtol=1e-5, atol=1e-6)


def test_chains_do_not_depend_on_the_batch_they_run_in():
    sampler = ddls.get_ddls_sampler(gaussian_logit_fn(), step_size=0.05, n_steps=5)
    z0 = jax.random.normal(jax.random.key(0), (6, 3))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(6))
    whole, _, _ = sampler(keys, z0)
    part, _, _ = sampler(keys[2:5], z0[2:5])
    np.testing.assert_allclose(part, whole[2:5], rtol=1e-6, atol=1e-7)
    other, _, _ = sampler(jax.random.key(2), z0)
    assert not np.allclose(other, whole)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(record_steps=(0, 11)), "record_steps"),
        (dict(record_steps=(-1,)), "record_steps"),
        (dict(step_size=0.0), "step_size"),
        (dict(decay_every=-2), "decay_every"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    settings = {"step_size": 0.1, "n_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        ddls.get_ddls_sampler(gaussian_logit_fn(), **settings)


# --------------------------------------------------------------------------------------------
# run_ddls end to end.


@pytest.fixture(scope="module")
def trained_tiny_gan(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 32)
    data_path = str(tmp_path_factory.mktemp("ddls_data") / "data.npz")
    np.savez(data_path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    config = dcgan_tiny.get_config()
    config.data.path = data_path
    config.training.n_iters = 2
    workdir = str(tmp_path_factory.mktemp("ddls_gan"))
    gan_lib.train(config, workdir)
    return config, workdir


def test_run_ddls_writes_csv_plot_grids_and_summary(tmp_path, trained_tiny_gan, monkeypatch):
    config, source = trained_tiny_gan
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    seen = []

    def fake_metrics(config, samples_uint8):
        seen.append(samples_uint8)
        return {"fd_stub": float(np.mean(samples_uint8))}

    monkeypatch.setattr(sample_eval, "sample_metrics", fake_metrics)
    rows = ddls_experiment.run_ddls(config, workdir)
    folder = os.path.join(workdir, "ddls")
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert [r["step_size"] for r in rows] == pytest.approx([0.01, 0.005, 0.00125])
    assert all(s.shape == (16, 8, 8, 3) and s.dtype == np.uint8 for s in seen)
    with open(os.path.join(folder, "fd_vs_steps.csv")) as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [0, 3, 6]
    assert {"fd_stub", "mean_energy", "mean_logit", "step_size"} <= set(table[0])
    for step in (0, 3, 6):
        assert os.path.exists(os.path.join(folder, f"grid_step_{step}.png"))
    assert os.path.exists(os.path.join(folder, "fd_vs_steps.png"))
    summary = json.load(open(os.path.join(folder, "summary.json")))
    assert summary["gan_step"] == 2 and len(summary["rows"]) == 3
    # Step 0 is the plain GAN: G of the initial latents fold_in(z_key, index).
    state = gan_lib.restore_gan(config, workdir)
    generator, _, _, _ = gan_lib.build(config)
    z_key = jax.random.split(jax.random.key(config.seed + 2))[0]
    z0 = ddls_experiment.initial_latents(z_key, 0, 16, config.model.z_dim)
    plain = utils.to_uint8(datasets.get_data_inverse_scaler(config)(
        gan_lib.generate(generator, state, z0)))  # fmt: skip
    # Within one grey level: jitted vs eager float rounding can move a floor by one.
    np.testing.assert_allclose(seen[0].astype(int), plain.astype(int), atol=1)
    # The chain moved the latents: later images differ; the energy is finite.
    assert not np.array_equal(seen[0], seen[-1])
    assert all(np.isfinite(r["mean_energy"]) for r in rows)


def test_run_ddls_with_offline_extractor(tmp_path, trained_tiny_gan):
    config, source = trained_tiny_gan
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    data = np.load(config.data.path)
    extractor_dir = str(tmp_path / "extractor")
    extractor.train_feature_extractor(
        data["x_train"], data["y_train"], 10, extractor_dir, steps=2, batch_size=8, name="tiny"
    )
    config = config.copy_and_resolve_references()
    config.eval.feature_extractor_path = extractor_dir
    rows = ddls_experiment.run_ddls(config, workdir, eval_folder="ddls_fd")
    assert all(np.isfinite(r["fd_tiny"]) and r["fd_tiny"] >= 0 for r in rows)


def test_run_ddls_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="No restorable GAN checkpoint"):
        ddls_experiment.run_ddls(dcgan_tiny.get_config(), str(tmp_path))
