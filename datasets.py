"""Input pipeline: training and evaluation datasets from a config, plus the data scalers.

Mirrors `datasets.py` of yang-song/score_sde: the same datasets, splits and preprocessing
(resize ops, random flip, uniform dequantisation), with three additions:

* **Offline sources** (`config.data.source`): besides 'tfds' and the FFHQ / CelebA-HQ
  'tfrecords', data can come from MNIST-style 'idx' files, the CIFAR-10 python or binary
  archive ('cifar_archive'), an 'image_folder' (`<path>/<split>/<class>/*.png|jpg`, or a tar of
  that tree) or an 'npz' file. These load the split into memory as uint8 and iterate with NumPy,
  so they suit datasets of CIFAR / MNIST / SVHN size.
* **Deterministic order and exact resume.** The offline order is a pure function of
  (`config.seed`, split, epoch): every epoch is a fresh permutation of the split; global batch
  `g` is a slice of it, each host takes its contiguous block of that slice (host i: the i-th
  block, where `jax.make_array_from_process_local_data` places it) and flips and dequantisation
  noise come from a generator seeded by (seed, split, g), so the global batch does not depend on
  the number of hosts.
  `start_step=k` skips the first `k` training *items* (one item = one yielded `[*batch_dims]`
  batch, i.e. `additional_dim` steps when `additional_dim` is set), so a resumed run sees exactly
  the batches of an uninterrupted one. For 'tfds' / 'tfrecords' the tf.data pipeline is seeded
  (file order, shuffle buffer, stateless flips and noise keyed by the example counter,
  `options.deterministic = True`) and `start_step` is a `skip` before decoding; this is exact as
  long as tf.data itself is deterministic (same TF version and input files).
* **One clear error for missing data**: `DatasetNotFoundError` says what was looked for, where,
  and how to get it. Nothing is downloaded unless the environment variable
  `SCORE_SDE_TFDS_DOWNLOAD=1` allows `tfds` to `download_and_prepare`.

Items are dicts of NumPy arrays: `image` float32 in [0, 1] (uniformly dequantised if asked),
shape `[*batch_dims, H, W, C]`, and `label` int32 `[*batch_dims]` (0 for unlabelled datasets).
The scaler to [-1, 1] is applied by the trainer, not here, as in the original. Also as the
original: both datasets use `eval.batch_size` when `evaluation` and `training.batch_size`
otherwise, and random flips (when `data.random_flip`) apply to both unless `evaluation`.
Grayscale MNIST / Fashion-MNIST keep C=1 and are resized 28 -> `data.image_size` by the same
antialiased bilinear resize as CIFAR-10. An image-folder tar is decoded straight from the archive
(nothing is extracted; the archive may sit on a read-only disk).
"""

import dataclasses
import gzip
import io
import os
import pathlib
import pickle
import re
import tarfile

import jax
import numpy as np
from absl import logging

# Set to "1" to let get_dataset download and prepare a missing tfds dataset.
TFDS_DOWNLOAD_ENV = "SCORE_SDE_TFDS_DOWNLOAD"
# tf.data shuffle buffer, as the original (reduce it for large images).
SHUFFLE_BUFFER_SIZE = 10000

# Canonical dataset names, keyed by the lower-case name without '_' / '-'.
_CANONICAL = {
    "cifar10": "CIFAR10",
    "svhn": "SVHN",
    "celeba": "CELEBA",
    "lsun": "LSUN",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "ffhq": "FFHQ",
    "celebahq": "CelebAHQ",
}
# (train split, eval split) as in the original; FFHQ / CelebA-HQ evaluate on the train split.
_SPLITS = {
    "CIFAR10": ("train", "test"),
    "SVHN": ("train", "test"),
    "CELEBA": ("train", "validation"),
    "LSUN": ("train", "validation"),
    "MNIST": ("train", "test"),
    "FashionMNIST": ("train", "test"),
    "FFHQ": ("train", "train"),
    "CelebAHQ": ("train", "train"),
}
# Folder / key names accepted for the eval split of the offline sources, in order of preference.
_EVAL_SPLIT_ALIASES = ("test", "validation", "val", "valid")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_OFFLINE_HINT = (
    "Or train from local files with --config.data.source=<idx|cifar_archive|image_folder|npz> "
    "--config.data.path=<file or folder> (see datasets.py)."
)


