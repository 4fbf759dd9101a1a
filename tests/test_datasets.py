"""Tests for datasets.py: every source from small files in tmp_path, batching, determinism."""

import gzip
import os
import pathlib
import pickle
import tarfile
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import datasets
from configs.testing import ncsnpp_tiny

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def make_config(**data):
    """The tiny config (batch 4) with `data.*` overrides."""
    config = ncsnpp_tiny.get_config()
    config.data.random_flip = False
    config.data.update(data)
    return config


def collect(ds, max_items=None):
    """Concatenates the items of one iteration (images as uint8 when undequantised)."""
    items = [item for _, item in zip(range(max_items or 10**9), ds)]
    return (
        np.concatenate([i["image"].reshape(-1, *i["image"].shape[-3:]) for i in items]),
        np.concatenate([i["label"].reshape(-1) for i in items]),
        items,
    )


def to_uint8(images):
    return np.round(images * 255.0).astype(np.uint8)


def unique_images(n, h=32, w=32, c=3, seed=0):
    """n distinct random uint8 images (NHWC)."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def assert_same_examples(images, labels, ref_images, ref_labels):
    """The (image, label) pairs are exactly the reference ones, in any order."""
    assert len(images) == len(ref_images)
    ref = {x.tobytes(): int(y) for x, y in zip(ref_images, ref_labels)}
    got = {x.tobytes(): int(y) for x, y in zip(images, labels)}
    assert got == ref


@pytest.fixture
def cifar_npz(tmp_path):
    """20 train / 8 test random 32x32 RGB images with labels 0..9."""
    x_train, x_test = unique_images(20), unique_images(8, seed=1)
    y_train, y_test = np.arange(20) % 10, np.arange(8) % 10
    path = write_npz(tmp_path / "c.npz", x_train, y_train, x_test, y_test)
    return path, x_train, y_train, x_test, y_test


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


# --- offline sources ----------------------------------------------------------------------------


def write_idx(path, array, compress):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    x_train, x_test = unique_images(10, 28, 28, 1)[..., 0], unique_images(6, 28, 28, 1, 1)[..., 0]
    y_train, y_test = np.arange(10)[::-1], np.arange(6)
    write_idx(tmp_path / "train-images-idx3-ubyte", x_train, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y_train, compress)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x_test, compress)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y_test, compress)
    config = make_config(
        dataset="MNIST", source="idx", path=str(tmp_path), image_size=28, num_channels=1
    )
    config.eval.batch_size = 2
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval, info.image_shape) == (10, 6, (28, 28, 1))
    images, labels, items = collect(eval_ds)
    assert items[0]["image"].shape == (2, 28, 28, 1) and items[0]["image"].dtype == np.float32
    assert items[0]["label"].dtype == np.int32
    assert_same_examples(to_uint8(images[..., 0]), labels, x_test, y_test)
    images, labels, _ = collect(train_ds)  # 10 = 5 batches of 2: nothing dropped
    assert_same_examples(to_uint8(images[..., 0]), labels, x_train, y_train)


def cifar_rows(images):
    """NHWC -> the CIFAR row layout: 1024 R, 1024 G, 1024 B bytes per image."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar_archive(folder, binary, as_tar):
    """A tiny CIFAR-10 archive in the real layout: 5 train batches of 2, a test batch of 3."""
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": unique_images(2, seed=i) for i in range(1, 6)}
    batches["test_batch"] = unique_images(3, seed=9)
    labels = {k: rng.integers(0, 10, len(v)) for k, v in batches.items()}
    sub = folder / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    sub.mkdir(parents=True)
    for name, images in batches.items():
        rows = cifar_rows(images)
        if binary:
            records = np.concatenate([labels[name][:, None].astype(np.uint8), rows], axis=1)
            (sub / f"{name}.bin").write_bytes(records.tobytes())
        else:
            batch = {b"batch_label": name.encode(), b"labels": labels[name].tolist()}
            batch[b"data"] = rows
            (sub / name).write_bytes(pickle.dumps(batch, protocol=2))
    if not binary:
        meta = {b"label_names": [b"airplane"] * 10}
        (sub / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    location = sub
    if as_tar:
        location = folder / ("cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz")
        with tarfile.open(location, "w:gz") as tar:
            tar.add(sub, arcname=sub.name)
        for file in sub.iterdir():
            file.unlink()
        sub.rmdir()
    x_train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    y_train = np.concatenate([labels[f"data_batch_{i}"] for i in range(1, 6)])
    return location, (x_train, y_train), (batches["test_batch"], labels["test_batch"])


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
@pytest.mark.parametrize("as_tar", [True, False], ids=["tar", "folder"])
@pytest.mark.parametrize("point_at", ["parent", "location"])
def test_cifar_archive_round_trip(tmp_path, binary, as_tar, point_at):
    location, train, test = write_cifar_archive(tmp_path, binary, as_tar)
    path = tmp_path if point_at == "parent" else location
    config = make_config(source="cifar_archive", path=str(path), image_size=32)
    config.eval.batch_size = 1
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval) == (10, 3)
    images, labels, _ = collect(eval_ds)
    assert_same_examples(to_uint8(images), labels, *test)
    images, labels, _ = collect(train_ds)
    assert_same_examples(to_uint8(images), labels, *train)


