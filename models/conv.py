"""`conv_general_dilated` whose gradients are NHWC/HWIO convolutions (loop-safe on XLA:CPU).

XLA:CPU implements a convolution with its fast library kernels (YNNPACK / Eigen) only in the
canonical layout (`NHWC`, `HWIO`, `NHWC`). The gradients JAX derives for a convolution are
convolutions with permuted dimension numbers (`dx`: `b01f_01oi->b01f`, `dw`:
`f01b_i01o->01bf`). At the top level of a jitted function XLA's conv canonicalisation turns them
into canonical convolutions plus transposes; inside a `while` body (`lax.scan`, `fori_loop`)
it does not, and the gradient convolutions fall back to a naive loop nest, 30-100x slower
(jax-ml/jax#12868; measured here: 4 conv-gradient steps of a 64-channel 32x32 conv, 2.3 s at
the top level vs 75 s in a `fori_loop`).

`conv_general_dilated` here computes the forward pass with `lax.conv_general_dilated` (the
same op, bit for bit; a 1x1 stride-1 kernel as the matrix product it is, equal up to float
rounding and twice as fast on XLA:CPU) and defines the backward pass directly as canonical
convolutions:
  * `dx`: the output gradient convolved with the spatially flipped kernel, in/out swapped
    (`lhs_dilation` = the forward strides), the transpose rule of `lax` in canonical layout;
  * `dw`: the big-window convolution XLA itself uses at the top level (batch and channel axes
    swapped), or for a 1x1 kernel without dilation a matrix product, `x^T g`, which is what
    that convolution computes, without its two activation transposes.
At the top level the gradients equal JAX's bit for bit (XLA canonicalises them the same way),
except for 1x1 kernels (dots instead of convolutions: float rounding, ~1e-6 relative).

It has `lax.conv_general_dilated`'s signature, so flax takes it as
`nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)`; `Conv` below is that `nn.Conv`
(param names and shapes do not change), the one the networks use. Other layouts,
`batch_group_count > 1`, `precision` and `preferred_element_type` use
`lax.conv_general_dilated` unchanged; grouped convolutions (the FIR filters of NCSN++, whose
kernels are constants) get `dx` in canonical form and `dw` from `lax`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax import Array, lax
from jax import numpy as jnp
from jax.custom_derivatives import SymbolicZero, linear_call

from models import fusion

NHWC = ("NHWC", "HWIO", "NHWC")


def _canonical_dn(nd: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of `N, spatial..., C` / `spatial..., I, O` / `N, spatial..., C`."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1) + spatial,
        rhs_spec=(nd + 1, nd) + tuple(range(nd)),
        out_spec=(0, nd + 1) + spatial,
    )


def _dilate(size: int, dilation: int) -> int:
    return 0 if size == 0 else 1 + dilation * (size - 1)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> Array:
    """`lax.conv_general_dilated` with canonical-layout gradients (see the module docstring)."""
    nd = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if (
        dn != _canonical_dn(nd)
        or batch_group_count != 1
        or precision is not None
        or preferred_element_type is not None
        or lhs.dtype != rhs.dtype
    ):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    strides = tuple(int(s) for s in window_strides)
    lhs_dilation = tuple(int(d) for d in (lhs_dilation or (1,) * nd))
    rhs_dilation = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
    if isinstance(padding, str):
        # As `lax.conv_general_dilated`: the undilated input against the dilated kernel.
        window = [_dilate(k, d) for k, d in zip(rhs.shape[:nd], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:-1], window, strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    config = (strides, padding, lhs_dilation, rhs_dilation, int(feature_group_count))
    return _conv(lhs, rhs, config)


class Conv(nn.Conv):
    """`nn.Conv` on `conv_general_dilated` above: the same module name, params and numbers."""

    conv_general_dilated: Callable | None = conv_general_dilated


def _pointwise(config, k_shape) -> bool:
    """A 1x1 kernel, stride 1, no padding or dilation, one group: a matrix product over pixels."""
    strides, padding, lhs_dilation, _, groups = config
    return (
        groups == 1
        and all(k == 1 for k in k_shape)
        and all(s == 1 for s in strides)
        and all(d == 1 for d in lhs_dilation)
        and all(p == (0, 0) for p in padding)
    )


def _pixels_dot(a, b, contract: int):
    """`a` [N, spatial..., C] times `b` [C, D] (contract 0) or [D, C] (contract 1), per pixel."""
    out = lax.dot_general(a.reshape(-1, a.shape[-1]), b, (((1,), (contract,)), ((), ())))
    return out.reshape(*a.shape[:-1], out.shape[-1])


def _raw(x, w, config):
    strides, padding, lhs_dilation, rhs_dilation, groups = config
    nd = x.ndim - 2
    if _pointwise(config, w.shape[:nd]):
        # XLA:CPU runs a 1x1 convolution at half the speed of the same matrix product (DDPM++
        # batch 8: 71-94 vs 160-190 GFLOP/s); the sums are the same up to float rounding.
        return _pixels_dot(x, w.reshape(w.shape[-2:]), 0)
    return lax.conv_general_dilated(
        x, w, strides, padding, lhs_dilation, rhs_dilation, _canonical_dn(nd),
        feature_group_count=groups,
    )  # fmt: skip


def _conv(x, w, config):
    """The forward op, differentiable in both modes: a `custom_jvp` whose tangent maps are
    `linear_call`s with `_grad_lhs` / `_grad_rhs` as their transposes, so that forward mode
    (the likelihood's `jax.jvp`) stays a plain convolution and reverse mode gets the canonical
    gradients. Built per call: a module-level `defjvp` would be an import-time statement."""

    @jax.custom_jvp
    def conv(x, w):
        return _raw(x, w, config)

    def jvp(primals, tangents):
        x, w = primals
        tx, tw = tangents
        y = _raw(x, w, config)
        ty = None
        if not isinstance(tx, SymbolicZero):
            ty = linear_call(
                lambda w, tx: _raw(tx, w, config),
                lambda w, ct: _grad_lhs(ct, x.shape, x.dtype, w, config),
                w,
                tx,
            )
        if not isinstance(tw, SymbolicZero):
            tyw = linear_call(
                lambda x, tw: _raw(x, tw, config),
                lambda x, ct: _grad_rhs(ct, x, w.shape, w.dtype, config),
                x,
                tw,
            )
            ty = tyw if ty is None else ty + tyw
        if ty is None:
            ty = jnp.zeros_like(y)
        return y, ty

    conv.defjvp(jvp, symbolic_zeros=True)
    return conv(x, w)


def _after(a: Array, g: Array) -> Array:
    """`a`, computed once the cotangent `g` exists: `a + 0 * g[0]`.

    XLA:CPU's (default, concurrency-optimised) scheduler runs an op as soon as its operands
    exist. The flipped, transposed kernels of `dx` depend on the params alone, so without this
    they all ran at the start of the train step, and each copy stayed live until the backward
    pass reached its layer: ~210 MB of the peak of a DDPM++ train step at batch 8 (XLA's temp
    buffer 1206 -> 998 MB). The transposed input of `dw` likewise depends on the forward pass
    alone (with `fusion.remat` blocks, 165 MiB of that peak). `lax.optimization_barrier` does
    not hold them back (XLA:CPU removes barriers before scheduling). The value is `a` exactly;
    a non-finite `g[0]` makes it non-finite, and the gradient is non-finite then anyway.
    """
    return a + jnp.zeros((), a.dtype) * g.reshape(-1)[0].astype(a.dtype)


def _grad_lhs(g, x_shape, x_dtype, w, config):
    """`dx`: `lax`'s transpose rule for the input, with the kernel moved to HWIO."""
    strides, padding, lhs_dilation, rhs_dilation, groups = config
    nd = len(x_shape) - 2
    in_shape, k_shape, out_shape = x_shape[1:-1], w.shape[:nd], g.shape[1:-1]
    w = _after(w, g)  # all that is made of the kernel below waits for the backward pass
    if _pointwise(config, k_shape):
        return _pixels_dot(g, w.reshape(w.shape[-2:]), 1).astype(x_dtype)
    if groups > 1:
        # [..., I/G, O] -> [..., G * I/G, O/G]: the group axis moves from O into I.
        *k, i_g, o = w.shape
        w = w.reshape(*k, i_g, groups, o // groups)
        w = jnp.moveaxis(w, nd + 1, nd).reshape(*k, groups * i_g, o // groups)
    # Flip the window, swap in/out: the transposed kernel in HWIO.
    w_t = jnp.swapaxes(lax.rev(w, tuple(range(nd))), nd, nd + 1)
    lhs_d = [_dilate(s, d) for s, d in zip(in_shape, lhs_dilation)]
    rhs_d = [_dilate(s, d) for s, d in zip(k_shape, rhs_dilation)]
    out_d = [_dilate(s, d) for s, d in zip(out_shape, strides)]
    before = [k - lo - 1 for k, (lo, _) in zip(rhs_d, padding)]
    after = [a + k - 1 - o - b for a, k, o, b in zip(lhs_d, rhs_d, out_d, before)]
    pads, dilation = list(zip(before, after)), strides
    if np.prod(rhs_d) > np.prod(out_d):
        # A kernel larger than the gradient map (a 4x4 conv down to 2x2): XLA's simplifier would
        # swap the operands into a non-canonical convolution. The map dilated and padded
        # explicitly (behind a barrier, or the pad folds back into the convolution) stays the
        # larger operand; the products are the same.
        zero = jnp.zeros((), g.dtype)
        config_pad = [(0, 0, 0)] + [(b, a, s - 1) for b, a, s in zip(before, after, strides)]
        g = lax.optimization_barrier(lax.pad(g, zero, config_pad + [(0, 0, 0)]))
        pads, dilation = [(0, 0)] * nd, (1,) * nd
    return lax.conv_general_dilated(
        g, w_t, window_strides=lhs_dilation, padding=pads, lhs_dilation=dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=_canonical_dn(nd), feature_group_count=groups,
    ).astype(x_dtype)  # fmt: skip


def _grad_rhs(g, x, w_shape, w_dtype, config):
    """`dw`: the top-level canonical form (batch <-> channel swapped), or `x^T g` for 1x1."""
    strides, padding, lhs_dilation, rhs_dilation, groups = config
    nd = x.ndim - 2
    if groups > 1:
        # Not used by the models (their grouped kernels are constants): `lax`'s rule.
        w = jnp.zeros(w_shape, w_dtype)
        return jax.vjp(lambda w: _raw(x, w, config), w)[1](g)[0]
    in_shape, k_shape, out_shape = x.shape[1:-1], w_shape[:nd], g.shape[1:-1]
    if _pointwise(config, k_shape):
        # A 1x1 conv is a matrix product over pixels; so is its kernel gradient.
        dw = lax.dot_general(
            x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ()))
        )
        return dw.reshape(w_shape).astype(w_dtype)
    lhs_d = [_dilate(s, d) for s, d in zip(in_shape, lhs_dilation)]
    rhs_d = [_dilate(s, d) for s, d in zip(k_shape, rhs_dilation)]
    out_d = [_dilate(s, d) for s, d in zip(out_shape, strides)]
    lo = [p[0] for p in padding]
    hi = [o - a + k - p - 1 for o, a, k, p in zip(out_d, lhs_d, rhs_d, lo)]
    spatial = tuple(range(1, nd + 1))
    x = _after(x, g)  # its transposed copy is made when the backward pass reaches the layer
    # Stored before it is transposed (CPU): XLA would fuse the producer of `x` (a remat block's
    # recomputed GroupNorm and activation, an up block's concatenation) into the transpose and
    # read all of its operands in the transposed order, with a cache line per element: 14 ms
    # for an 8x32x32x256 map, against ~1 ms for the elementwise pass plus ~1 ms for the
    # transpose. DDPM++ cont. train step 0.90-0.99x the time, the same bits (values to float
    # rounding elsewhere: the elementwise kernel may round differently from the fused loop).
    x = fusion.boundary(x)
    x_t = jnp.transpose(x, (nd + 1,) + spatial + (0,))  # [C, spatial..., N]: C is the batch
    g_t = jnp.transpose(g, spatial + (0, nd + 1))  # [spatial..., N, O]: the window
    dw = lax.conv_general_dilated(
        x_t, g_t, window_strides=rhs_dilation, padding=list(zip(lo, hi)),
        lhs_dilation=lhs_dilation, rhs_dilation=strides, dimension_numbers=_canonical_dn(nd),
    )  # fmt: skip
    return jnp.transpose(dw, spatial + (0, nd + 1)).astype(w_dtype)  # [C, k..., O] -> HWIO


def conv_transpose_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """`lax.conv_transpose`'s explicit padding of the dilated input for 'SAME' / 'VALID'."""
    if padding == "SAME":
        pad_len = kernel + stride - 2
        before = kernel - 1 if stride > kernel - 1 else int(np.ceil(pad_len / 2))
    elif padding == "VALID":
        pad_len = kernel + stride - 2 + max(kernel - stride, 0)
        before = kernel - 1
    else:
        raise ValueError(f"padding {padding!r}: only 'SAME' and 'VALID'")
    return before, pad_len - before
