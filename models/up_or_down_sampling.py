"""FIR up/down-sampling and fused resampling convolutions (port of score_sde, from StyleGAN2).

`upfirdn_2d` is the primitive: zero-insertion upsampling, padding (or cropping), convolution
with a 2-D FIR filter, and downsampling by dropping pixels, as `scipy.signal.upfirdn` per axis.
`upsample_2d` / `downsample_2d` normalise the filter so that a constant image keeps its value
away from the borders (pixels outside the image are zeros). `Conv2d` fuses a 3x3 conv with the
resampling (params `weight` HWIO and `bias`, the original names).

Deviation: only NHWC is supported (the original also takes `data_format='NCHW'`), and the
grouped-convolution case of `upsample_conv_2d` (`C != inC`) is not, since no model uses either.

References:
  Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2),
  arXiv:1912.04958; NVlabs/stylegan2 `dnnlib/tflib/ops/upfirdn_2d.py`.
"""

import inspect
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax import Array, lax
from jax import numpy as jnp

from models import conv


class Conv2d(nn.Module):
    """Conv layer with optional fused FIR upsampling or downsampling (StyleGAN2).

    Attributes:
      fmaps: output channels.
      kernel: odd conv size.
      up: fused 2x upsampling (`upsample_conv_2d`).
      down: fused 2x downsampling (`conv_downsample_2d`).
      resample_kernel: 1-D FIR taps (separable).
      use_bias: add a `bias` param.
      kernel_init: initialiser of `weight`.
    """

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        assert not (self.up and self.down)
        assert self.kernel >= 1 and self.kernel % 2 == 1
        w = self.param(
            "weight", self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps)
        )
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
        if self.use_bias:
            b = self.param("bias", jax.nn.initializers.zeros, (x.shape[-1],))
            x = x + b.reshape((1, 1, 1, -1))
        return x


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling by an integer factor (each pixel repeated factor x factor)."""
    _, H, W, C = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (x.shape[0], H, factor, W, factor, C))
    return x.reshape(-1, H * factor, W * factor, C)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Mean over non-overlapping factor x factor blocks."""
    _, H, W, C = x.shape
    x = x.reshape(-1, H // factor, factor, W // factor, factor, C)
    return jnp.mean(x, axis=(2, 4))


_NHWC_DN = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), conv.NHWC)
_PHASE_PADDING = ((1, 0), (0, 1))  # the input pixels (i - 1, i), (i, i + 1) of the two phases


def _phase_taps(w: Array, phase: int, axis: int) -> Array:
    """The 3 taps of `w` along `axis` as output phase `phase` of a nearest-2x-upsampled input
    sees them: output `2i` covers upsampled pixels `2i - 1, 2i, 2i + 1` = input `i - 1, i, i`;
    output `2i + 1` covers input `i, i, i + 1`. Two taps, the repeated pixel's summed."""
    t = [lax.index_in_dim(w, i, axis) for i in range(3)]
    pair = (t[0], t[1] + t[2]) if phase == 0 else (t[0] + t[1], t[2])
    return jnp.concatenate(pair, axis)


