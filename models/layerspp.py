"""Layers of NCSN++ / DDPM++ (port of score_sde `models/layerspp.py`).

GroupNorm layers here use `num_groups = min(C // 4, 32)` and epsilon 1e-6, in both originals
(JAX and score_sde_pytorch). Submodules are created in the original's order, so the flax
auto-names (`GroupNorm_0`, `Conv_0`, `Dense_0`, `Conv2d_0`, `NIN_0`, ...) match the checkpoints.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax import Array
from jax import numpy as jnp

from models import fusion, layers, normalization, up_or_down_sampling

conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
NIN = layers.NIN
default_init = layers.default_init

# Residual sums are divided by sqrt(2) with `skip_rescale` to keep the variance constant.
SQRT2 = np.sqrt(2.0)


def group_norm(x: Array) -> Array:
    """`normalization.GroupNorm` with min(C // 4, 32) groups, made in the calling compact module."""
    return normalization.GroupNorm(num_groups=min(x.shape[-1] // 4, 32))(x)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: `[sin(2 pi W x), cos(2 pi W x)]`.

    `W ~ N(0, scale^2)` is stored in `params` (so checkpoints carry it) but never trained
    (`stop_gradient`; `requires_grad=False` in score_sde_pytorch).

    Attributes:
      embedding_size: number of frequencies (output width is twice this).
      scale: standard deviation of `W`.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        assert x.ndim == 1, x.shape
        W = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        W = jax.lax.stop_gradient(W)
        x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """Merges a skip `x` into `y` after a 1x1 conv to `y`'s width, by 'cat' or 'sum'."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(x, y.shape[-1])
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"Method {self.method!r} not recognized; valid: ['cat', 'sum']")


class AttnBlockpp(nn.Module):
    """DDPM self-attention with `min(C // 4, 32)` GroupNorm groups and optional 1/sqrt(2).

    Attributes:
      skip_rescale: return `(x + h) / sqrt(2)` instead of `x + h`.
      init_scale: `default_init` scale of the output NIN (0: near-zero).
    """

    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = x.shape[-1]
        h = group_norm(x)
        q = NIN(C)(h)
        k = NIN(C)(h)
        v = NIN(C)(h)
        h = NIN(C, init_scale=self.init_scale)(layers.attention(x, q, k, v))
        return fusion.boundary((x + h) / SQRT2 if self.skip_rescale else x + h)


class Upsample(nn.Module):
    """2x upsampling: nearest (+ conv3x3), FIR, or a fused FIR conv (`Conv2d(up=True)`).

    Attributes:
      out_ch: output channels (default: input channels; needs `with_conv` to change).
      with_conv: apply a 3x3 conv.
      fir: FIR resampling with `fir_kernel` instead of nearest neighbour.
      fir_kernel: 1-D FIR taps.
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir and self.with_conv:
            h = conv3x3(x, out_ch, upsample=True)
        elif not self.fir:
            h = jax.image.resize(x, (B, H * 2, W * 2, C), "nearest")
        elif not self.with_conv:
            h = up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
        else:
            h = up_or_down_sampling.Conv2d(
                out_ch,
                kernel=3,
                up=True,
                resample_kernel=self.fir_kernel,
                use_bias=True,
                kernel_init=default_init(),
            )(x)
        assert h.shape == (B, 2 * H, 2 * W, out_ch)
        return h


class Downsample(nn.Module):
    """2x downsampling: stride-2 conv3x3 or average pool, FIR, or a fused FIR conv.

    Attributes:
      out_ch: output channels (default: input channels; needs `with_conv` to change).
      with_conv: apply a 3x3 conv.
      fir: FIR resampling with `fir_kernel` instead of the stride-2 conv / 2x2 mean.
      fir_kernel: 1-D FIR taps.
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            if self.with_conv:
                x = conv3x3(x, out_ch, stride=2)
            else:
                x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        elif not self.with_conv:
            x = up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
        else:
            x = up_or_down_sampling.Conv2d(
                out_ch,
                kernel=3,
                down=True,
                resample_kernel=self.fir_kernel,
                use_bias=True,
                kernel_init=default_init(),
            )(x)
        assert x.shape == (B, H // 2, W // 2, out_ch)
        return x


class ResnetBlockDDPMpp(nn.Module):
    """The DDPM residual block with `min(C // 4, 32)` groups and optional 1/sqrt(2) skip.

    Attributes:
      act: nonlinearity.
      out_ch: output channels (default: input channels).
      conv_shortcut: 3x3 conv instead of NIN on the skip path when the width changes.
      dropout: dropout rate ('dropout' rng stream when `train`).
      skip_rescale: divide the residual sum by sqrt(2).
      init_scale: `default_init` scale of the second conv (0: near-zero).
    """

    act: layers.Activation
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        return fusion.remat(type(self)._body, self, x, temb, train, static_argnums=(3,))

    def _body(self, x: Array, temb: Array | None, train: bool) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(x))
        h = conv3x3(h, out_ch)
        # Per-channel bias from the time embedding.
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(h))
        h = fusion.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if C != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        assert h.shape == x.shape == (B, H, W, out_ch)
        return fusion.boundary((x + h) / SQRT2 if self.skip_rescale else x + h)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block, optionally resampling both branches (FIR or naive).

    `act(GN(x))` -> [up/down] -> conv3x3 -> `+ Dense(act(temb))` -> `act(GN)` -> dropout ->
    conv3x3 (init `init_scale`); the skip is resampled the same way and gets a 1x1 conv when the
    width changes or the block resamples.

    Attributes:
      act: nonlinearity.
      up: 2x upsampling.
      down: 2x downsampling.
      out_ch: output channels (default: input channels).
      dropout: dropout rate ('dropout' rng stream when `train`).
      fir: FIR resampling with `fir_kernel`; otherwise nearest / 2x2 mean.
      fir_kernel: 1-D FIR taps.
      skip_rescale: divide the residual sum by sqrt(2).
      init_scale: `default_init` scale of the second conv (0: near-zero).
    """

    act: layers.Activation
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def _resample(self, x: Array) -> Array:
        if self.up:
            if self.fir:
                return up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
            return up_or_down_sampling.naive_upsample_2d(x, factor=2)
        if self.down:
            if self.fir:
                return up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
            return up_or_down_sampling.naive_downsample_2d(x, factor=2)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        return fusion.remat(type(self)._body, self, x, temb, train, static_argnums=(3,))

    def _body(self, x: Array, temb: Array | None, train: bool) -> Array:
        assert not (self.up and self.down)
        C = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(x))
        # Nearest upsampling goes into the two convolutions, computed at `x`'s resolution: the
        # 3x3 one per output phase, the 1x1 skip before upsampling (per pixel, so the same).
        nearest_up = self.up and not self.fir
        if not nearest_up:
            h, x = self._resample(h), self._resample(x)
        h = conv3x3(h, out_ch, upsample=nearest_up)
        # Per-channel bias from the time embedding.
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(h))
        h = fusion.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if C != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        if nearest_up:
            x = self._resample(x)
        assert h.shape == x.shape, (h.shape, x.shape)
        return fusion.boundary((x + h) / SQRT2 if self.skip_rescale else x + h)
