"""PyTorch DCGAN `netG` / `netD` state dicts -> variables of our Flax DCGAN (`models/dcgan.py`).

The PyTorch DCGAN (pytorch/examples `dcgan/main.py`, and the 32-px CIFAR-10 variant of the
pretrained `netG_epoch_*.pth` / `netD_epoch_*.pth`) keeps its layers in an `nn.Sequential`
named `main`; our torch layouts (`layout="torch"` / `"torch_1x1"`) name each layer `main_<i>`
after that index, so the mapping is by name, and every array is checked against
`jax.eval_shape(module.init)`: a checkpoint that does not fit is refused with the first bad
path, nothing is half-loaded. Files are read by `models/pth.py` (no torch, no pickled code).

Weight layouts (PyTorch -> Flax):
  ConvTranspose2d [in, out, kh, kw] -> ConvTranspose(transpose_kernel=True) [kh, kw, out, in];
  the first one, on the 1x1 latent, -> Dense [nz, 4 * 4 * out] in (h, w, c) order;
  Conv2d [out, in, kh, kw] -> Conv [kh, kw, in, out]; the last one, over the whole remaining
  map, -> Dense [h * w * in, 1] in (h, w, c) order;
  BatchNorm2d weight / bias -> params scale / bias, running_mean / running_var -> batch_stats
  mean / var (`num_batches_tracked` is dropped).

The GAN checkpoint that `--mode ddls` restores is written by `experiments/convert_gan.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from models import dcgan, pth
from models.convert import ConversionError

_KEY = re.compile(r"^main\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}  # fmt: skip


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A `netG` / `netD` state dict from a .pth file (zip format); see `state_dict_from`."""
    try:
        return state_dict_from(pth.read_pth(path))
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def state_dict_from(raw: Any) -> dict[str, np.ndarray]:
    """The `main.<i>.*` state dict in what a .pth held: the dict itself, or the one under
    'state_dict', 'netG' or 'netD'; `module.` prefixes (DataParallel) removed."""
    if not isinstance(raw, Mapping):
        raise ConversionError(f"expected a state dict, got {type(raw).__name__}")
    strip = lambda k: k[len("module.") :] if k.startswith("module.") else k  # noqa: E731
    if not any(_KEY.match(strip(k)) for k in raw):
        nested = [raw[k] for k in ("state_dict", "netG", "netD") if k in raw]
        if len(nested) != 1 or not isinstance(nested[0], Mapping):
            raise ConversionError("no DCGAN state dict (keys main.<i>.*) found")
        raw = nested[0]
    return {strip(k): np.asarray(v) for k, v in raw.items()}


def _kernel(kind: str, w: np.ndarray, target_shape) -> np.ndarray:
    """One PyTorch conv weight in the Flax layout of the module `kind` holds it."""
    if kind == "generator" and len(target_shape) == 2:  # ConvTranspose2d on the 1x1 latent
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    if kind == "discriminator" and len(target_shape) == 2:  # last conv over the whole map
        return w[0].transpose(1, 2, 0).reshape(-1, 1)
    # ConvTranspose2d [in, out, kh, kw] and Conv2d [out, in, kh, kw] both -> [kh, kw, in', out']
    # with (in', out') = (out, in) of the transposed conv (transpose_kernel=True) or of the conv.
    return w.transpose(2, 3, 1, 0)


def _convert(state_dict: Mapping[str, np.ndarray], module, example, kind: str) -> dict:
    """Variables `{'params', 'batch_stats'}` of `module` from one PyTorch state dict."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), example, train=False))
    target = traverse_util.flatten_dict(abstract)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        m = _KEY.match(key)
        if m is None:
            raise ConversionError(f"{kind}: unexpected state-dict key {key!r}")
        layer, field = f"main_{m.group(1)}", m.group(2)
        if field == "num_batches_tracked":
            continue
        if ("params", layer, "kernel") in target:  # a (transposed) conv
            if field != "weight":
                raise ConversionError(f"{kind}: {key} has a {field}; our DCGAN has no biases")
            path = ("params", layer, "kernel")
            shape = f"{value.shape} -> {_kernel(kind, value, target[path].shape).shape}"
            value = _kernel(kind, value, target[path].shape)
        else:
            collection, name = _BN[field]
            path, shape = (collection, layer, name), str(value.shape)
        if path not in target:
            raise ConversionError(f"{kind}: {key} -> {'/'.join(path)} is not in our model")
        if value.shape != target[path].shape:
            raise ConversionError(
                f"{kind}: {key} {shape} does not fit {'/'.join(path)} {target[path].shape}"
            )
        flat[path] = value.astype(target[path].dtype)
    missing = sorted("/".join(p) for p in set(target) - set(flat))
    if missing:
        raise ConversionError(f"{kind}: the state dict lacks {missing[:4]} ({len(missing)} in all)")
    return traverse_util.unflatten_dict(flat)


def from_pytorch_dcgan(netG: Mapping[str, np.ndarray], netD: Mapping[str, np.ndarray],
                       generator: dcgan.Generator, discriminator: dcgan.Discriminator,
                       z_dim: int) -> tuple[dict, dict]:  # fmt: skip
    """`(g_variables, d_variables)`, each `{'params': ..., 'batch_stats': ...}`, for modules in a
    torch layout (`dcgan.get_gan` of a config with `model.layout` 'torch' or 'torch_1x1').

    Raises:
      ConversionError: a key, shape or layer that does not fit (the message names it).
    """
    if generator.layout == "flax":
        raise ConversionError(
            "PyTorch DCGANs load into model.layout='torch' or 'torch_1x1', not 'flax'"
        )
    size, channels = generator.image_size, generator.num_channels
    g_vars = _convert(netG, generator, np.zeros((1, z_dim), np.float32), "generator")
    x = np.zeros((1, size, size, channels), np.float32)
    d_vars = _convert(netD, discriminator, x, "discriminator")
    return g_vars, d_vars


def infer_layout(netG: Mapping[str, np.ndarray]) -> str:
    """'torch_1x1' when the generator's last layer is a 1x1 transposed conv, else 'torch'."""
    convs = [k for k, v in netG.items() if k.endswith(".weight") and np.ndim(v) == 4]
    last = max(convs, key=lambda k: int(k.split(".")[1]))
    return "torch_1x1" if netG[last].shape[2:] == (1, 1) else "torch"


def count(tree: Any) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))