def test_cifar_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (sub / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    config = make_config(source="cifar_archive", path=str(tmp_path))
    with pytest.raises(pickle.UnpicklingError, match="Refusing"):
        datasets.get_dataset(config)


def write_image_tree(root, splits, size=8):
    """PNG files `<split>/<class>/<i>.png`; returns {split: (images, labels)} (sorted classes)."""
    classes = ["zebra", "ant"]  # written unsorted: labels must follow the sorted order
    out = {}
    for s, split in enumerate(splits):
        images, labels = [], []
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                image = unique_images(1, size, size, 3, seed=100 * s + 10 * c + i)[0]
                Image.fromarray(image).save(root / split / cls / f"{i:04d}.png")
                images.append(image)
                labels.append(sorted(classes).index(cls))
        out[split] = (np.stack(images), np.array(labels))
    return out


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
def test_image_folder_round_trip(tmp_path, as_tar):
    root = tmp_path / "tree"
    ref = write_image_tree(root, ["train", "val"])  # 'val' is the fallback eval split
    path = root
    if as_tar:
        path = tmp_path / "tree.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(root, arcname="top")  # with a top-level folder, as many archives have
    config = make_config(source="image_folder", path=str(path), image_size=8)
    config.eval.batch_size = 2
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval, info.eval_split) == (6, 6, "val")
    images, labels, _ = collect(eval_ds)
    assert_same_examples(to_uint8(images), labels, *ref["val"])
    images, labels, _ = collect(train_ds)
    assert_same_examples(to_uint8(images), labels, *ref["train"])
    assert set(labels[:]) == {0, 1}


def test_image_folder_grayscale(tmp_path):
    ref = write_image_tree(tmp_path, ["train", "test"])
    config = make_config(source="image_folder", path=str(tmp_path), image_size=8, num_channels=1)
    config.eval.batch_size = 6
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    images, labels, _ = collect(eval_ds)
    gray = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in ref["test"][0]])
    assert images.shape == (6, 8, 8, 1)
    assert_same_examples(to_uint8(images[..., 0]), labels, gray, ref["test"][1])


def test_npz_round_trip(cifar_npz):
    path, x_train, y_train, x_test, y_test = cifar_npz
    config = make_config(path=path, image_size=32)
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval, info.source) == (20, 8, "npz")
    assert_same_examples(to_uint8(collect(eval_ds)[0]), collect(eval_ds)[1], x_test, y_test)
    assert_same_examples(to_uint8(collect(train_ds)[0]), collect(train_ds)[1], x_train, y_train)


@pytest.mark.parametrize("keys", [("images", "labels"), ("x", "y")])
def test_npz_single_split_grayscale(tmp_path, keys):
    x, y = unique_images(8, 28, 28, 1)[..., 0], np.arange(8)  # NHW
    np.savez(tmp_path / "g.npz", **{keys[0]: x, keys[1]: y})
    config = make_config(path=str(tmp_path / "g.npz"), image_size=28, num_channels=1)
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval, info.image_shape) == (8, 8, (28, 28, 1))
    images, labels, _ = collect(eval_ds)
    assert_same_examples(to_uint8(images[..., 0]), labels, x, y)


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


