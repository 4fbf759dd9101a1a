"""Tests for datasets_offline.py: each offline source from small files in tmp_path.

They go through datasets.get_dataset, the way training reads the data.
"""

import ast
import gzip
import logging
import os
import pathlib
import pickle
import re
import tarfile

import numpy as np
import pytest
from dataset_helpers import (
    assert_same_examples,
    collect,
    make_cifar_npz,
    make_config,
    to_uint8,
    unique_images,
    write_npz,
)
from PIL import Image

import datasets
import datasets_offline

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def cifar_npz(tmp_path):
    """20 train / 8 test random 32x32 RGB images with labels 0..9."""
    return make_cifar_npz(tmp_path)


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


# --- bad files: one clear error that names the file and the fix --------------------------------


def write_mnist_idx(folder, compress):
    """The four idx files (10 train / 6 test 28x28 images); returns the train images' file."""
    write_idx(folder / "train-images-idx3-ubyte", unique_images(10, 28, 28, 1)[..., 0], compress)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(10), compress)
    write_idx(folder / "t10k-images-idx3-ubyte", unique_images(6, 28, 28, 1, 1)[..., 0], compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(6), compress)
    return folder / ("train-images-idx3-ubyte" + (".gz" if compress else ""))


def idx_config(folder):
    return make_config(
        dataset="MNIST", source="idx", path=str(folder), image_size=28, num_channels=1
    )


def test_truncated_gz_idx_names_the_file(tmp_path):
    file = write_mnist_idx(tmp_path, compress=True)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # an interrupted download
    with pytest.raises(ValueError, match=re.escape(str(file))) as error:
        datasets.get_dataset(idx_config(tmp_path))
    assert "truncated or corrupt" in str(error.value)
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(error.value)


@pytest.mark.parametrize("keep", [6, 16 + 3 * 28 * 28], ids=["in-header", "in-pixels"])
def test_truncated_raw_idx_names_the_file_and_sizes(tmp_path, keep):
    file = write_mnist_idx(tmp_path, compress=False)
    file.write_bytes(file.read_bytes()[:keep])
    with pytest.raises(ValueError, match=re.escape(str(file))) as error:
        datasets.get_dataset(idx_config(tmp_path))
    message = str(error.value)
    assert "truncated" in message and "Re-download" in message
    if keep > 16:  # the header is whole: expected vs actual size
        assert f"needs {16 + 10 * 28 * 28} bytes, the file has {keep}" in message
    else:
        assert f"{keep} bytes, shorter than its 16-byte header" in message


