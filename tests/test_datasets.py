"""Tests for datasets.py: scalers, resize ops, batching, determinism, the tf.data sources.

The offline loaders (idx, cifar_archive, image_folder, npz) are tested in test_datasets_offline.py.
"""

import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from dataset_helpers import (
    assert_same_examples,
    collect,
    make_cifar_npz,
    make_config,
    to_uint8,
    unique_images,
)

import datasets


@pytest.fixture
def cifar_npz(tmp_path):
    """20 train / 8 test random 32x32 RGB images with labels 0..9."""
    return make_cifar_npz(tmp_path)


# --- scalers and names ------------------------------------------------------------------------


def test_scalers_match_original():
    x = np.linspace(0.0, 1.0, 5)
    centered = make_config(centered=True)
    np.testing.assert_allclose(datasets.get_data_scaler(centered)(x), 2 * x - 1)
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(centered)(2 * x - 1), x)
    plain = make_config(centered=False)
    np.testing.assert_array_equal(datasets.get_data_scaler(plain)(x), x)
    np.testing.assert_array_equal(datasets.get_data_inverse_scaler(plain)(x), x)


@pytest.mark.parametrize(
    "name", ["FashionMNIST", "FASHION_MNIST", "fashion_mnist", "fashion-mnist"]
)
def test_dataset_names_case_insensitive(name):
    assert datasets.canonical_dataset_name(name) == "FashionMNIST"


def test_unknown_dataset_name_raises():
    with pytest.raises(NotImplementedError, match="IMAGENET"):
        datasets.canonical_dataset_name("IMAGENET")


# --- offline data vs the config ---------------------------------------------------------------


def test_channel_mismatch_raises(cifar_npz):
    config = make_config(path=cifar_npz[0], num_channels=1)
    with pytest.raises(ValueError, match="3 channels"):
        datasets.get_dataset(config)


# --- preprocessing ------------------------------------------------------------------------------


def test_resize_matches_original_op(cifar_npz):
    path, _, _, x_test, _ = cifar_npz
    config = make_config(path=path, image_size=16)
    config.eval.batch_size = 8
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    images, labels, _ = collect(eval_ds)
    ref = tf.image.resize(
        tf.image.convert_image_dtype(x_test, tf.float32), [16, 16], antialias=True
    )
    # Labels 0..7 identify the 8 test images.
    np.testing.assert_array_equal(images[np.argsort(labels)], ref.numpy())


def test_mnist_resized_to_32_keeps_one_channel(tmp_path):
    x = np.zeros((4, 28, 28), np.uint8)
    x[:, 10:18, 10:18] = 255
    np.savez(tmp_path / "m.npz", images=x, labels=np.zeros(4))
    config = make_config(dataset="MNIST", path=str(tmp_path / "m.npz"), num_channels=1)
    config.data.image_size = 32
    train_ds, _, info = datasets.get_dataset(config)
    item = next(iter(train_ds))
    assert item["image"].shape == (4, 32, 32, 1) and info.image_shape == (32, 32, 1)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0 + 1e-6
    assert item["image"][0, 16, 16, 0] > 0.99 and item["image"][0, 1, 1, 0] < 0.01


def test_celeba_and_lsun_resize_ops(tmp_path):
    def first_batch(name, x, image_size):
        """The resize op as get_dataset applies it to an in-memory split (one batch, no flips)."""
        path = tmp_path / f"{name}{image_size}.npz"
        np.savez(path, images=x)
        config = make_config(dataset=name, path=str(path), image_size=image_size)
        config.eval.batch_size = len(x)
        return next(iter(datasets.get_dataset(config, evaluation=True)[1]))["image"]

    x = np.full((2, 218, 178, 3), 200, np.uint8)  # CelebA's stored size
    celeba = first_batch("CELEBA", x, 64)
    assert celeba.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(celeba, 200 / 255, rtol=1e-6)
    x = np.random.default_rng(0).integers(0, 256, (1, 300, 400, 3), dtype=np.uint8)
    assert first_batch("LSUN", x, 128).shape == (1, 128, 128, 3)
    lsun = first_batch("LSUN", x, 64)
    assert lsun.shape == (1, 64, 64, 3) and lsun.min() >= 0 and lsun.max() <= 1
    # crop_resize clamps the bicubic overshoot instead of wrapping it around.
    step = np.zeros((1, 40, 40, 1), np.uint8)
    step[:, :, 20:] = 255
    out = datasets.crop_resize(tf.constant(step), 16).numpy()
    assert out[0, 8, -1, 0] == 255 and out[0, 8, 0, 0] == 0


def flip_config(path, random_flip):
    config = make_config(path=path, image_size=32, random_flip=random_flip)
    config.training.batch_size = config.eval.batch_size = 20
    return config


