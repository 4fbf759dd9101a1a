"""Tests for models/dcgan.py and experiments/gan.py: shapes, parameter counts, the GAN step, training.

Parameter counts are derived by hand from the architecture (dense + transposed convs with BN
for G; strided convs with BN after the first + dense for D). The train / resume / NaN tests
use configs/testing/dcgan_tiny.py on a random .npz data set.
"""

import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax import numpy as jnp

import utils
from configs.testing import dcgan_tiny
from experiments import gan as gan_lib
from models import dcgan


def _expected_counts(size, channels, ngf, ndf, z_dim):
    """Hand count: kernels + biases, and 2 (scale, bias) per BN channel."""
    base, n = dcgan.num_upsamplings(size)
    w = ngf * 2 ** (n - 1)
    g = z_dim * base * base * w + base * base * w + 2 * w
    cin = w
    for i in range(n):
        cout = channels if i == n - 1 else ngf * 2 ** (n - 2 - i)
        g += 16 * cin * cout + cout + (0 if i == n - 1 else 2 * cout)
        cin = cout
    d, cin = 0, channels
    for i in range(n):
        cout = ndf * 2**i
        d += 16 * cin * cout + cout + (0 if i == 0 else 2 * cout)
        cin = cout
    d += base * base * cin + 1
    return g, d


