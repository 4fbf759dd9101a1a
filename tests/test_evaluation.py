"""Tests for evaluation.py: Inception plumbing, FID / IS / KID, stats files, offline extractor.

Nothing is downloaded: a randomly initialised stand-in with the Inception module's interface
(float images in [-1, 1] -> {'pool_3': [B, 2048], 'logits': [B, 1008]}) is saved as a SavedModel
and loaded through the same `get_inception_model(path=...)` code path as the real module.
"""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import evaluation


class _StandInInception(tf.Module):
    """Random ReLU network with the TF-GAN Inception module's inputs and outputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = tf.random.Generator.from_seed(seed)
        self.w_pool = tf.Variable(gen.normal([8 * 8 * 3, 2048]) / 8.0)
        self.b_pool = tf.Variable(gen.normal([2048]) * 0.1)
        self.w_logits = tf.Variable(gen.normal([2048, 1008]) / 45.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        x = tf.reshape(tf.image.resize(images, [8, 8]), [-1, 8 * 8 * 3])
        pool_3 = tf.nn.relu(x @ self.w_pool + self.b_pool)
        return {"pool_3": pool_3, "logits": pool_3 @ self.w_logits}


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """(saved-model dir, in-memory stand-in) pair."""
    module = _StandInInception()
    path = str(tmp_path_factory.mktemp("inception"))
    tf.saved_model.save(module, path)
    return path, module


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Inception plumbing
# ----------------------------------------------------------------------------------------------


def test_run_inception_matches_module_on_rescaled_inputs(stand_in, images):
    path, module = stand_in
    model = evaluation.get_inception_model(path=path)
    out = evaluation.run_inception_jit(images, model)
    expected = module((images.astype(np.float32) - 127.5) / 127.5)
    assert out["pool_3"].shape == (6, 2048) and out["logits"].shape == (6, 1008)
    np.testing.assert_allclose(out["pool_3"], expected["pool_3"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits"], expected["logits"].numpy(), rtol=1e-5, atol=1e-5)


def test_run_inception_num_batches_and_distributed_agree(stand_in, images):
    model = evaluation.get_inception_model(path=stand_in[0])
    single = evaluation.run_inception_jit(images, model)
    chunked = evaluation.run_inception_jit(images, model, num_batches=3)
    distributed = evaluation.run_inception_distributed(images, model)
    for out in (chunked, distributed):
        for k in ("pool_3", "logits"):
            np.testing.assert_allclose(out[k], single[k], rtol=1e-5, atol=1e-5)


def test_run_inception_v3_mode_scales_to_unit_interval_and_drops_logits(stand_in, images):
    path, module = stand_in
    out = evaluation.run_inception_distributed(
        images, evaluation.get_inception_model(path=path), inceptionv3=True
    )
    assert out["logits"] is None
    expected = module(images.astype(np.float32) / 255.0)["pool_3"].numpy()
    np.testing.assert_allclose(out["pool_3"], expected, rtol=1e-5, atol=1e-5)


def test_run_inception_through_signature_only_module(tmp_path, stand_in, images):
    # TF1 Hub-format modules come back from tf.saved_model.load with signatures but no __call__.
    _, module = stand_in
    holder = tf.Module()
    holder.inner = module  # tracks the variables
    tf.saved_model.save(holder, str(tmp_path), signatures={"default": module.__call__})
    model = evaluation.get_inception_model(path=str(tmp_path))
    assert not callable(model)
    out = evaluation.run_inception_jit(images, model)
    expected = evaluation.run_inception_jit(
        images, evaluation.get_inception_model(path=stand_in[0])
    )
    np.testing.assert_allclose(out["logits"], expected["logits"], rtol=1e-5, atol=1e-5)


def test_run_inception_rejects_float_inputs(stand_in, images):
    model = evaluation.get_inception_model(path=stand_in[0])
    with pytest.raises(ValueError, match="uint8"):
        evaluation.run_inception_jit(images / 255.0, model)


def test_get_inception_model_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluation.get_inception_model(path=str(tmp_path / "nope"))


def test_quantize_floors_and_clips():
    x = np.array([-0.1, 0.0, 0.9999 / 255, 1.0 / 255, 0.5, 254.99 / 255, 1.0, 1.2])
    np.testing.assert_array_equal(evaluation.quantize(x), [0, 0, 0, 1, 127, 254, 255, 255])
    assert evaluation.quantize(x).dtype == np.uint8


# ----------------------------------------------------------------------------------------------
# FID / IS / KID
# ----------------------------------------------------------------------------------------------


def _gaussian_samples(rng, mean, cov, n):
    return rng.multivariate_normal(mean, cov, size=n)


def test_fid_of_a_set_with_itself_is_zero():
    acts = np.random.default_rng(1).normal(size=(500, 64)) ** 2  # skewed, like post-ReLU features
    assert abs(evaluation.compute_fid(acts, acts)) < 1e-3
    mu, sigma = evaluation.activation_statistics(acts)
    assert abs(evaluation.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_tfgan_fid_matches_numpy_closed_form_on_same_activations():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(size=(300, 32)) * 1.5 + 0.3
    expected = evaluation.frechet_distance(
        *evaluation.activation_statistics(a), *evaluation.activation_statistics(b)
    )
    np.testing.assert_allclose(evaluation.compute_fid(a, b), expected, rtol=1e-3)


def test_fid_estimate_matches_analytic_gaussian_fid():
    # N(0, I) vs N(m, diag(s^2)) in d=4: FID = |m|^2 + sum (1 - s)^2 exactly.
    rng = np.random.default_rng(3)
    d, n = 4, 20000
    m, s = np.full(d, 0.5), np.array([0.5, 1.0, 1.5, 2.0])
    analytic = m @ m + np.sum((1.0 - s) ** 2)  # = 1.0 + 1.5 = 2.5
    x = _gaussian_samples(rng, np.zeros(d), np.eye(d), n)
    y = _gaussian_samples(rng, m, np.diag(s**2), n)
    # Over 200 seeds at this n the estimate has std 0.033 and bias +0.004 (O(d/n));
    # 0.14 is about 4 standard deviations.
    assert abs(evaluation.compute_fid(x, y) - analytic) < 0.14


def test_inception_score_matches_hand_computation():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(50, 10)) * 3.0
    p_yx = np.exp(logits - logits.max(1, keepdims=True))
    p_yx /= p_yx.sum(1, keepdims=True)
    p_y = p_yx.mean(0)
    kl = np.sum(p_yx * (np.log(p_yx) - np.log(p_y)), axis=1)
    np.testing.assert_allclose(
        evaluation.compute_inception_score(logits), np.exp(kl.mean()), rtol=1e-6
    )
    # Identical predictions for every image give the minimum score, 1.
    np.testing.assert_allclose(evaluation.compute_inception_score(np.tile(logits[:1], (8, 1))), 1.0)


def _kid_by_hand(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed over explicit index pairs."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2.0 * kxy


def test_kid_matches_hand_computation_single_block():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(7, 5)) + 0.4
    expected = _kid_by_hand(x, y)
    np.testing.assert_allclose(evaluation.kernel_distance(x, y), expected, rtol=1e-10)
    np.testing.assert_allclose(evaluation.compute_kid(x, y), expected, rtol=1e-6)


def test_kid_block_average_matches_tfgan():
    # With more than max_block_size rows TF-GAN averages per-block estimates over contiguous
    # blocks of unequal size; our NumPy version must split identically.
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(23, 4)), rng.normal(size=(17, 4)) * 1.3
    tfgan_eval = evaluation.tfgan_eval()
    expected = tfgan_eval.kernel_classifier_distance_from_activations(
        tf.constant(x), tf.constant(y), max_block_size=5
    )
    np.testing.assert_allclose(
        evaluation.kernel_distance(x, y, max_block_size=5), expected, rtol=1e-10
    )
    # And by hand: 5 blocks; x sizes 4,4,5,5,5, y sizes 3,3,3,4,4.
    bx, by = np.cumsum([0, 4, 4, 5, 5, 5]), np.cumsum([0, 3, 3, 3, 4, 4])
    by_hand = np.mean([_kid_by_hand(x[bx[i] : bx[i + 1]], y[by[i] : by[i + 1]]) for i in range(5)])
    np.testing.assert_allclose(expected, by_hand, rtol=1e-10)


def test_kid_is_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert abs(evaluation.compute_kid(x, y)) < 0.05
    assert evaluation.compute_kid(x, y + 1.0) > 0.5


# ----------------------------------------------------------------------------------------------
# Dataset statistics
# ----------------------------------------------------------------------------------------------


def _stats_config(stats_path="", dataset="CIFAR10"):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"dataset": dataset, "image_size": 32, "category": ""})
    config.eval = ml_collections.ConfigDict({"stats_path": stats_path})
    return config


def test_load_dataset_stats_from_config_path(tmp_path):
    pools = np.random.default_rng(8).normal(size=(10, 2048)).astype(np.float32)
    path = tmp_path / "stats.npz"
    np.savez_compressed(path, pool_3=pools)
    np.testing.assert_array_equal(evaluation.load_dataset_stats(_stats_config(str(path))), pools)


def test_load_dataset_stats_default_path_is_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "assets" / "stats").mkdir(parents=True)
    pools = np.ones((3, 2048), np.float32)
    np.savez_compressed(tmp_path / "assets" / "stats" / "cifar10_stats.npz", pool_3=pools)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(evaluation.load_dataset_stats(_stats_config()), pools)


def test_load_dataset_stats_missing_file_names_paths_and_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        evaluation.load_dataset_stats(_stats_config(dataset="LSUN"))
    assert "assets/stats/lsun__32_stats.npz" in str(err.value)
    assert "--mode stats" in str(err.value)
    missing = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluation.load_dataset_stats(_stats_config(missing))
    with pytest.raises(ValueError, match="stats_path"):
        evaluation.load_dataset_stats(_stats_config(dataset="FFHQ"))


# ----------------------------------------------------------------------------------------------
# Offline feature extractor
# ----------------------------------------------------------------------------------------------


def test_tfgan_eval_leaves_sys_modules_unchanged():
    """TF-GAN's eval package is imported under stand-in parents, then sys.modules is restored:
    nothing global changes (an `import tensorflow_gan` elsewhere sees the real package)."""
    import sys

    before = {k for k in sys.modules if k.startswith("tensorflow_gan")}
    evaluation.tfgan_eval.cache_clear()
    tfgan = evaluation.tfgan_eval()
    assert callable(tfgan.frechet_classifier_distance_from_activations)
    assert {k for k in sys.modules if k.startswith("tensorflow_gan")} == before