class DatasetNotFoundError(FileNotFoundError):
    """The requested data is not on disk (and was not allowed to be downloaded)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What get_dataset built; replaces the original's tfds builder.

    Attributes:
      name: canonical dataset name ('CIFAR10', 'MNIST', ...).
      source: `config.data.source`.
      image_shape: (H, W, C) of the yielded images.
      num_train: examples in the train split (all hosts), or None when unknown (tfrecords).
      num_eval: examples in the eval split, or None when unknown.
      train_split: name of the train split.
      eval_split: name of the eval split.
      location: where the data was read from.
    """

    name: str
    source: str
    image_shape: tuple[int, int, int]
    num_train: int | None
    num_eval: int | None
    train_split: str
    eval_split: str
    location: str


def get_data_scaler(config):
    """Data normalizer: [0, 1] -> [-1, 1] if `config.data.centered`, else the identity."""
    if config.data.centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config):
    """Inverse of `get_data_scaler`."""
    if config.data.centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


def canonical_dataset_name(name: str) -> str:
    """Maps e.g. 'cifar10', 'FASHION_MNIST', 'fashion-mnist' to the canonical name."""
    key = re.sub(r"[_\-\s]", "", name).lower()
    if key not in _CANONICAL:
        raise NotImplementedError(
            f"Dataset {name!r} not supported; choose one of {sorted(_CANONICAL.values())}."
        )
    return _CANONICAL[key]


# --------------------------------------------------------------------------------------------
# TensorFlow image ops (rank 3 HWC or rank 4 NHWC tensors), as the original.
# --------------------------------------------------------------------------------------------


def _tf():
    """Imports TensorFlow and hides the GPUs from it, so that it never takes JAX's memory."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised already (e.g. by the caller); keep its setting.
        pass
    return tf


def crop_resize(image, resolution):
    """Centre-square crop, bicubic antialiased resize to `resolution`, cast to uint8."""
    tf = _tf()
    h, w = tf.shape(image)[-3], tf.shape(image)[-2]
    crop = tf.minimum(h, w)
    image = image[..., (h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2, :]
    image = tf.image.resize(
        image, (resolution, resolution), antialias=True, method=tf.image.ResizeMethod.BICUBIC
    )
    # Departs from the original's tf.cast, which wraps bicubic overshoot around (256.3 -> 0,
    # -3 -> 253); saturate_cast clamps instead and is equal for in-range values.
    return tf.saturate_cast(image, tf.uint8)


def resize_small(image, resolution):
    """Antialiased bilinear resize so that the shorter side equals `resolution`."""
    tf = _tf()
    h = tf.cast(tf.shape(image)[-3], tf.float64)
    w = tf.cast(tf.shape(image)[-2], tf.float64)
    ratio = resolution / tf.minimum(h, w)
    # The original reads the static shape; the dynamic one also serves images of varying size.
    size = tf.cast(tf.round(tf.stack([h * ratio, w * ratio])), tf.int32)
    return tf.image.resize(image, size, antialias=True)


def central_crop(image, size):
    """Crops the central `size` x `size` square."""
    tf = _tf()
    top = (tf.shape(image)[-3] - size) // 2
    left = (tf.shape(image)[-2] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _get_resize_op(name: str, image_size: int):
    """Returns the original's `resize_op` for a dataset: uint8 tensor -> float32 in [0, 1]."""
    tf = _tf()

    def to_float(img):
        return tf.image.convert_image_dtype(img, tf.float32)

    if name == "CELEBA":
        return lambda img: resize_small(central_crop(to_float(img), 140), image_size)
    if name == "LSUN" and image_size == 128:
        return lambda img: central_crop(resize_small(to_float(img), image_size), image_size)
    if name == "LSUN":
        return lambda img: to_float(crop_resize(img, image_size))
    if name in ("FFHQ", "CelebAHQ"):
        # The original does not resize these (the tfrecords hold the target resolution); we only
        # resize when the stored size differs, instead of failing later on a shape mismatch.
        def resize_if_needed(img):
            img = to_float(img)
            same = tf.reduce_all(tf.shape(img)[-3:-1] == image_size)
            return tf.cond(
                same,
                lambda: img,
                lambda: tf.image.resize(img, [image_size, image_size], antialias=True),
            )

        return resize_if_needed
    # CIFAR10, SVHN, and the grayscale MNIST / FashionMNIST (28 -> image_size by the same
    # antialiased bilinear resize; the original has no MNIST). Identity when sizes agree.
    return lambda img: tf.image.resize(to_float(img), [image_size, image_size], antialias=True)


