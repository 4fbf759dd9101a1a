"""Reading torch `.pth` checkpoints into NumPy arrays without torch and without running code.

`read_pth` is the one safe loader of the project: the score_sde_pytorch checkpoints
(`models/convert.py`) and any other torch state dict go through it. The pickle may reference
only torch's tensor / parameter rebuild functions, storage types, `collections.OrderedDict` and
numpy scalars, each mapped to a NumPy stand-in; anything else is refused by name.
"""

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# torch's legacy typed-storage classes, as pickled in a storage's persistent id.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
# Numpy dtypes a pickled `numpy.dtype(...)` may name (plain numeric types only).
_NUMPY_DTYPES = {"f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1"}
# Magic number that opens a legacy (torch < 1.6) non-zip .pth file.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stands in for `torch.FloatStorage` & co.: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, metadata=None):
    """NumPy `torch._utils._rebuild_tensor_v2`: a strided view of the storage, copied."""
    del requires_grad, hooks, metadata
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("tensor storage is not a storage record")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or storage_offset < 0 or any(s < 0 for s in size + stride):
        raise pickle.UnpicklingError(f"invalid tensor geometry {size} / {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    # as_strided does no bounds checks, so check that the last element lies in the storage.
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor reads past its storage ({last} >= {storage.size})")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    """`torch._utils._rebuild_parameter(_with_state)`: a Parameter is its data here."""
    del requires_grad, hooks, state
    return data


def _numpy_dtype(name, align=False, copy=False):
    del align, copy
    if name not in _NUMPY_DTYPES:
        raise pickle.UnpicklingError(f"refused numpy dtype {name!r}")
    return np.dtype(name)


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(data, dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    # Protocol-2 pickles store bytes as `_codecs.encode(str, "latin1")`.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call")
    return text.encode("latin1")


# The only globals a .pth may reference, each mapped to a NumPy stand-in.
_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _codecs_encode,
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage"),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_SAFE_GLOBALS` and storages from the zip archive."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global '{module}.{name}': only torch tensor/storage rebuild functions "
                "and OrderedDict may appear in a checkpoint"
            ) from None

    def persistent_load(self, pid):
        # torch's zip format: ('storage', storage_type, key, location, numel).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {name!r} is missing") from None
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {name!r} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}"
                )
            self._storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype)
        return self._storages[key]


def read_pth(path: str | os.PathLike) -> Any:
    """Reads a torch `.pth` file (zip format, torch >= 1.6) into NumPy arrays, without torch.

    Never executes pickled code: the pickle may reference only torch's tensor / parameter rebuild
    functions, storage types and `collections.OrderedDict` (plus numpy scalars), each mapped to a
    NumPy stand-in; storages are read from `<archive>/data/<key>` in the byte order of
    `<archive>/byteorder` (little-endian if absent). torch is never imported, even if installed.

    Args:
      path: the `.pth` file.

    Returns:
      The pickled object with every tensor replaced by a NumPy array (e.g. an OrderedDict state
      dict, or score_sde_pytorch's `{"model", "ema", "optimizer", "step"}` dict).

    Raises:
      pickle.UnpicklingError: the pickle references anything else (the message names it).
      ValueError: not a zip-format torch file (the legacy pre-1.6 format is not supported).
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(_not_zip_message(path))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder {byteorder!r}")
        unpickler = _RestrictedUnpickler(
            io.BytesIO(archive.read(pickles[0])), archive, prefix, byteorder
        )
        return unpickler.load()


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused global '{module}.{name}'")


def _not_zip_message(path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    try:  # a legacy file opens with the pickled magic number (a plain int: no globals needed)
        is_legacy = _NoGlobalsUnpickler(io.BytesIO(head)).load() == LEGACY_MAGIC
    except Exception:  # any failure just means "not the legacy magic"
        is_legacy = False
    if is_legacy:
        return (
            f"{path}: legacy (torch < 1.6) .pth format is not supported; re-save it with "
            "torch >= 1.6 (`torch.save(torch.load(p), p)`) to get the zip format"
        )
    return f"{path}: not a zip-format torch checkpoint"