def flips(images, labels, x_train):
    """Per yielded image: None if unchanged, True if mirrored (labels identify the images)."""
    out = []
    for image, label in zip(to_uint8(images), labels):
        candidates = x_train[np.arange(20) % 10 == label]
        if any(np.array_equal(image, c) for c in candidates):
            out.append(False)
        else:
            assert any(np.array_equal(image, c[:, ::-1]) for c in candidates)
            out.append(True)
    return np.array(out)


def test_random_flip_only_in_training(cifar_npz):
    path, x_train, *_ = cifar_npz
    train_ds, eval_ds, _ = datasets.get_dataset(flip_config(path, True))
    images, labels, _ = collect(train_ds, max_items=3)
    flipped = flips(images, labels, x_train)
    assert 0.2 < flipped.mean() < 0.8  # 60 fair coins
    train_ds, _, _ = datasets.get_dataset(flip_config(path, True), evaluation=True)
    assert not flips(*collect(train_ds)[:2], x_train).any()
    train_ds, _, _ = datasets.get_dataset(flip_config(path, False))
    assert not flips(*collect(train_ds, max_items=3)[:2], x_train).any()


def test_uniform_dequantization(cifar_npz):
    path, x_train, *_ = cifar_npz
    config = flip_config(path, False)
    plain, _, _ = datasets.get_dataset(config)
    noisy, _, _ = datasets.get_dataset(config, uniform_dequantization=True)
    x, _, _ = collect(plain, max_items=2)
    x_deq, _, _ = collect(noisy, max_items=2)
    # (u + 255 x) / 256 with u ~ U[0, 1): pixel value k = 255 x lands in [k, k + 1) / 256.
    k = to_uint8(x).astype(np.float32)
    assert np.all(x_deq * 256 >= k - 1e-4) and np.all(x_deq * 256 < k + 1 + 1e-4)
    u = x_deq * 256.0 - x * 255.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005


# --- batching, hosts, determinism ---------------------------------------------------------------


def test_batch_dims_with_additional_dim(cifar_npz):
    train_ds, eval_ds, _ = datasets.get_dataset(make_config(path=cifar_npz[0]), additional_dim=3)
    item = next(iter(train_ds))
    assert item["image"].shape == (3, 4, 16, 16, 3) and item["label"].shape == (3, 4)
    assert next(iter(eval_ds))["image"].shape == (3, 4, 16, 16, 3)


def test_eval_passes_and_drop_remainder(cifar_npz):
    config = make_config(path=cifar_npz[0])
    config.eval.batch_size = 3  # 8 test images: 2 batches per pass, 2 images dropped
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    assert len(list(eval_ds)) == 2
    assert len(list(eval_ds)) == 2  # every iter() is a fresh pass
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True, num_epochs=5)
    assert len(list(eval_ds)) == 10
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True, additional_dim=3, num_epochs=5)
    assert len(list(eval_ds)) == 3  # 10 batches -> 3 whole items of 3
    config.eval.batch_size = 4  # 2 batches cover the 8 images exactly once per pass
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    assert sorted(collect(eval_ds)[1]) == sorted(cifar_npz[4])


def test_every_epoch_is_a_fresh_permutation(cifar_npz):
    config = make_config(path=cifar_npz[0], image_size=32)  # 20 train images, 5 batches/epoch
    train_ds, _, _ = datasets.get_dataset(config)
    images, _, _ = collect(train_ds, max_items=15)
    epochs = [to_uint8(images[i * 20 : (i + 1) * 20]) for i in range(3)]
    for epoch in epochs:
        assert len({x.tobytes() for x in epoch}) == 20
    assert not np.array_equal(epochs[0], epochs[1])


def test_process_count_splits_global_batch(cifar_npz, monkeypatch):
    config = make_config(path=cifar_npz[0], image_size=32, random_flip=True)
    config.training.batch_size = 8
    single, _, _ = datasets.get_dataset(config, uniform_dequantization=True)
    exact = [item["image"] for _, item in zip(range(6), single)]
    global_batches = [to_uint8(x) for x in exact]
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    hosts = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        train_ds, _, _ = datasets.get_dataset(config, uniform_dequantization=True)
        hosts.append([item["image"] for _, item in zip(range(6), train_ds)])
    for step, whole in enumerate(exact):
        # Host i holds the i-th block of the global batch, noise and flips included, so the
        # batch assembled across hosts equals the single-host batch exactly.
        np.testing.assert_array_equal(np.concatenate([hosts[0][step], hosts[1][step]]), whole)
    hosts = [[to_uint8(x) for x in h] for h in hosts]
    for step, whole in enumerate(global_batches):
        part0, part1 = hosts[0][step], hosts[1][step]
        assert part0.shape == part1.shape == (4, 32, 32, 3)
        keys0, keys1 = {x.tobytes() for x in part0}, {x.tobytes() for x in part1}
        assert not keys0 & keys1
        assert keys0 | keys1 == {x.tobytes() for x in whole}
    config.training.batch_size = 5
    with pytest.raises(ValueError, match="divisible"):
        datasets.get_dataset(config)


