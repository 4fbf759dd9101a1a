"""Offline data sources for `datasets.py`: local files loaded into memory, iterated with NumPy.

`config.data.source` selects a loader: MNIST-style 'idx' files, the CIFAR-10 python or binary
archive ('cifar_archive'), an 'image_folder' (`<path>/<split>/<class>/*.png|jpg`, or a tar of
that tree, decoded straight from the archive so that it may sit on a read-only disk) or an 'npz'
file. Each loads every split as uint8 `[N, H, W, C]` images and int32 `[N]` labels, which suits
datasets of CIFAR / MNIST / SVHN size. `ArrayDataset` then iterates one split in an order that is
a pure function of (seed, split, epoch), so a resumed run sees exactly the batches of an
uninterrupted one.

A file that is there but unusable (truncated, corrupt, the wrong format, images that would decode
to black) raises one `ValueError` that names the file and the fix; a missing one raises
`DatasetNotFoundError`. This module needs no TensorFlow: `datasets.py` passes in the resize op
and builds the tf.data sources on top; nothing here imports `datasets`.

`config.data.path` may be local or a URL (gs://bucket/data.npz): paths are `etils.epath` paths
from `fileio.path`, and archives are read into memory when they are not on a local disk.
"""

import dataclasses
import functools
import gzip
import io
import math
import os
import pickle
import re
import tarfile
import types
import zipfile
import zlib

import numpy as np
from absl import logging
from etils import epath

import fileio

# Appended to every "not found" message: how to train from local files instead.
OFFLINE_HINT = (
    "Or train from local files with --config.data.source=<idx|cifar_archive|image_folder|npz> "
    "--config.data.path=<file or folder> (see datasets.py)."
)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The fix for a damaged idx file; Debian's package is where the shared Fashion-MNIST comes from.
_IDX_FIX = (
    "Re-download it (Debian: `apt-get install --reinstall dataset-fashion-mnist` restores "
    "/usr/share/datasets/fashion-mnist)."
)
_NPZ_EXPECTED = "expected uint8 (or integers in 0..255), or floats in [0, 1] or [0, 255]"


class DatasetNotFoundError(FileNotFoundError):
    """The requested data is not on disk (and was not allowed to be downloaded)."""


def not_found(what: str, where, hint: str) -> DatasetNotFoundError:
    """A DatasetNotFoundError saying what was looked for, where, and how to get it."""
    return DatasetNotFoundError(f"{what} not found in {where}. {hint} {OFFLINE_HINT}")