def upsampled_conv_general_dilated(lhs: Array, rhs: Array, *args, **kwargs) -> Array:
    """`conv_general_dilated` of `lhs` upsampled 2x by nearest neighbour (each pixel repeated
    2 x 2, `naive_upsample_2d`), as `conv.Conv(..., conv_general_dilated=...)` takes it: the
    arguments of `conv.conv_general_dilated`.

    A 3x3 'SAME' stride-1 kernel in NHWC / HWIO is computed at the input's resolution, one 2x2
    convolution per output phase (`_phase_taps`), interleaved: 16 instead of 36 multiply-adds
    per input pixel, and no upsampled copy of the input. Values equal the upsample-then-convolve
    ones up to float rounding (the repeated pixel's two taps are added first), as do gradients.
    Measured on 2 cores (batch 8, 256 channels, 16x16 -> 32x32): forward 51 -> 22 ms, forward +
    both gradients 216 -> 51 ms; 8x8 -> 16x16: 12 -> 6 and 34 -> 15 ms. Any other convolution
    upsamples first and goes to `conv.conv_general_dilated`.
    """
    bound = inspect.signature(conv.conv_general_dilated).bind(lhs, rhs, *args, **kwargs)
    bound.apply_defaults()
    arg = dict(bound.arguments)
    if lhs.ndim != 4:
        raise ValueError(f"upsampled_conv_general_dilated: a 2-D NHWC input, got {lhs.shape}")
    n, h, w, c = lhs.shape
    dn = lax.conv_dimension_numbers((n, 2 * h, 2 * w, c), rhs.shape, arg["dimension_numbers"])
    if dn.lhs_spec != _NHWC_DN.lhs_spec:
        raise ValueError(
            "upsampled_conv_general_dilated: the input must be NHWC, got "
            f"{arg['dimension_numbers']}"
        )
    padding = arg["padding"]
    phased = (
        rhs.shape[:2] == (3, 3)
        and dn == _NHWC_DN
        and tuple(arg["window_strides"]) == (1, 1)
        and all(d == 1 for d in tuple(arg["lhs_dilation"] or ()) + tuple(arg["rhs_dilation"] or ()))
        and arg["feature_group_count"] == arg["batch_group_count"] == 1
        and arg["precision"] is None
        and arg["preferred_element_type"] is None
        and (padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1)))
    )
    if not phased:
        return conv.conv_general_dilated(**{**arg, "lhs": naive_upsample_2d(lhs, 2)})
    rows = []
    for a in (0, 1):
        rhs_a = _phase_taps(rhs, a, 0)
        cols = [
            conv.conv_general_dilated(
                lhs,
                _phase_taps(rhs_a, b, 1),
                (1, 1),
                (_PHASE_PADDING[a], _PHASE_PADDING[b]),
                dimension_numbers=conv.NHWC,
            )
            for b in (0, 1)
        ]
        rows.append(jnp.stack(cols, axis=3))  # [N, H, W, b, O]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, -1)  # [N, H, a, W, b, O]