def _numpy_preprocess(name: str, image_size: int):
    """The resize op on NumPy batches: uint8 [N, h, w, C] -> float32 [N, S, S, C] in [0, 1]."""
    scale = np.float32(1.0 / 255.0)  # what tf.image.convert_image_dtype multiplies by

    def preprocess(x):
        # Fast path: tf.image.resize to the same size is the identity (bit-exact).
        if name not in ("CELEBA", "LSUN") and x.shape[1] == x.shape[2] == image_size:
            return x.astype(np.float32) * scale
        return np.array(_get_resize_op(name, image_size)(x), np.float32)

    return preprocess


# --------------------------------------------------------------------------------------------
# Offline loaders: each returns {split: (images uint8 [N, H, W, C], labels int32 [N])}.
# --------------------------------------------------------------------------------------------


def _not_found(what: str, where, hint: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{what} not found in {where}. {hint} {_OFFLINE_HINT}")


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parses an idx file (big-endian header: magic 0x0000 08 ndim, then ndim uint32 sizes)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{source} is not a uint8 idx file (bad magic {data[:4]!r}).")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_idx(path: pathlib.Path, num_channels: int) -> dict:
    """MNIST-style idx files (`train-images-idx3-ubyte[.gz]`, `t10k-...`) in folder `path`."""
    del num_channels
    splits = {}
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        arrays = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            names = [f"{p}-{kind}{gz}" for p in prefixes for gz in (".gz", "")]
            found = [path / n for n in names if (path / n).is_file()]
            if not found:
                raise _not_found(
                    f"idx file {names[0]} (or {', '.join(names[1:])})",
                    path,
                    "Put the four MNIST / Fashion-MNIST idx files there (Debian: `apt-get install "
                    "dataset-fashion-mnist` gives /usr/share/datasets/fashion-mnist).",
                )
            opener = gzip.open if found[0].suffix == ".gz" else open
            with opener(found[0], "rb") as f:
                arrays.append(_parse_idx(f.read(), str(found[0])))
        images, labels = arrays
        splits[split] = (images[..., None], labels.astype(np.int32))
    return splits


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that only builds NumPy arrays (no arbitrary code)."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        module = re.sub(r"^numpy\.core\b", "numpy._core", module)  # Python 2 / NumPy 1 pickles
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from a CIFAR batch.")
        return super().find_class(module, name)


def _read_members(location: pathlib.Path, names: list[str]) -> dict[str, bytes]:
    """Reads files by base name from a folder or from a tar archive (any compression)."""
    if location.is_dir():
        return {n: (location / n).read_bytes() for n in names if (location / n).is_file()}
    out = {}
    with tarfile.open(location, "r:*") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and base in names and base not in out:
                out[base] = tar.extractfile(member).read()
    return out


def _load_cifar_archive(path: pathlib.Path, num_channels: int) -> dict:
    """CIFAR-10 python (pickle) or binary version, as the .tar.gz or the extracted folder."""
    del num_channels
    candidates = [path] if path.is_file() or (path / "test_batch").exists() else []
    candidates += [path / "test_batch.bin"] if (path / "test_batch.bin").exists() else []
    candidates += [
        path / n
        for n in (
            "cifar-10-batches-py",
            "cifar-10-python.tar.gz",
            "cifar-10-batches-bin",
            "cifar-10-binary.tar.gz",
        )
        if (path / n).exists()
    ]
    if not candidates:
        raise _not_found(
            "CIFAR-10 archive (cifar-10-python.tar.gz, cifar-10-binary.tar.gz or the extracted "
            "cifar-10-batches-py / cifar-10-batches-bin)",
            path,
            "Download it from https://www.cs.toronto.edu/~kriz/cifar.html.",
        )
    location = candidates[0].parent if candidates[0].name == "test_batch.bin" else candidates[0]
    py_names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = _read_members(location, py_names + [n + ".bin" for n in py_names])
    binary = "test_batch.bin" in members
    names = [n + ".bin" for n in py_names] if binary else py_names
    missing = [n for n in names if n not in members]
    if missing:
        raise _not_found(f"CIFAR-10 batch files {missing}", location, "The archive is incomplete.")

    def decode(raw: bytes):
        if binary:  # records of 1 label byte + 3072 CHW pixel bytes
            records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
            data, labels = records[:, 1:], records[:, 0]
        else:
            batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data, labels = np.asarray(batch["data"], np.uint8), np.asarray(batch["labels"])
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
        return images, labels.astype(np.int32)

    train = [decode(members[n]) for n in names[:5]]
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": decode(members[names[5]]),
    }