# --------------------------------------------------------------------------------------------
# Loaders: each maps a path to {split: (images uint8 [N, H, W, C], labels int32 [N])}.
# --------------------------------------------------------------------------------------------


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parses an idx file (big-endian header: magic 0x0000 08 ndim, then ndim uint32 sizes)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{source} is not a uint8 idx file (bad magic {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{source} is truncated: {len(data)} bytes, shorter than its {header}-byte header. "
            f"{_IDX_FIX}"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    # Checked here because a short file would otherwise fail in reshape without the file name.
    if len(data) != header + math.prod(shape):
        raise ValueError(
            f"{source} is truncated or corrupt: its header (shape {shape}) needs "
            f"{header + math.prod(shape)} bytes, the file has {len(data)}. {_IDX_FIX}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _read_idx(file: epath.Path) -> np.ndarray:
    """Reads one idx file, gzip-compressed when its name ends in .gz."""
    if file.suffix != ".gz":
        return _parse_idx(file.read_bytes(), str(file))
    try:
        with gzip.open(io.BytesIO(file.read_bytes()), "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        # gzip's own messages ("Compressed file ended before the end-of-stream marker was
        # reached") do not say which file.
        raise ValueError(f"{file} is truncated or corrupt ({error}). {_IDX_FIX}") from error
    return _parse_idx(data, str(file))


def _load_idx(path: epath.Path, num_channels: int) -> dict:
    """MNIST-style idx files (`train-images-idx3-ubyte[.gz]`, `t10k-...`) in folder `path`."""
    del num_channels
    splits = {}
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        arrays = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            names = [f"{p}-{kind}{gz}" for p in prefixes for gz in (".gz", "")]
            found = [path / n for n in names if (path / n).is_file()]
            if not found:
                raise not_found(
                    f"idx file {names[0]} (or {', '.join(names[1:])})",
                    path,
                    "Put the four MNIST / Fashion-MNIST idx files there (Debian: `apt-get install "
                    "dataset-fashion-mnist` gives /usr/share/datasets/fashion-mnist).",
                )
            arrays.append(_read_idx(found[0]))
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


def _open_tar(path: epath.Path) -> tarfile.TarFile:
    """A tar archive (any compression), streamed from a local disk, read whole from a URL."""
    if fileio.is_remote(path):
        return tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:*")
    return tarfile.open(os.fspath(path), "r:*")


def _read_members(location: epath.Path, names: list[str]) -> dict[str, bytes]:
    """Reads files by base name from a folder or from a tar archive (any compression)."""
    if location.is_dir():
        return {n: (location / n).read_bytes() for n in names if (location / n).is_file()}
    out = {}
    with _open_tar(location) as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and base in names and base not in out:
                out[base] = tar.extractfile(member).read()
    return out


def _load_cifar_archive(path: epath.Path, num_channels: int) -> dict:
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
        raise not_found(
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
        raise not_found(f"CIFAR-10 batch files {missing}", location, "The archive is incomplete.")

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


def _iter_image_files(path: epath.Path):
    """Yields (split, class, file name, bytes) of `<split>/<class>/<file>` in a folder or tar."""

    def is_image(name):
        return name.lower().endswith(_IMAGE_EXTENSIONS) and not name.startswith(".")

    if path.is_dir():
        for file in sorted(path.glob("*/*/*")):
            if file.is_file() and is_image(file.name):
                yield file.parts[-3], file.parts[-2], file.name, file.read_bytes()
        return
    # Streamed from the archive: nothing is extracted to disk (the archive may be read-only).
    with _open_tar(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and is_image(parts[-1]):
                yield parts[-3], parts[-2], parts[-1], tar.extractfile(member).read()


def _load_image_folder(path: epath.Path, num_channels: int) -> dict:
    """`<path>/<split>/<class>/*.png|jpg` (or a tar of that tree); label = sorted class index."""
    from PIL import Image

    if not path.exists():
        raise not_found("Image folder or archive", path, "Expected <split>/<class>/<image>.")
    mode = "L" if num_channels == 1 else "RGB"
    files = {}  # split -> list of (class, file name, uint8 image)
    for split, cls, name, data in _iter_image_files(path):
        image = np.asarray(Image.open(io.BytesIO(data)).convert(mode), np.uint8)
        files.setdefault(split, []).append((cls, name, image.reshape(*image.shape[:2], -1)))
    if not files:
        raise not_found(
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


def _npz_images(x, key: str, path: epath.Path) -> np.ndarray:
    """One npz image array as uint8 NHWC, refusing values that uint8 cannot hold as pixels.

    A plain cast would turn floats in [0, 1] into black images (all 0) and wrap other ranges
    around, and training would run on them without a word; so floats are rescaled when their
    range is clear and everything else is refused.
    """
    x = np.asarray(x)
    where = f"{key} in {path}"
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{where} has shape {x.shape}; expected images [N, H, W] (grayscale) or [N, H, W, C]."
        )
    if x.dtype != np.uint8 and x.size:
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"{where} has dtype {x.dtype}; {_NPZ_EXPECTED}.")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"{where} has NaN or infinite values; {_NPZ_EXPECTED}.")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 255:
            # [-1, 1] is the usual culprit: data saved after the model's scaler.
            fix = " (for data in [-1, 1], save (x + 1) / 2)" if lo >= -1 and hi <= 1 else ""
            raise ValueError(f"{where} has {x.dtype} values in [{lo}, {hi}]; {_NPZ_EXPECTED}{fix}.")
        if np.issubdtype(x.dtype, np.floating):
            # Rule: max <= 1 means [0, 1], else [0, 255]. Logged, since it is a guess (images
            # in [0, 255] that are all at most 1 would be read as [0, 1]).
            scale, read_as = (255.0, "[0, 1], scaled by 255") if hi <= 1.0 else (1.0, "[0, 255]")
            logging.info(
                "%s has %s values in [%g, %g]: read as %s and rounded to uint8.",
                where,
                x.dtype,
                lo,
                hi,
                read_as,
            )
            x = np.round(x * x.dtype.type(scale))
    x = np.asarray(x, np.uint8)
    return x[..., None] if x.ndim == 3 else x  # NHW (grayscale) -> NHWC


def _load_npz(path: epath.Path, num_channels: int) -> dict:
    """An .npz with x_train/y_train/x_test/y_test, or one split as images/labels or x/y."""
    del num_channels
    if not path.is_file():
        raise not_found(".npz file", path, "Expected x_train/y_train/x_test/y_test arrays.")
    # np.load reads any other file as a pickle or .npy, whose errors never mention npz.
    data = io.BytesIO(path.read_bytes())
    if not zipfile.is_zipfile(data):
        raise ValueError(
            f"{path} is not an .npz archive (np.savez), or it is truncated; write one with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    try:
        with np.load(data, allow_pickle=False) as f:
            arrays = dict(f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{path} is not a readable .npz archive (np.savez): {error}") from error

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

    def entry(x_key, y):
        x = _npz_images(arrays[x_key], x_key, path)
        return x, np.asarray(y, np.int32).reshape(-1)

    if "x_train" in arrays:
        splits = {"train": entry("x_train", labels_for("train", len(arrays["x_train"])))}
        if "x_test" in arrays:
            splits["test"] = entry("x_test", labels_for("test", len(arrays["x_test"])))
        return splits
    for x_key, y_key in (("images", "labels"), ("x", "y")):
        if x_key in arrays:
            y = arrays.get(y_key, np.zeros(len(arrays[x_key]), np.int32))
            both = entry(x_key, y)
            return {"train": both, "test": both}  # one split serves as train and eval
    raise ValueError(f"{path} has keys {sorted(arrays)}; expected x_train (+ x_test), images or x.")


# The offline values of `config.data.source`.
LOADERS = {
    "idx": _load_idx,
    "cifar_archive": _load_cifar_archive,
    "image_folder": _load_image_folder,
    "npz": _load_npz,
}


@functools.lru_cache(maxsize=1)
def _load_cached(source: str, path: epath.Path, resolved: str, mtime: float, channels: int):
    """Runs a loader; a pure function of its arguments, so one cached result can be shared.

    run_lib calls get_dataset several times on one split (train, eval, reference images), and
    decoding e.g. 60k JPEGs takes a while; keeping the last result avoids repeating it. `resolved`
    and `mtime` are only cache keys: a changed file is read again.
    """
    del resolved, mtime
    splits = LOADERS[source](path, channels)
    for split, (x, y) in splits.items():
        if len(x) != len(y):
            raise ValueError(f"{path} ({split}) has {len(x)} images but {len(y)} labels.")
        # Shared by every caller through the cache, so nobody may write to them.
        x.flags.writeable = y.flags.writeable = False
    return types.MappingProxyType(splits)


def load_offline(source: str, path_str: str, num_channels: int):
    """Loads all splits of an offline data set; the last load is reused while the file is unchanged.

    Args:
      source: a key of LOADERS.
      path_str: `config.data.path` (a file or folder; `~` is expanded).
      num_channels: 1 (read images as grayscale) or 3 (RGB); only 'image_folder' converts.

    Returns:
      A read-only mapping {split: (images uint8 [N, H, W, C], labels int32 [N])} of read-only
      arrays.

    Raises:
      DatasetNotFoundError: the path is empty or does not exist, or holds no data.
      ValueError: a file is there but truncated, corrupt or in an unusable format.
    """
    if not path_str:
        raise DatasetNotFoundError(
            f"config.data.path is empty, but data.source={source!r} reads local files. "
            f"{OFFLINE_HINT}"
        )
    path = fileio.path(path_str)
    if not path.exists():
        raise not_found(f"Data for source {source!r}", path, "The path does not exist.")
    resolved = os.fspath(path) if fileio.is_remote(path) else os.path.realpath(path)
    mtime = fileio.getmtime(resolved) if fileio.is_remote(path) else os.stat(path).st_mtime_ns
    return _load_cached(source, path, resolved, mtime, num_channels)


# --------------------------------------------------------------------------------------------
# Iteration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchSpec:
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


class ArrayDataset:
    """Iterable over an in-memory uint8 split, deterministic in (seed, split, epoch, host).

    Every `iter()` starts afresh at item `start_step` and yields the same sequence. Global batch
    `g` (of `batch_size` examples over all hosts) is slice `g % nb` of the permutation of epoch
    `g // nb`, with `nb = N // batch_size` (each epoch drops its last `N % batch_size` examples,
    different ones every epoch); this host takes its contiguous block of it. An item
    stacks `additional_dim` consecutive global batches. With finite `num_epochs`, an incomplete
    last item is dropped (drop_remainder, as the original).

    Args:
      images: uint8 [N, H, W, C].
      labels: int32 [N].
      spec: batching / randomness settings.
      split_id: 0 for train, 1 for eval (different permutations, flips and noise).
      start_step: items to skip, for an exact resume.
      preprocess: uint8 [n, H, W, C] -> float32 [n, S, S, C] in [0, 1] (the resize op).
    """

    def __init__(self, images, labels, spec: BatchSpec, split_id: int, start_step=0, *, preprocess):
        self.images, self.labels, self.spec = images, labels, spec
        self.split_id, self.start_step = split_id, start_step
        self.batches_per_epoch = len(images) // spec.batch_size
        self._preprocess = preprocess

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
