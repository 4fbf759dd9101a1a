"""RefineNet layers of NCSN (v1) and NCSNv2 (score_sde keeps them in `models/layers.py`).

Ported from the JAX original (itself a port of ermongroup/ncsn and ermongroup/ncsnv2). Module and
parameter names, creation order and initialisers are the original's, so score_sde checkpoints
map one to one: `ncsn_conv1x1` / `ncsn_conv3x3` are functions that create an `nn.Conv` in the
calling module (auto-named `Conv_<i>`), blocks are auto-named by class (`RCUBlock_<i>`, ...).

Images are NHWC. `normalization` / `normalizer` attributes are constructors from
`models.normalization.get_normalization` (called with no arguments); activations come from
`models.layers.get_act`.

Two switches exist for score_sde_pytorch compatibility (`NCSNv2(torch_compat=True)`):
`align_corners` on the multi-resolution fusion (torch `F.interpolate(..., align_corners=True)`),
and the InstanceNorm++ `ddof` chosen by the model.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax import Array
from jax import numpy as jnp

from models import conv


def _pytorch_conv_init(kernel_shape: tuple[int, ...], init_scale: float):
    """PyTorch's default Conv2d init: kernel and bias ~ U(±1/sqrt(fan_in)) (times init_scale).

    As the original, the bias is the first output row of a freshly drawn kernel-shaped sample.
    """
    init_scale = 1e-10 if init_scale == 0 else init_scale
    kernel_init = jax.nn.initializers.variance_scaling(1 / 3 * init_scale, "fan_in", "uniform")

    def bias_init(key, shape, dtype=jnp.float32):
        del shape
        return kernel_init(key, kernel_shape, dtype)[0, 0, 0, :]

    return kernel_init, bias_init


def _ncsn_conv(x, out_planes, size, stride, bias, dilation, init_scale) -> Array:
    kernel_shape = (size, size, x.shape[-1], out_planes)
    kernel_init, bias_init = _pytorch_conv_init(kernel_shape, init_scale)
    return conv.Conv(
        out_planes,
        kernel_size=(size, size),
        strides=(stride, stride),
        padding="SAME",
        use_bias=bias,
        kernel_dilation=(dilation, dilation),
        kernel_init=kernel_init,
        bias_init=bias_init,
    )(x)


def ncsn_conv1x1(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0) -> Array:
    """1x1 convolution with PyTorch initialisation; call inside a compact module."""
    return _ncsn_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ncsn_conv3x3(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0) -> Array:
    """3x3 'SAME' (dilated) conv with PyTorch initialisation; call inside a compact module."""
    return _ncsn_conv(x, out_planes, 3, stride, bias, dilation, init_scale)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights with aligned corner pixels (torch semantics)."""
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def resize_bilinear_align_corners(x: Array, shape: Sequence[int]) -> Array:
    """Bilinear resize of NHWC `x` to spatial `shape`, as `F.interpolate(align_corners=True)`."""
    w_h = jnp.asarray(_align_corners_matrix(x.shape[1], shape[0]), x.dtype)
    w_w = jnp.asarray(_align_corners_matrix(x.shape[2], shape[1]), x.dtype)
    hp = jax.lax.Precision.HIGHEST  # exact float32 weights also on TPU/GPU
    x = jnp.einsum("oh,bhwc->bowc", w_h, x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", w_w, x, precision=hp)


def _resize(h: Array, shape: Sequence[int], interpolation: str, align_corners: bool) -> Array:
    """Resizes NHWC `h` to spatial `shape` (the MSFBlock upsampling)."""
    out_shape = (h.shape[0], *shape, h.shape[-1])
    if interpolation == "bilinear":
        if align_corners:
            return resize_bilinear_align_corners(h, shape)
        # The JAX original: half-pixel centres.
        return jax.image.resize(h, out_shape, "bilinear")
    if interpolation == "nearest_neighbor":
        return jax.image.resize(h, out_shape, "nearest")
    raise ValueError(
        f"Interpolation {interpolation!r} does not exist; use bilinear or nearest_neighbor."
    )


class CRPBlock(nn.Module):
    """Chained residual pooling (RefineNet): x += conv(maxpool5x5(path)) per stage. NCSNv2."""

    features: int
    n_stages: int
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            path = nn.max_pool(path, window_shape=(5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv3x3(path, self.features, stride=1, bias=False)
            x = path + x
        return x


class CondCRPBlock(nn.Module):
    """Noise-conditional CRPBlock (norm, then 5x5 average pool). NCSN v1."""

    features: int
    n_stages: int
    normalizer: Any
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            path = self.normalizer()(path, y)
            # flax counts the zero padding in the mean (torch AvgPool2d count_include_pad=True).
            path = nn.avg_pool(path, window_shape=(5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv3x3(path, self.features, stride=1, bias=False)
            x = path + x
        return x


class RCUBlock(nn.Module):
    """Residual conv units: n_blocks x (n_stages x (act, conv3x3 no bias) + skip). NCSNv2."""

    features: int
    n_blocks: int
    n_stages: int
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = self.act(x)
                x = ncsn_conv3x3(x, self.features, stride=1, bias=False)
            x = x + residual
        return x


class CondRCUBlock(nn.Module):
    """Noise-conditional RCUBlock (norm before every activation). NCSN v1."""

    features: int
    n_blocks: int
    n_stages: int
    normalizer: Any
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = self.normalizer()(x, y)
                x = self.act(x)
                x = ncsn_conv3x3(x, self.features, stride=1, bias=False)
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: sum of conv3x3(x_i) resized to `shape`. NCSNv2.

    Attributes:
      shape: output spatial size (H, W).
      features: output channels.
      interpolation: "bilinear" or "nearest_neighbor".
      align_corners: bilinear with aligned corners (PyTorch) instead of half-pixel centres (JAX).
    """

    shape: Sequence[int]
    features: int
    interpolation: str = "bilinear"
    align_corners: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        sums = jnp.zeros((xs[0].shape[0], *self.shape, self.features), xs[0].dtype)
        for x in xs:
            h = ncsn_conv3x3(x, self.features, stride=1, bias=True)
            sums = sums + _resize(h, self.shape, self.interpolation, self.align_corners)
        return sums


class CondMSFBlock(nn.Module):
    """Noise-conditional MSFBlock (norm before each conv). NCSN v1."""

    shape: Sequence[int]
    features: int
    normalizer: Any
    interpolation: str = "bilinear"
    align_corners: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        sums = jnp.zeros((xs[0].shape[0], *self.shape, self.features), xs[0].dtype)
        for x in xs:
            h = self.normalizer()(x, y)
            h = ncsn_conv3x3(h, self.features, stride=1, bias=True)
            sums = sums + _resize(h, self.shape, self.interpolation, self.align_corners)
        return sums


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input -> MSF (unless `start`) -> CRP -> output RCU. NCSNv2.

    Attributes:
      output_shape: spatial size (H, W) of the output (that of the finest input).
      features: output channels.
      act: activation.
      interpolation: MSF upsampling, "bilinear" or "nearest_neighbor".
      start: single input, no fusion (the coarsest block).
      end: three output RCUs instead of one (the finest block).
      align_corners: PyTorch-style bilinear upsampling in the MSF.
    """

    output_shape: Sequence[int]
    features: int
    act: Callable = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False
    align_corners: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        assert len(xs) == (1 if self.start else 2), len(xs)
        # Adaptive convs keep each input's width.
        hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = MSFBlock(
                shape=tuple(self.output_shape),
                features=self.features,
                interpolation=self.interpolation,
                align_corners=self.align_corners,
            )(hs)
        h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
        n_out = 3 if self.end else 1
        h = RCUBlock(self.features, n_blocks=n_out, n_stages=2, act=self.act)(h)
        assert h.shape[1:] == (*self.output_shape, self.features), h.shape
        return h


class CondRefineBlock(nn.Module):
    """Noise-conditional RefineBlock (Cond RCU / MSF / CRP). NCSN v1; attributes as RefineBlock."""

    output_shape: Sequence[int]
    features: int
    normalizer: Any
    act: Callable = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False
    align_corners: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        assert len(xs) == (1 if self.start else 2), len(xs)
        norm, act = self.normalizer, self.act
        hs = [CondRCUBlock(x.shape[-1], 2, 2, normalizer=norm, act=act)(x, y) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = CondMSFBlock(
                shape=tuple(self.output_shape),
                features=self.features,
                normalizer=norm,
                interpolation=self.interpolation,
                align_corners=self.align_corners,
            )(hs, y)
        h = CondCRPBlock(self.features, n_stages=2, normalizer=norm, act=act)(h, y)
        n_out = 3 if self.end else 1
        h = CondRCUBlock(self.features, n_out, 2, normalizer=norm, act=act)(h, y)
        assert h.shape[1:] == (*self.output_shape, self.features), h.shape
        return h


def _mean_pool2x2(x: Array) -> Array:
    """Average of the four pixels of each 2x2 cell (H and W must be even)."""
    assert x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0, x.shape
    return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.0


class ConvMeanPool(nn.Module):
    """Conv ('SAME', flax default init as the original) followed by 2x2 mean pooling."""

    output_dim: int
    kernel_size: int = 3
    biases: bool = True

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        k = self.kernel_size
        h = conv.Conv(self.output_dim, (k, k), padding="SAME", use_bias=self.biases)(inputs)
        return _mean_pool2x2(h)


class MeanPoolConv(nn.Module):
    """2x2 mean pooling followed by a conv ('SAME', flax default init). Unused by the models."""

    output_dim: int
    kernel_size: int = 3
    biases: bool = True

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        k = self.kernel_size
        h = _mean_pool2x2(inputs)
        return conv.Conv(self.output_dim, (k, k), padding="SAME", use_bias=self.biases)(h)


def _check_resample(resample: str | None) -> None:
    if resample not in (None, "down"):
        raise ValueError(f"Invalid resample {resample!r}; use None or 'down'.")


class ResidualBlock(nn.Module):
    """Pre-activation residual block of the NCSNv2 ResNet backbone.

    `resample='down'` halves the resolution with ConvMeanPool when `dilation == 1`; with
    `dilation > 1` it keeps the resolution and uses dilated convs instead (as the original).

    Attributes:
      output_dim: output channels.
      normalization: normalisation constructor (`get_normalization(...)`).
      resample: None or "down".
      act: activation.
      dilation: dilation of the 3x3 convs.
    """

    output_dim: int
    normalization: Any
    resample: str | None = None
    act: Callable = nn.elu
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_resample(self.resample)
        d = self.dilation
        h = self.act(self.normalization()(x))
        # Creation order (hence Conv_<i> numbering) follows the original branch by branch.
        if self.resample == "down":
            h = ncsn_conv3x3(h, h.shape[-1], dilation=d)
            h = self.act(self.normalization()(h))
            if d > 1:
                h = ncsn_conv3x3(h, self.output_dim, dilation=d)
                shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
            else:
                h = ConvMeanPool(output_dim=self.output_dim)(h)
                shortcut = ConvMeanPool(output_dim=self.output_dim, kernel_size=1)(x)
        else:
            if self.output_dim == x.shape[-1]:
                shortcut = x
            elif d > 1:
                shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
            else:
                shortcut = ncsn_conv1x1(x, self.output_dim)
            h = ncsn_conv3x3(h, self.output_dim, dilation=d)
            h = self.act(self.normalization()(h))
            h = ncsn_conv3x3(h, self.output_dim, dilation=d)
        assert h.shape == shortcut.shape, (h.shape, shortcut.shape)
        return h + shortcut


class ConditionalResidualBlock(nn.Module):
    """Noise-conditional ResidualBlock of NCSN v1; attributes as ResidualBlock.

    Fixes the original, whose 'down' branch calls `self.normalization(h, y)` (constructing a
    module with h as an attribute) instead of `self.normalization()(h, y)`, so NCSN v1 could
    not run.
    """

    output_dim: int
    normalization: Any
    resample: str | None = None
    act: Callable = nn.elu
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        _check_resample(self.resample)
        d = self.dilation
        h = self.act(self.normalization()(x, y))
        if self.resample == "down":
            h = ncsn_conv3x3(h, h.shape[-1], dilation=d)
            h = self.act(self.normalization()(h, y))  # the fix (see the class docstring)
            if d > 1:
                h = ncsn_conv3x3(h, self.output_dim, dilation=d)
                shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
            else:
                h = ConvMeanPool(output_dim=self.output_dim)(h)
                shortcut = ConvMeanPool(output_dim=self.output_dim, kernel_size=1)(x)
        else:
            if self.output_dim == x.shape[-1]:
                shortcut = x
            elif d > 1:
                shortcut = ncsn_conv3x3(x, self.output_dim, dilation=d)
            else:
                shortcut = ncsn_conv1x1(x, self.output_dim)
            h = ncsn_conv3x3(h, self.output_dim, dilation=d)
            h = self.act(self.normalization()(h, y))
            h = ncsn_conv3x3(h, self.output_dim, dilation=d)
        assert h.shape == shortcut.shape, (h.shape, shortcut.shape)
        return h + shortcut