def _iter_image_files(path: pathlib.Path):
    """Yields (split, class, file name, bytes) of `<split>/<class>/<file>` in a folder or tar."""

    def is_image(name):
        return name.lower().endswith(_IMAGE_EXTENSIONS) and not name.startswith(".")

    if path.is_dir():
        for file in sorted(path.glob("*/*/*")):
            if file.is_file() and is_image(file.name):
                yield file.parts[-3], file.parts[-2], file.name, file.read_bytes()
        return
    # Streamed from the archive: nothing is extracted to disk (the archive may be read-only).
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and is_image(parts[-1]):
                yield parts[-3], parts[-2], parts[-1], tar.extractfile(member).read()


def _load_image_folder(path: pathlib.Path, num_channels: int) -> dict:
    """`<path>/<split>/<class>/*.png|jpg` (or a tar of that tree); label = sorted class index."""
    from PIL import Image

    if not path.exists():
        raise _not_found("Image folder or archive", path, "Expected <split>/<class>/<image>.")
    mode = "L" if num_channels == 1 else "RGB"
    files = {}  # split -> list of (class, file name, uint8 image)
    for split, cls, name, data in _iter_image_files(path):
        image = np.asarray(Image.open(io.BytesIO(data)).convert(mode), np.uint8)
        files.setdefault(split, []).append((cls, name, image.reshape(*image.shape[:2], -1)))
    if not files:
        raise _not_found(
            "Images (<split>/<class>/*.png|jpg)", path, "Expected e.g. train/cat/0001.png."
        )
    classes = sorted({cls for entries in files.values() for cls, _, _ in entries})
    splits = {}
    for split, entries in files.items():
        entries.sort(key=lambda e: (e[0], e[1]))
        shapes = {e[2].shape for e in entries}
        if len(shapes) > 1:
            raise ValueError(
                f"Images in {path}/{split} have different sizes {sorted(shapes)[:4]}; the "
                "in-memory sources need one size (resize them, or use tfds)."
            )
        labels = np.array([classes.index(cls) for cls, _, _ in entries], np.int32)
        splits[split] = (np.stack([e[2] for e in entries]), labels)
    return splits