@pytest.mark.parametrize(
    "source, name", [("idx", "missing"), ("cifar_archive", "missing"), ("npz", "x.npz")]
)
@pytest.mark.parametrize("exists", [False, True], ids=["no-path", "empty-folder"])
def test_missing_offline_data_raises(tmp_path, source, name, exists):
    path = tmp_path / name
    if exists and source != "npz":
        path.mkdir()
    config = make_config(source=source, path=str(path))
    with pytest.raises(datasets.DatasetNotFoundError, match=str(path)) as error:
        datasets.get_dataset(config)
    assert isinstance(error.value, FileNotFoundError)
    assert "--config.data.source" in str(error.value)


def test_missing_image_folder_and_empty_path_raise(tmp_path):
    config = make_config(source="image_folder", path=str(tmp_path))  # exists, but no images
    with pytest.raises(datasets.DatasetNotFoundError, match=str(tmp_path)):
        datasets.get_dataset(config)
    config = make_config(source="image_folder", path="")
    with pytest.raises(datasets.DatasetNotFoundError, match="data.path is empty"):
        datasets.get_dataset(config)


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


# --- the offline data in ../shared (skipped when absent) ----------------------------------------


def test_shared_mnist_idx(shared_dir):
    path = shared_dir / "data" / "mnist"
    config = make_config(
        dataset="MNIST", source="idx", path=str(path), image_size=28, num_channels=1
    )
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval) == (60000, 10000)
    with gzip.open(path / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(), np.uint8, count=784, offset=16).reshape(28, 28)
    assert eval_ds.labels[0] == 7  # the first MNIST test digit is a 7
    np.testing.assert_array_equal(eval_ds.images[0, ..., 0], first)
    item = next(iter(train_ds))
    assert item["image"].shape == (4, 28, 28, 1) and 0 <= item["label"].min() <= 9


def test_shared_cifar10_exact_subset_npz(shared_dir):
    path = shared_dir / "data" / "cifar10" / "cifar10_exact_subset.npz"
    with np.load(path) as f:
        assert {"x_train", "x_test", "train_index", "y_train_full", "y_test_full"} <= set(f)
        x_test = f["x_test"]
    config = make_config(path=str(path), image_size=32)
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval) == (8068, 1017)
    # Labels come from y_*_full: test_batch starts 3, 8, 8, 0; data_batch_1 starts 6, 9, 9, 4.
    np.testing.assert_array_equal(eval_ds.labels[:4], [3, 8, 8, 0])
    np.testing.assert_array_equal(train_ds.labels[:4], [6, 9, 9, 4])
    images, labels, _ = collect(eval_ds, max_items=2)
    index = [int(np.flatnonzero((x_test == x).all(axis=(1, 2, 3)))[0]) for x in to_uint8(images)]
    np.testing.assert_array_equal(labels, eval_ds.labels[index])


@pytest.mark.slow
def test_shared_cifar10_jpeg_image_folder(shared_dir):
    data = shared_dir / "data" / "cifar10"
    config = make_config(
        source="image_folder", path=str(data / "CIFAR-10-images_jpeg.tar.gz"), image_size=32
    )
    train_ds, eval_ds, info = datasets.get_dataset(config, evaluation=True)
    assert (info.num_train, info.num_eval) == (50000, 10000)
    assert np.bincount(eval_ds.labels).tolist() == [1000] * 10
    # test_batch[0] is the 0th 'cat' (label 3) test image: test/cat/0000.jpg, at 3 * 1000.
    with np.load(data / "cifar10_exact_subset.npz") as f:
        exact = f["x_test"][0].astype(np.float32)
    assert eval_ds.labels[3000] == 3
    assert np.abs(eval_ds.images[3000] - exact).mean() < 13  # JPEG q75 error, README: ~6/255
    assert next(iter(train_ds))["image"].shape == (4, 32, 32, 3)


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_idx():
    config = make_config(
        dataset="FASHION_MNIST",
        source="idx",
        path=str(FASHION_MNIST_DIR),
        image_size=28,
        num_channels=1,
    )
    train_ds, _, info = datasets.get_dataset(config)
    assert (info.name, info.num_train, info.num_eval) == ("FashionMNIST", 60000, 10000)
    assert np.bincount(train_ds.labels).tolist() == [6000] * 10
    assert next(iter(train_ds))["image"].shape == (4, 28, 28, 1)