def _random_variables(module, *inputs):
    """Variables of `module` from `eval_shape` filled with NumPy normals (std 0.02) and the BN
    defaults: no PRNG program to compile, which keeps these shape tests fast on CPU."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "mean" in name or "bias" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 1), (32, 3), (28, 3)])
def test_dcgan_shapes_range_and_parameter_count(size, channels):
    generator = dcgan.Generator(image_size=size, num_channels=channels, ngf=16)
    discriminator = dcgan.Discriminator(image_size=size, ndf=8)
    z = jax.random.normal(jax.random.key(1), (5, 100))
    g_vars = _random_variables(generator, z)
    x = jax.jit(lambda v, z: generator.apply(v, z, train=False))(g_vars, z)
    assert x.shape == (5, size, size, channels)
    assert float(jnp.max(jnp.abs(x))) <= 1.0  # tanh output
    d_vars = _random_variables(discriminator, x)
    logits = jax.jit(lambda v, x: discriminator.apply(v, x, train=False))(d_vars, x)
    assert logits.shape == (5,) and bool(jnp.all(jnp.isfinite(logits)))
    g_count, d_count = _expected_counts(size, channels, 16, 8, 100)
    assert utils.count_params(g_vars["params"]) == g_count
    assert utils.count_params(d_vars["params"]) == d_count
    # BN everywhere in G but the output; in D everywhere but the input layer.
    n = dcgan.num_upsamplings(size)[1]
    assert len(g_vars["batch_stats"]) == n and len(d_vars["batch_stats"]) == n - 1


def test_eval_mode_discriminator_is_per_example_and_train_mode_updates_stats():
    """The DDLS energy needs d(G(z)) per example: eval mode must not couple the batch."""
    discriminator = dcgan.Discriminator(32, 8)
    x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    variables = _random_variables(discriminator, x)
    apply = jax.jit(lambda v, x: discriminator.apply(v, x, train=False))
    full = apply(variables, x)
    alone = jnp.concatenate([apply(variables, x[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(full, alone, rtol=1e-5, atol=1e-6)
    _, updates = discriminator.apply(variables, x, train=True, mutable=["batch_stats"])
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), updates["batch_stats"],
                         variables["batch_stats"])  # fmt: skip
    assert min(jax.tree.leaves(moved)) > 1e-6


@pytest.mark.parametrize("size", [3, 5, 6])
def test_unsupported_image_size_is_rejected(size):
    with pytest.raises(ValueError, match="image_size"):
        dcgan.num_upsamplings(size)


def test_get_gan_reads_config_and_rejects_other_models():
    config = dcgan_tiny.get_config()
    generator, discriminator = dcgan.get_gan(config)
    assert (generator.image_size, generator.num_channels, generator.ngf) == (8, 3, 8)
    assert (discriminator.image_size, discriminator.ndf) == (8, 8)
    config.model.name = "ncsnpp"
    with pytest.raises(ValueError, match="dcgan"):
        dcgan.get_gan(config)


# --------------------------------------------------------------------------------------------
# The GAN step on a toy 2-D problem.


class _MLP(nn.Module):
    out: int
    width: int = 32

    @nn.compact
    def __call__(self, x, train=True):
        del train
        h = nn.leaky_relu(nn.Dense(self.width)(x), 0.2)
        h = nn.leaky_relu(nn.Dense(self.width)(h), 0.2)
        return nn.Dense(self.out)(h)


class _ToyD(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        return _MLP(1)(x, train)[:, 0]


def _mixture_batch(i, n=128):
    """4 Gaussians at (+-2, +-2) with std 0.1."""
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(1), i))
    centres = jnp.array([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
    return centres[jax.random.randint(k1, (n,), 0, 4)] + 0.1 * jax.random.normal(k2, (n, 2))


def _toy_run(d_tx, g_tx, steps=40):
    generator, discriminator = _MLP(2), _ToyD()
    state = gan_lib.init_state(
        generator, discriminator, d_tx, jax.random.key(0), (2,), 4, g_tx=g_tx
    )
    step = jax.jit(gan_lib.make_gan_step(generator, discriminator, d_tx, 4, g_tx=g_tx))
    history = []
    for i in range(steps):
        state, metrics = step(state, _mixture_batch(i), jax.random.key(2))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


def test_gan_step_on_gaussian_mixture_trains_the_discriminator():
    """With G frozen (zero updates), the D half of the step must drive the D loss down and
    separate real from generated points; the loss starts near chance (2 log 2)."""
    state, history = _toy_run(optax.adam(1e-2, b1=0.5), optax.set_to_zero())
    d_losses = [h["d_loss"] for h in history]
    assert int(state.step) == 40
    assert abs(d_losses[0] - 2 * np.log(2)) < 0.4
    assert np.mean(d_losses[-5:]) < 0.3 * d_losses[0], d_losses
    assert history[-1]["d_real"] > 0.8 and history[-1]["d_fake"] < 0.2


def test_gan_step_on_gaussian_mixture_trains_the_generator():
    """With D frozen, the G half of the step must lower the non-saturating loss -log D(G(z))."""
    _, history = _toy_run(optax.set_to_zero(), optax.adam(1e-2, b1=0.5))
    g_losses = [h["g_loss"] for h in history]
    assert np.mean(g_losses[-5:]) < 0.5 * g_losses[0], g_losses
    assert history[-1]["d_fake"] > history[0]["d_fake"] + 0.2


def test_losses_match_definitions():
    real, fake = jnp.array([0.3, -1.2]), jnp.array([2.0, -0.5])
    expected_d = -np.mean(np.log(jax.nn.sigmoid(real))) - np.mean(np.log(1 - jax.nn.sigmoid(fake)))
    np.testing.assert_allclose(gan_lib.discriminator_loss(real, fake), expected_d, rtol=1e-6)
    expected_g = -np.mean(np.log(jax.nn.sigmoid(fake)))
    np.testing.assert_allclose(gan_lib.generator_loss(fake), expected_g, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# experiments.gan.train: checkpoints, resume, non-finite losses.


def make_npz(path, n=32, size=8, channels=3):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    return str(path)


def tiny(data_path, **overrides):
    config = dcgan_tiny.get_config()
    config.data.path = data_path
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_npz(tmp_path_factory.mktemp("gan_data") / "data.npz")


def _steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_path):
    workdir = str(tmp_path_factory.mktemp("gan2"))
    state = gan_lib.train(tiny(data_path, **{"training.n_iters": 2}), workdir)
    return workdir, state


def test_train_writes_checkpoints_and_resumes(tmp_path, data_path, two_step_run):
    workdir = str(tmp_path / "gan")
    shutil.copytree(two_step_run[0], workdir)
    assert int(two_step_run[1].step) == 2 and _steps(workdir) == [2]
    state = gan_lib.train(tiny(data_path), workdir)  # resumes at 2
    assert int(state.step) == 4 and _steps(workdir) == [2, 4]
    lines = utils.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # the resumed run continued at step 3
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in lines)
    assert all("steps_per_sec" in r for r in lines)
    for step in (2, 4):
        assert os.path.exists(os.path.join(workdir, "samples", f"iter_{step}", "sample.png"))
    restored = gan_lib.restore_gan(tiny(data_path), workdir)
    assert int(restored.step) == 4
    for a, b in zip(jax.tree.leaves(restored.g_params), jax.tree.leaves(state.g_params)):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(restored.d_params), jax.tree.leaves(two_step_run[1].d_params)
        )
    )


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(
    tmp_path, data_path, two_step_run, monkeypatch
):
    workdir = str(tmp_path / "nan")
    shutil.copytree(two_step_run[0], workdir)
    monkeypatch.setattr(gan_lib, "discriminator_loss", lambda r, f: jnp.nan * (r.mean() + f.mean()))
    with pytest.raises(FloatingPointError, match=r"Non-finite d_loss, g_loss at step 3 "):
        gan_lib.train(tiny(data_path), workdir)
    assert _steps(workdir) == [2]
    restored = gan_lib.restore_gan(tiny(data_path), workdir)
    for a, b in zip(jax.tree.leaves(restored.d_params), jax.tree.leaves(two_step_run[1].d_params)):
        np.testing.assert_array_equal(a, b)


def test_restore_without_checkpoint_names_the_problem(tmp_path, data_path):
    with pytest.raises(FileNotFoundError, match="--mode train"):
        gan_lib.restore_gan(tiny(data_path), str(tmp_path / "empty"))