def test_same_seed_same_order_other_seed_other_order(cifar_npz):
    config = make_config(path=cifar_npz[0], random_flip=True)
    first = collect(datasets.get_dataset(config, uniform_dequantization=True)[0], 4)[0]
    again = collect(datasets.get_dataset(config, uniform_dequantization=True)[0], 4)[0]
    np.testing.assert_array_equal(first, again)
    config.seed += 1
    other = collect(datasets.get_dataset(config, uniform_dequantization=True)[0], 4)[0]
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("additional_dim", [None, 3])
def test_start_step_resumes_exactly(cifar_npz, additional_dim):
    config = make_config(path=cifar_npz[0], random_flip=True)
    kwargs = dict(additional_dim=additional_dim, uniform_dequantization=True)
    full = collect(datasets.get_dataset(config, **kwargs)[0], 12)[2]  # crosses epochs
    k = 7
    resumed = collect(datasets.get_dataset(config, start_step=k, **kwargs)[0], 5)[2]
    for a, b in zip(full[k:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


# --- missing data -------------------------------------------------------------------------------


def test_missing_tfrecords_raises(tmp_path):
    pattern = str(tmp_path / "ffhq-r08.tfrecords")
    config = make_config(dataset="FFHQ", source="tfrecords", tfrecords_path=pattern)
    with pytest.raises(datasets.DatasetNotFoundError, match="ffhq-r08.tfrecords"):
        datasets.get_dataset(config)


def test_missing_tfds_raises_quickly_without_download(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.TFDS_DOWNLOAD_ENV, raising=False)
    data_dir = tmp_path / "tfds"
    config = make_config(source="tfds", data_dir=str(data_dir))
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotFoundError, match=str(data_dir)) as error:
        datasets.get_dataset(config)
    assert time.monotonic() - start < 20
    assert datasets.TFDS_DOWNLOAD_ENV in str(error.value)
    assert not data_dir.exists() or not any(data_dir.rglob("*.tfrecord*"))


# --- tf.data sources ----------------------------------------------------------------------------


def write_tfrecords(path, images_chw):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images_chw:
            feature = {
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=image.shape)),
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


@pytest.fixture
def small_shuffle_buffer(monkeypatch):
    # The original's buffer of 10000 over a repeated 12-example file takes seconds to fill.
    monkeypatch.setattr(datasets, "SHUFFLE_BUFFER_SIZE", 16)


def test_tfrecords_chw_round_trip_and_resume(tmp_path, small_shuffle_buffer):
    x = unique_images(12, 16, 16, 3)
    write_tfrecords(tmp_path / "f.tfrecords", x.transpose(0, 3, 1, 2))
    pattern = str(tmp_path / "*.tfrecords")
    config = make_config(dataset="FFHQ", source="tfrecords", tfrecords_path=pattern)
    config.data.random_flip = True
    _, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert info.eval_split == info.train_split == "train"
    images, labels, items = collect(eval_ds)
    assert len(items) == 3 and items[0]["label"].dtype == np.int32 and not labels.any()
    assert_same_examples(to_uint8(images), labels, x, np.zeros(12))  # unflipped at evaluation
    kwargs = dict(additional_dim=2, uniform_dequantization=True)
    full = collect(datasets.get_dataset(config, **kwargs)[0], 4)[2]
    resumed = collect(datasets.get_dataset(config, start_step=2, **kwargs)[0], 2)[2]
    assert full[0]["image"].shape == (2, 4, 16, 16, 3)
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_tfds_pipeline_with_mock_data(monkeypatch, tmp_path, small_shuffle_buffer):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    config = make_config(source="tfds", data_dir=str(tmp_path), random_flip=True)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        train_ds, _, info = datasets.get_dataset(config, additional_dim=2)
        full = collect(train_ds, 3)[2]
        resumed = collect(datasets.get_dataset(config, additional_dim=2, start_step=2)[0], 1)[2]
        _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
        assert len(list(eval_ds)) == 3  # 12 images, batches of 4, one pass
    assert info.source == "tfds" and info.eval_split == "test"
    assert full[0]["image"].shape == (2, 4, 16, 16, 3) and full[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(full[2]["image"], resumed[0]["image"])