def _setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """2-D FIR filter normalised to sum 1; a 1-D `k` becomes the separable `outer(k, k)`."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    k /= np.sum(k)
    assert k.ndim == 2 and k.shape[0] == k.shape[1]
    return k


def upfirdn_2d(
    x: Array,
    k: np.ndarray,
    upx: int,
    upy: int,
    downx: int,
    downy: int,
    padx0: int,
    padx1: int,
    pady0: int,
    pady1: int,
) -> Array:
    """Pad, upsample, FIR-filter and downsample a batch of images, channel by channel.

    1. Upsample by inserting `up - 1` zeros after every pixel.
    2. Pad with zeros (negative values crop) by `pad*0` before and `pad*1` after.
    3. Convolve (true convolution, not correlation) with `k`, keeping only outputs whose
       footprint lies inside the padded image.
    4. Keep every `down`-th pixel.

    Args:
      x: [N, H, W, C] images.
      k: [kh, kw] FIR filter.
      upx, upy, downx, downy: integer factors along W (x) and H (y).
      padx0, padx1, pady0, pady1: padding (negative: cropping) after upsampling.

    Returns:
      [N, (H * upy + pady0 + pady1 - kh) // downy + 1, (W * upx + ...) // downx + 1, C].
    """
    k = np.asarray(k, dtype=np.float32)
    assert x.ndim == 4 and k.ndim == 2
    for v in (upx, upy, downx, downy, padx0, padx1, pady0, pady1):
        assert isinstance(v, int), v
    N, H, W, C = x.shape
    kh, kw = k.shape
    # Steps 1-2 in one `lax.pad`: interior padding inserts the zeros between pixels, the extra
    # `up - 1` on the high side puts them after the last pixel too; negative edges crop.
    zero = jnp.zeros((), x.dtype)
    x = jax.lax.pad(
        x,
        zero,
        (
            (0, 0, 0),
            (pady0, pady1 + upy - 1, upy - 1),
            (padx0, padx1 + upx - 1, upx - 1),
            (0, 0, 0),
        ),
    )
    assert x.shape[1:3] == (H * upy + pady0 + pady1, W * upx + padx0 + padx1)
    # Steps 3-4: correlation with the flipped filter (= convolution with `k`), keeping every
    # `down`-th output, as a sum of shifted strided slices: a FIR filter is a few multiply-adds
    # per pixel, which XLA fuses into one loop, while the equivalent depthwise convolution
    # (`feature_group_count=C`) has no fast kernel on XLA:CPU (a naive loop nest: 26 ms for one
    # 32x32x256 upsampling, the largest op of the NCSN++ forward pass at batch 1).
    out_h, out_w = (x.shape[1] - kh) // downy + 1, (x.shape[2] - kw) // downx + 1
    taps = k[::-1, ::-1].astype(np.float64)
    rows, cols = taps.sum(axis=1), taps.sum(axis=0) / taps.sum()
    if taps.sum() != 0 and np.allclose(np.outer(rows, cols), taps, rtol=1e-6, atol=0):
        # Separable (every `_setup_kernel` of a 1-D filter): filter the rows, then the columns.
        x = _fir_taps(x, rows[:, None], downy, 1, out_h, x.shape[2])
        return _fir_taps(x, cols[None, :], 1, downx, out_h, out_w)
    return _fir_taps(x, taps, downy, downx, out_h, out_w)


def _fir_taps(x: Array, taps: np.ndarray, sy: int, sx: int, out_h: int, out_w: int) -> Array:
    """`sum_ij taps[i, j] * x[:, i + sy * a, j + sx * b, :]` for `a < out_h`, `b < out_w`."""
    out = None
    for (i, j), t in np.ndenumerate(taps):
        if t == 0:
            continue
        window = jax.lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + sy * (out_h - 1) + 1, j + sx * (out_w - 1) + 1, x.shape[3]),
            (1, sy, sx, 1),
        )
        term = window * jnp.asarray(t, x.dtype)
        out = term if out is None else out + term
    return out if out is not None else jnp.zeros((x.shape[0], out_h, out_w, x.shape[3]), x.dtype)


def _simple_upfirdn_2d(
    x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0
) -> Array:
    """`upfirdn_2d` with the same factor and padding along both axes."""
    return upfirdn_2d(x, k, up, up, down, down, pad0, pad1, pad0, pad1)


def upsample_2d(
    x: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1
) -> Array:
    """Upsamples [N, H, W, C] by `factor` with FIR filter `k` (default: nearest neighbour).

    The filter is normalised and scaled by `gain * factor**2`, so that constant input pixels are
    scaled by `gain` (zero-inserted upsampling divides the mean by factor**2).
    """
    assert isinstance(factor, int) and factor >= 1
    k = _setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = k.shape[0] - factor
    return _simple_upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(
    x: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1
) -> Array:
    """Downsamples [N, H, W, C] by `factor` with FIR filter `k` (default: average pooling)."""
    assert isinstance(factor, int) and factor >= 1
    k = _setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return _simple_upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(
    x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1
) -> Array:
    """Fused `upsample_2d` then a 'SAME' correlation with `w` (padding done once).

    A stride-`factor` transposed convolution followed by FIR filtering; up to float rounding
    this equals `conv2d(upsample_2d(x, k), w, 'SAME')`.

    Args:
      x: [N, H, W, C] images.
      w: [kh, kw, C, out] conv weight (HWIO), `kh == kw` odd.
      k: 1-D FIR taps (default `[1] * factor`: nearest neighbour).
      factor: integer upsampling factor.
      gain: signal gain.

    Returns:
      [N, H * factor, W * factor, out].
    """
    assert isinstance(factor, int) and factor >= 1
    assert w.ndim == 4 and w.shape[0] == w.shape[1]
    conv_size, in_ch = w.shape[0], w.shape[2]
    assert x.shape[-1] == in_ch, "grouped upsample_conv_2d is not supported"
    k = _setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = (k.shape[0] - factor) - (conv_size - 1)
    # Transposed conv = correlation of the zero-dilated input with `w`, 'full' padding
    # (output (H - 1) * factor + conv_size): what the original's `conv_transpose(flipped w,
    # transpose_kernel=True)` computes.
    x = conv.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=((conv_size - 1, conv_size - 1),) * 2,
        lhs_dilation=(factor, factor),
        dimension_numbers=conv.NHWC,
    )
    return _simple_upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(
    x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1
) -> Array:
    """Fused 'SAME' correlation with `w` then `downsample_2d` (padding done once).

    FIR filtering followed by a stride-`factor` VALID correlation; up to float rounding this
    equals `downsample_2d(conv2d(x, w, 'SAME'), k)`.

    Args:
      x: [N, H, W, C] images.
      w: [kh, kw, C, out] conv weight (HWIO), `kh == kw`.
      k: 1-D FIR taps (default `[1] * factor`: average pooling).
      factor: integer downsampling factor.
      gain: signal gain.

    Returns:
      [N, H // factor, W // factor, out].
    """
    assert isinstance(factor, int) and factor >= 1
    assert w.ndim == 4 and w.shape[0] == w.shape[1]
    conv_size = w.shape[0]
    k = _setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (conv_size - 1)
    x = _simple_upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
    return conv.conv_general_dilated(
        x, w, window_strides=(factor, factor), padding="VALID", dimension_numbers=conv.NHWC
    )
