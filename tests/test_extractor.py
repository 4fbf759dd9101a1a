"""The offline feature extractor: training (experiments/extractor.py), save / load
(models/feature_extractor.py) and the offline FD / KID of evaluation.py in its feature space."""

import numpy as np
import pytest

import datasets
import evaluation
from configs.testing import ddpm_tiny
from experiments import extractor
from models import feature_extractor


def _squares(rng, n):
    """Two classes of 12x12 gray images: a dark or a bright square on a noisy background."""
    labels = rng.integers(0, 2, size=n)
    images = rng.normal(100.0, 25.0, size=(n, 12, 12, 1))
    for i, label in enumerate(labels):
        r, c = rng.integers(0, 6, size=2)
        images[i, r : r + 6, c : c + 6] = 20.0 if label == 0 else 230.0
    return np.clip(images, 0, 255).astype(np.uint8), labels


def offline_metrics(trained, data, samples):
    return evaluation.compute_offline_metrics(trained.features, data, samples, trained.name)


@pytest.fixture(scope="module")
def trained_extractor(tmp_path_factory):
    rng = np.random.default_rng(9)
    images, labels = _squares(rng, 512)
    test_images, test_labels = _squares(rng, 256)
    workdir = str(tmp_path_factory.mktemp("extractor"))
    trained = extractor.train_feature_extractor(
        images, labels, 2, workdir, steps=60, batch_size=32, seed=0, name="squares_cnn",
        eval_images=test_images, eval_labels=test_labels,
    )  # fmt: skip
    return trained, workdir, test_images, test_labels


def test_extractor_learns_synthetic_classes(trained_extractor):
    trained, _, test_images, test_labels = trained_extractor
    assert trained.accuracy(test_images, test_labels) > 0.9
    assert trained.info["eval_accuracy"] > 0.9


def test_extractor_save_load_round_trip(trained_extractor):
    trained, workdir, test_images, _ = trained_extractor
    loaded = feature_extractor.load(workdir)
    assert loaded.name == "squares_cnn" and loaded.image_shape == (12, 12, 1)
    np.testing.assert_array_equal(loaded.features(test_images), trained.features(test_images))
    # Batching (and the padding of the last batch) does not change the features.
    np.testing.assert_allclose(
        loaded.features(test_images, batch_size=100), trained.features(test_images), atol=1e-5
    )


def test_offline_metrics_zero_for_same_set_positive_across_classes(trained_extractor):
    trained, _, test_images, test_labels = trained_extractor
    same = offline_metrics(trained, test_images, test_images)
    assert set(same) == {"fd_squares_cnn", "kid_squares_cnn"}
    assert abs(same["fd_squares_cnn"]) < 1e-3
    # The unbiased KID of a set with itself is slightly negative: its cross term keeps the
    # diagonal k(x_i, x_i), which the within-set terms drop.
    assert same["kid_squares_cnn"] < 0
    dark, bright = test_images[test_labels == 0], test_images[test_labels == 1]
    across = offline_metrics(trained, dark, bright)
    half = offline_metrics(trained, dark[::2], dark[1::2])
    assert across["fd_squares_cnn"] > 10 * half["fd_squares_cnn"] > 0
    assert across["kid_squares_cnn"] > 10 * abs(half["kid_squares_cnn"])


def test_load_feature_extractor_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train_extractor"):
        feature_extractor.load(str(tmp_path))


def test_train_extractor_from_config_reads_datasets_pipeline(tmp_path):
    # The CLI path: labelled splits from datasets.get_dataset (npz source), float [0, 1] -> uint8.
    rng = np.random.default_rng(10)
    (x_train, y_train), (x_test, y_test) = _squares(rng, 256), _squares(rng, 64)
    np.savez(
        tmp_path / "squares.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )
    config = ddpm_tiny.get_config()
    config.data.update(
        dataset="MNIST", source="npz", path=str(tmp_path / "squares.npz"), image_size=12,
        num_channels=1, centered=False,
    )  # fmt: skip
    config.eval.batch_size = 16
    trained = extractor.train_from_config(
        config, str(tmp_path / "ext"), steps=40, batch_size=32, seed=0
    )
    assert trained.name == "mnist_cnn" and trained.image_shape == (12, 12, 1)
    assert trained.info["eval_accuracy"] > 0.9
    # The pipeline's float images quantise back to the stored uint8 pixels, with their labels.
    images, labels = extractor.labelled_arrays(datasets.get_dataset(config, evaluation=True)[1])
    stored = {x.tobytes(): y for x, y in zip(x_test, y_test)}
    assert len(images) == 64 and images.dtype == np.uint8
    assert all(stored[x.tobytes()] == y for x, y in zip(images, labels))