@pytest.mark.parametrize("content", ["text", "npy", "truncated", "corrupt"])
def test_non_npz_file_is_refused_by_name(tmp_path, cifar_npz, content):
    path = tmp_path / "data.npz"
    valid = pathlib.Path(cifar_npz[0]).read_bytes()
    if content == "text":
        path.write_text("x_train,y_train\n1,2\n")
    elif content == "npy":
        np.save(tmp_path / "data.npy", unique_images(4))
        (tmp_path / "data.npy").rename(path)
    elif content == "truncated":
        path.write_bytes(valid[: len(valid) // 2])
    else:  # one pixel byte flipped: the zip's CRC check fails on reading x_train
        corrupt = bytearray(valid)
        corrupt[1000] ^= 0xFF
        path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        datasets.get_dataset(make_config(source="npz", path=str(path), image_size=32))
    assert ".npz archive (np.savez)" in str(error.value)


@pytest.mark.parametrize(
    "convert, read_as",
    [
        (lambda x: x.astype(np.float32) / 255, "[0, 1], scaled by 255"),
        (lambda x: x / 255.0, "[0, 1], scaled by 255"),  # float64
        (lambda x: x.astype(np.float32), "[0, 255]"),
        (lambda x: np.minimum(x + 0.4, 255.0), "[0, 255]"),  # rounded to the nearest level
        (lambda x: x.astype(np.int64), None),
    ],
    ids=["float32-unit", "float64-unit", "float32-255", "float64-255-unrounded", "int64"],
)
def test_npz_float_images_give_the_uint8_batches_not_black(
    tmp_path, cifar_npz, caplog, convert, read_as
):
    path, x_train, y_train, x_test, y_test = cifar_npz
    converted = write_npz(tmp_path / "f.npz", convert(x_train), y_train, convert(x_test), y_test)
    caplog.set_level(logging.INFO)
    batches = []
    for file in (path, converted):
        config = make_config(path=file, image_size=32, random_flip=True)
        config.training.batch_size = 8
        train_ds, eval_ds, _ = datasets.get_dataset(config, uniform_dequantization=True)
        batches.append(collect(train_ds, max_items=3)[0])
    np.testing.assert_array_equal(eval_ds.images, x_test)
    # A cast to uint8 would make [0, 1] floats all 0: training on black images.
    np.testing.assert_array_equal(batches[1], batches[0])
    assert batches[1].max() > 0.9
    if read_as:  # the range rule's guess is logged with the file
        assert f"x_train in {converted} has" in caplog.text and f"read as {read_as}" in caplog.text


def bad_images(dtype, lo, hi):
    x = np.zeros((4, 8, 8, 3), dtype)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = lo, hi
    return x


@pytest.mark.parametrize(
    "x_train, expected",
    [
        (bad_images(np.float32, -1.0, 1.0), "float32 values in [-1.0, 1.0]; expected uint8"),
        (bad_images(np.float32, 0.0, 300.0), "float32 values in [0.0, 300.0]; expected uint8"),
        (bad_images(np.float32, 0.0, np.nan), "NaN"),
        (bad_images(np.int16, 0, 300), "int16 values in [0, 300]; expected uint8"),
        (bad_images(np.int64, -3, 5), "int64 values in [-3, 5]; expected uint8"),
        (bad_images(bool, 0, 1), "dtype bool; expected uint8"),
        (np.zeros((4, 192), np.uint8), "shape (4, 192); expected images"),
    ],
    ids=[
        "float-minus-one",
        "float-over-255",
        "nan",
        "int16-over-255",
        "negative-int",
        "bool",
        "2d",
    ],
)
def test_npz_bad_image_values_are_refused_by_name(tmp_path, x_train, expected):
    path = write_npz(
        tmp_path / "data.npz", x_train, np.zeros(4), unique_images(4, 8, 8), np.zeros(4)
    )
    config = make_config(path=path, image_size=8)
    with pytest.raises(ValueError) as error:
        datasets.get_dataset(config)
    assert f"x_train in {path} has " in str(error.value)
    assert expected in str(error.value)
    if "[-1.0, 1.0]" in expected:
        assert "(x + 1) / 2" in str(error.value)


def test_npz_label_count_mismatch_is_refused(tmp_path):
    path = write_npz(tmp_path / "m.npz", unique_images(4), np.arange(3), unique_images(2), [0, 1])
    with pytest.raises(ValueError, match=re.escape(f"{path} (train) has 4 images but 3 labels")):
        datasets.get_dataset(make_config(path=path))


# --- loading: read once, read-only, one-way dependency --------------------------------------


def test_load_offline_reuses_the_last_load_until_the_file_changes(cifar_npz):
    path = cifar_npz[0]
    first = datasets_offline.load_offline("npz", path, 3)
    # get_dataset is called for train, eval and reference images: one read serves them all.
    assert datasets_offline.load_offline("npz", path, 3) is first
    x, y = first["train"]
    assert not x.flags.writeable and not y.flags.writeable  # shared, so nobody may write
    with pytest.raises(TypeError):
        first["train"] = (x, y)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = datasets_offline.load_offline("npz", path, 3)
    assert again is not first  # a changed file is read again
    np.testing.assert_array_equal(again["train"][0], x)


def test_offline_module_does_not_import_datasets_or_tensorflow():
    tree = ast.parse(pathlib.Path(datasets_offline.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m.split(".")[0] for m in imported} & {"datasets", "tensorflow"}


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
