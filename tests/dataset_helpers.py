"""Helpers shared by the data tests (test_datasets.py, test_datasets_offline.py)."""

import numpy as np

from configs.testing import ncsnpp_tiny


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


def make_cifar_npz(tmp_path):
    """20 train / 8 test random 32x32 RGB images with labels 0..9."""
    x_train, x_test = unique_images(20), unique_images(8, seed=1)
    y_train, y_test = np.arange(20) % 10, np.arange(8) % 10
    path = write_npz(tmp_path / "c.npz", x_train, y_train, x_test, y_test)
    return path, x_train, y_train, x_test, y_test