def _load_npz(path: pathlib.Path, num_channels: int) -> dict:
    """An .npz with x_train/y_train/x_test/y_test, or one split as images/labels or x/y."""
    del num_channels
    if not path.is_file():
        raise _not_found(".npz file", path, "Expected x_train/y_train/x_test/y_test arrays.")
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)

    def labels_for(split, n):
        # y_<split>, else y_<split>_full[<split>_index] (e.g. the exact CIFAR-10 subset), else
        # the first n of y_<split>_full, else zeros.
        if f"y_{split}" in arrays:
            return arrays[f"y_{split}"]
        if f"y_{split}_full" in arrays:
            full = arrays[f"y_{split}_full"]
            return full[arrays[f"{split}_index"]] if f"{split}_index" in arrays else full[:n]
        logging.warning("No labels for split %r in %s; using 0.", split, path)
        return np.zeros(n, np.int32)

    def entry(x, y):
        x = np.asarray(x, np.uint8)
        x = x[..., None] if x.ndim == 3 else x  # NHW (grayscale) -> NHWC
        return x, np.asarray(y, np.int32).reshape(-1)

    if "x_train" in arrays:
        splits = {"train": entry(arrays["x_train"], labels_for("train", len(arrays["x_train"])))}
        if "x_test" in arrays:
            splits["test"] = entry(arrays["x_test"], labels_for("test", len(arrays["x_test"])))
        return splits
    for x_key, y_key in (("images", "labels"), ("x", "y")):
        if x_key in arrays:
            y = arrays.get(y_key, np.zeros(len(arrays[x_key]), np.int32))
            both = entry(arrays[x_key], y)
            return {"train": both, "test": both}  # one split serves as train and eval
    raise ValueError(f"{path} has keys {sorted(arrays)}; expected x_train (+ x_test), images or x.")


_LOADERS = {
    "idx": _load_idx,
    "cifar_archive": _load_cifar_archive,
    "image_folder": _load_image_folder,
    "npz": _load_npz,
}
_CACHE = {}  # (source, path, mtime, channels) -> splits; the last load only


def _load_offline(source: str, path_str: str, num_channels: int) -> dict:
    """Loads (and caches the last loaded) offline data set, with read-only arrays."""
    if not path_str:
        raise DatasetNotFoundError(
            f"config.data.path is empty, but data.source={source!r} reads local files. "
            f"{_OFFLINE_HINT}"
        )
    path = pathlib.Path(path_str).expanduser()
    if not path.exists():
        raise _not_found(f"Data for source {source!r}", path, "The path does not exist.")
    key = (source, str(path.resolve()), path.stat().st_mtime_ns, num_channels)
    if key not in _CACHE:
        _CACHE.clear()
        splits = _LOADERS[source](path, num_channels)
        for x, y in splits.values():
            x.flags.writeable = y.flags.writeable = False
        _CACHE[key] = splits
    return _CACHE[key]


# --------------------------------------------------------------------------------------------
# Iteration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The batching and randomness settings shared by the train and eval datasets."""

    name: str
    image_size: int
    num_channels: int
    batch_size: int  # global
    batch_dims: tuple[int, ...]
    process_index: int
    process_count: int
    seed: int
    random_flip: bool
    uniform_dequantization: bool
    num_epochs: int | None


def _seed(*values: int) -> int:
    """A 63-bit seed derived from non-negative ints (for tf stateless ops)."""
    state = np.random.SeedSequence([v % 2**32 for v in values]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class ArrayDataset:
    """Iterable over an in-memory uint8 split, deterministic in (seed, split, epoch, host).

    Every `iter()` starts afresh at item `start_step` and yields the same sequence. Global batch
    `g` (of `batch_size` examples over all hosts) is slice `g % nb` of the permutation of epoch
    `g // nb`, with `nb = N // batch_size` (each epoch drops its last `N % batch_size` examples,
    different ones every epoch); this host takes its contiguous block of it. An item
    stacks `additional_dim` consecutive global batches. With finite `num_epochs`, an incomplete
    last item is dropped (drop_remainder, as the original).
    """

    def __init__(self, images, labels, spec: _Spec, split_id: int, start_step: int = 0):
        self.images, self.labels, self.spec = images, labels, spec
        self.split_id, self.start_step = split_id, start_step
        self.batches_per_epoch = len(images) // spec.batch_size
        self._preprocess = _numpy_preprocess(spec.name, spec.image_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        # Same on every host, so that the hosts' blocks are disjoint.
        rng = np.random.default_rng([self.spec.seed % 2**32, self.split_id, epoch])
        return rng.permutation(len(self.images))

    def _global_batch(self, g: int, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        pos = g % self.batches_per_epoch
        index = perm[pos * spec.batch_size : (pos + 1) * spec.batch_size]
        # This host's contiguous block: host i feeds the i-th block of the global batch, which
        # is where jax.make_array_from_process_local_data puts it, so the global batch (and a
        # multi-host run) equals the single-host one example for example.
        per_host = spec.batch_size // spec.process_count
        block = slice(spec.process_index * per_host, (spec.process_index + 1) * per_host)
        image = self._preprocess(self.images[index[block]])
        # Flips and noise are drawn for the whole global batch (seeded by the global batch
        # index, independent of the host count and of additional_dim), then sliced.
        rng = np.random.default_rng([spec.seed % 2**32, self.split_id, g])
        if spec.random_flip:
            flip = (rng.random(spec.batch_size) < 0.5)[block]
            image = np.where(flip[:, None, None, None], image[:, :, ::-1, :], image)
        if spec.uniform_dequantization:
            noise = rng.random((spec.batch_size, *image.shape[1:]), dtype=np.float32)[block]
            image = (noise + image * np.float32(255.0)) / np.float32(256.0)
        return image, self.labels[index[block]]

    def __iter__(self):
        spec = self.spec
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The split has {len(self.images)} examples, fewer than one batch "
                f"({spec.batch_size})."
            )
        steps = spec.batch_dims[0] if len(spec.batch_dims) == 2 else 1
        g, end = self.start_step * steps, None
        if spec.num_epochs is not None:
            end = (self.batches_per_epoch * spec.num_epochs // steps) * steps
        epoch, perm = -1, None
        while end is None or g < end:
            images, labels = [], []
            for gi in range(g, g + steps):
                if gi // self.batches_per_epoch != epoch:
                    epoch = gi // self.batches_per_epoch
                    perm = self._permutation(epoch)
                x, y = self._global_batch(gi, perm)
                images.append(x)
                labels.append(y)
            image, label = np.stack(images), np.stack(labels)
            yield {
                "image": image.reshape(*spec.batch_dims, *image.shape[2:]),
                "label": label.reshape(spec.batch_dims),
            }
            g += steps


class TFDataset:
    """Iterable of NumPy dicts over a tf.data pipeline (kept in `.tf_dataset`)."""

    def __init__(self, tf_dataset):
        self.tf_dataset = tf_dataset

    def __iter__(self):
        return self.tf_dataset.as_numpy_iterator()


def _tf_pipeline(ds, decode, spec: _Spec, split_id: int, start_step: int):
    """The original's repeat -> shuffle -> map -> batch -> prefetch, seeded per host.

    Args:
      ds: tf.data.Dataset of raw examples, already sharded for this host.
      decode: raw example -> (uint8 HWC image, int label) tensors.
      spec: batching / randomness settings.
      split_id: 0 for train, 1 for eval (different shuffles and noise).
      start_step: items to skip (train only).

    Returns:
      A TFDataset.
    """
    tf = _tf()
    host_seed = _seed(spec.seed, spec.process_index, split_id)
    resize_op = _get_resize_op(spec.name, spec.image_size)

    def preprocess(i, example):
        image, label = decode(example)
        img = resize_op(image)
        # Stateless randomness keyed by the example counter: reproducible, and exact after skip.
        if spec.random_flip:
            img = tf.image.stateless_random_flip_left_right(img, tf.stack([host_seed, 2 * i]))
        if spec.uniform_dequantization:
            noise = tf.random.stateless_uniform(tf.shape(img), tf.stack([host_seed, 2 * i + 1]))
            img = (noise + img * 255.0) / 256.0
        img = tf.ensure_shape(img, [spec.image_size, spec.image_size, spec.num_channels])
        return {"image": img, "label": tf.cast(label, tf.int32)}

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    options.threading.private_threadpool_size = 48
    options.threading.max_intra_op_parallelism = 1
    ds = ds.repeat(spec.num_epochs).shuffle(SHUFFLE_BUFFER_SIZE, seed=host_seed % 2**31)
    ds = ds.enumerate()
    if start_step:
        ds = ds.skip(start_step * int(np.prod(spec.batch_dims)))  # cheap: before decoding
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    for size in reversed(spec.batch_dims):
        ds = ds.batch(size, drop_remainder=True)
    return TFDataset(ds.prefetch(tf.data.AUTOTUNE).with_options(options))


def _tfds_name(name: str, config) -> str:
    names = {
        "CIFAR10": "cifar10",
        "SVHN": "svhn_cropped",
        "CELEBA": "celeb_a",
        "MNIST": "mnist",
        "FashionMNIST": "fashion_mnist",
    }
    if name == "LSUN":
        return f"lsun/{config.data.category}"
    if name not in names:
        raise ValueError(f"{name} is not in tfds; use --config.data.source=tfrecords.")
    return names[name]


def _num_examples(builder, split: str) -> int | None:
    try:
        return builder.info.splits[split].num_examples
    except KeyError:  # e.g. under tfds.testing.mock_data
        return None


def _get_tfds(name, config, spec, train_spec_start):
    """Train / eval TFDatasets from a prepared tfds builder (downloads only when allowed)."""
    import tensorflow_datasets as tfds

    tf = _tf()
    tfds_name = _tfds_name(name, config)
    data_dir = config.data.get("data_dir", "") or None
    manual_dir = config.data.get("manual_dir", "") or None
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if os.environ.get(TFDS_DOWNLOAD_ENV) != "1":
            raise _not_found(
                f"Prepared tfds dataset {tfds_name!r}",
                builder.data_dir,
                f"Prepare it with `tfds build {tfds_name} --data_dir=<dir>` (manual downloads go "
                f"to --manual_dir), then set --config.data.data_dir=<dir>; or set "
                f"{TFDS_DOWNLOAD_ENV}=1 to let get_dataset download and prepare it.",
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    image_feature = builder.info.features["image"]
    has_label = "label" in builder.info.features

    def decode(example):
        image = image_feature.decode_example(example["image"])
        label = example["label"] if has_label else tf.constant(0, tf.int64)
        return image, label

    def make(split, split_id, start):
        read_config = tfds.ReadConfig(shuffle_seed=spec.seed % 2**31)
        ds = builder.as_dataset(
            split=split,
            shuffle_files=True,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        ds = ds.shard(spec.process_count, spec.process_index)
        return _tf_pipeline(ds, decode, spec, split_id, start)

    train_split, eval_split = _SPLITS[name]
    info = DatasetInfo(
        name=name,
        source="tfds",
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=_num_examples(builder, train_split),
        num_eval=_num_examples(builder, eval_split),
        train_split=train_split,
        eval_split=eval_split,
        location=str(builder.data_dir),
    )
    return make(train_split, 0, train_spec_start), make(eval_split, 1, 0), info


def _get_tfrecords(name, config, spec, start_step):
    """FFHQ / CelebA-HQ tfrecords (features `shape` and CHW uint8 `data`); train = eval."""
    tf = _tf()
    pattern = config.data.get("tfrecords_path", "") or config.data.get("path", "")
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not files:
        raise _not_found(
            "TFRecord file(s)",
            repr(pattern) + " (config.data.tfrecords_path)",
            "Make them with the StyleGAN / progressive-GAN dataset_tool (e.g. "
            "ffhq-r08.tfrecords for 256x256) and set --config.data.tfrecords_path=<file>.",
        )

    def decode(record):
        sample = tf.io.parse_single_example(
            record,
            features={
                "shape": tf.io.FixedLenFeature([3], tf.int64),
                "data": tf.io.FixedLenFeature([], tf.string),
            },
        )
        data = tf.reshape(tf.io.decode_raw(sample["data"], tf.uint8), sample["shape"])
        return tf.transpose(data, (1, 2, 0)), tf.constant(0, tf.int64)  # CHW -> HWC; no labels

    def make(split_id, start):
        ds = tf.data.TFRecordDataset(files).shard(spec.process_count, spec.process_index)
        return _tf_pipeline(ds, decode, spec, split_id, start)

    info = DatasetInfo(
        name=name,
        source="tfrecords",
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=None,
        num_eval=None,
        train_split="train",
        eval_split="train",
        location=", ".join(files),
    )
    return make(0, start_step), make(1, 0), info


def _get_offline(name, source, config, spec, start_step):
    """Train / eval ArrayDatasets from local files."""
    splits = _load_offline(source, config.data.get("path", ""), spec.num_channels)
    train_split, eval_split = _SPLITS[name]
    if eval_split != "train":
        eval_split = next((s for s in _EVAL_SPLIT_ALIASES if s in splits), None)
    if train_split not in splits or eval_split is None:
        raise _not_found(
            f"Splits 'train' and one of {_EVAL_SPLIT_ALIASES}",
            f"{config.data.path} (found {sorted(splits)})",
            "Check the layout.",
        )
    for split in (train_split, eval_split):
        channels = splits[split][0].shape[-1]
        if channels != spec.num_channels:
            raise ValueError(
                f"{config.data.path} ({split}) has {channels} channels but "
                f"config.data.num_channels={spec.num_channels}."
            )
    train_ds = ArrayDataset(*splits[train_split], spec, split_id=0, start_step=start_step)
    eval_ds = ArrayDataset(*splits[eval_split], spec, split_id=1)
    info = DatasetInfo(
        name=name,
        source=source,
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=len(splits[train_split][0]),
        num_eval=len(splits[eval_split][0]),
        train_split=train_split,
        eval_split=eval_split,
        location=str(config.data.path),
    )
    return train_ds, eval_ds, info


def get_dataset(
    config,
    additional_dim=None,
    uniform_dequantization=False,
    evaluation=False,
    start_step=0,
    num_epochs=None,
):
    """Creates the training and evaluation datasets.

    Args:
      config: the experiment ConfigDict (`data.*`, `training.batch_size`, `eval.batch_size`,
        `seed`).
      additional_dim: if set, items get a leading dimension of this size (the number of train
        steps jitted together).
      uniform_dequantization: add U[0, 1)/256 noise: `(u + 255 x) / 256`.
      evaluation: if True, use `eval.batch_size`, no random flips and one epoch by default.
      start_step: items of the train dataset to skip (one item = one yielded batch), for an
        exact resume. The eval dataset always starts at its beginning.
      num_epochs: passes over each split per iterator; None = forever when training and one
        pass when `evaluation` (as the original). Each pass drops its incomplete last batch.

    Returns:
      (train_ds, eval_ds, info): iterables of {'image': float32 [*batch_dims, H, W, C],
      'label': int32 [*batch_dims]} with batch_dims = [additional_dim, per_host_batch] or
      [per_host_batch], and a DatasetInfo.

    Raises:
      DatasetNotFoundError: the data is not on disk.
      ValueError: the batch size is not divisible by the number of hosts, or the data does not
        match the config.
    """
    name = canonical_dataset_name(config.data.dataset)
    source = config.data.get("source", "tfds")
    # As the original, both datasets use eval.batch_size in evaluation and training.batch_size
    # otherwise (the periodic eval loss during training uses a training-sized batch).
    batch_size = config.eval.batch_size if evaluation else config.training.batch_size
    process_count, process_index = jax.process_count(), jax.process_index()
    if batch_size % process_count != 0:
        raise ValueError(
            f"Batch size {batch_size} must be divisible by the number of hosts ({process_count})."
        )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    per_host_batch = batch_size // process_count
    spec = _Spec(
        name=name,
        image_size=config.data.image_size,
        num_channels=config.data.num_channels,
        batch_size=batch_size,
        batch_dims=(additional_dim, per_host_batch) if additional_dim else (per_host_batch,),
        process_index=process_index,
        process_count=process_count,
        seed=config.seed,
        random_flip=bool(config.data.random_flip and not evaluation),
        uniform_dequantization=uniform_dequantization,
        num_epochs=num_epochs if num_epochs is not None else (1 if evaluation else None),
    )
    if source == "tfds":
        return _get_tfds(name, config, spec, start_step)
    if source == "tfrecords":
        return _get_tfrecords(name, config, spec, start_step)
    if source in _LOADERS:
        return _get_offline(name, source, config, spec, start_step)
    raise ValueError(
        f"Unknown data.source {source!r}; choose tfds, tfrecords or one of {sorted(_LOADERS)}."
    )
