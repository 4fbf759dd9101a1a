"""DDPM layers shared by DDPM, NCSN++ and DDPM++ (port of score_sde `models/layers.py`).

Only the DDPM half of the original file lives here: `get_act`, `default_init`, `ddpm_conv1x1`,
`ddpm_conv3x3`, `get_timestep_embedding`, `NIN`, `AttnBlock`, `Upsample`, `Downsample` and
`ResnetBlockDDPM`. The NCSN / RefineNet layers are in `models/layers_ncsn.py`.

Every module creates its submodules in the original's order, so the flax auto-names
(`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0`, ...) match score_sde checkpoints one to one.
Images are NHWC. Layers take explicit arguments and never read a config.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
from jax import Array
from jax import numpy as jnp

from models import conv, fusion, normalization, up_or_down_sampling

Activation = Callable[[Array], Array]

# Nonlinearities selectable by `config.model.nonlinearity` (lower-cased).
ACTIVATIONS: dict[str, Activation] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(nonlinearity: str) -> Activation:
    """Returns the activation named `nonlinearity` (case-insensitive).

    The original `get_act(config)` reads `config.model.nonlinearity`; the factory passes the name.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return ACTIVATIONS[nonlinearity.lower()]
    except KeyError:
        raise ValueError(
            f"Unknown activation {nonlinearity!r}; valid: {sorted(ACTIVATIONS)}"
        ) from None


def default_init(scale: float = 1.0) -> jax.nn.initializers.Initializer:
    """The DDPM initialiser: `variance_scaling(scale, 'fan_avg', 'uniform')`.

    A scale of 0 becomes 1e-10 (variance_scaling rejects 0), which gives near-zero weights.
    """
    scale = 1e-10 if scale == 0 else scale
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def _ddpm_conv(x, out_planes, kernel, stride, bias, dilation, init_scale, upsample=False):
    return conv.Conv(
        out_planes,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        use_bias=bias,
        kernel_dilation=(dilation, dilation),
        kernel_init=default_init(init_scale),
        bias_init=jax.nn.initializers.zeros,
        conv_general_dilated=(
            up_or_down_sampling.upsampled_conv_general_dilated
            if upsample
            else conv.conv_general_dilated
        ),
    )(x)


def ddpm_conv1x1(
    x: Array,
    out_planes: int,
    stride: int = 1,
    bias: bool = True,
    dilation: int = 1,
    init_scale: float = 1.0,
) -> Array:
    """1x1 `nn.Conv` ('SAME') with DDPM init; call inside a compact module (named `Conv_k`)."""
    return _ddpm_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ddpm_conv3x3(
    x: Array,
    out_planes: int,
    stride: int = 1,
    bias: bool = True,
    dilation: int = 1,
    init_scale: float = 1.0,
    upsample: bool = False,
) -> Array:
    """3x3 `nn.Conv` ('SAME') with DDPM init; call inside a compact module (named `Conv_k`).

    With stride 2 on an even size 'SAME' pads (0, 1), which score_sde_pytorch emulates with
    `F.pad(x, (0, 1, 0, 1))`. `upsample`: of `x` upsampled 2x by nearest neighbour, computed at
    `x`'s resolution (`up_or_down_sampling.upsampled_conv_general_dilated`; same params).
    """
    return _ddpm_conv(x, out_planes, 3, stride, bias, dilation, init_scale, upsample)


def get_timestep_embedding(
    timesteps: Array, embedding_dim: int, max_positions: int = 10000
) -> Array:
    """Sinusoidal embedding of (possibly fractional) time steps, as in DDPM / transformers.

    `emb[:, k] = sin(t * f_k)` and `emb[:, half + k] = cos(t * f_k)` with
    `f_k = exp(-log(max_positions) * k / (half - 1))`, `half = embedding_dim // 2`; an odd
    `embedding_dim` gets one zero column.

    Args:
      timesteps: [B] time steps or noise-level labels (int or float).
      embedding_dim: output width.
      max_positions: the longest period, 10000 as in transformers.

    Returns:
      [B, embedding_dim] float32 embedding.
    """
    assert timesteps.ndim == 1, timesteps.shape
    half_dim = embedding_dim // 2
    log_step = math.log(max_positions) / (half_dim - 1)
    freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -log_step)
    angles = timesteps[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    assert emb.shape == (timesteps.shape[0], embedding_dim)
    return emb


class NIN(nn.Module):
    """Network-in-network: a per-pixel linear map over the last axis (params `W`, `b`).

    Attributes:
      num_units: output channels.
      init_scale: `default_init` scale of `W` (0.1 as in DDPM; 0 gives a near-zero map).
    """

    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_dim = x.shape[-1]
        w = self.param("W", default_init(scale=self.init_scale), (in_dim, self.num_units))
        b = self.param("b", jax.nn.initializers.zeros, (self.num_units,))
        y = jnp.tensordot(x, w, axes=1) + b.reshape((1,) * (x.ndim - 1) + (-1,))
        assert y.shape == x.shape[:-1] + (self.num_units,)
        return y


def attention(x: Array, q: Array, k: Array, v: Array) -> Array:
    """Softmax self-attention over all H*W positions, scaled by 1/sqrt(C). Shapes [B, H, W, C]."""
    B, H, W, C = x.shape
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (C ** (-0.5))
    weights = jax.nn.softmax(logits.reshape(B, H, W, H * W), axis=-1).reshape(B, H, W, H, W)
    return jnp.einsum("bhwHW,bHWc->bhwc", weights, v)


class AttnBlock(nn.Module):
    """DDPM self-attention block: `x + NIN(attn(GN(x)))`, the output NIN zero-initialised.

    Attributes:
      num_groups: GroupNorm groups. The JAX original uses `nn.GroupNorm()` (flax default 32)
        and score_sde_pytorch `num_groups=32`; they agree.
    """

    num_groups: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = x.shape[-1]
        h = normalization.GroupNorm(num_groups=self.num_groups)(x)
        q = NIN(C)(h)
        k = NIN(C)(h)
        v = NIN(C)(h)
        h = NIN(C, init_scale=0.0)(attention(x, q, k, v))
        return fusion.boundary(x + h)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (DDPM)."""

    with_conv: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        if self.with_conv:
            h = ddpm_conv3x3(x, C, upsample=True)
        else:
            h = jax.image.resize(x, (B, H * 2, W * 2, C), "nearest")
        assert h.shape == (B, 2 * H, 2 * W, C)
        return h


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv ('SAME') or 2x2 average pooling (DDPM)."""

    with_conv: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        if self.with_conv:
            x = ddpm_conv3x3(x, C, stride=2)
        else:
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        assert x.shape == (B, H // 2, W // 2, C)
        return x


class ResnetBlockDDPM(nn.Module):
    """The DDPM residual block.

    `act(GN(x))` -> conv3x3 -> `+ Dense(act(temb))` -> `act(GN)` -> dropout -> conv3x3 (init 0);
    the skip is a NIN (or a 3x3 conv with `conv_shortcut`) when the channel count changes.

    Attributes:
      act: nonlinearity.
      out_ch: output channels (default: input channels).
      conv_shortcut: 3x3 conv instead of NIN on the skip path.
      dropout: dropout rate (uses the 'dropout' rng stream when `train`).
      num_groups: GroupNorm groups (32 in both originals).
    """

    act: Activation
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.5
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        return fusion.remat(type(self)._body, self, x, temb, train, static_argnums=(3,))

    def _body(self, x: Array, temb: Array | None, train: bool) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(normalization.GroupNorm(num_groups=self.num_groups)(x))
        h = ddpm_conv3x3(h, out_ch)
        # Per-channel bias from the time embedding.
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
        h = self.act(normalization.GroupNorm(num_groups=self.num_groups)(h))
        h = fusion.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=0.0)
        if C != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(x, out_ch)
            else:
                x = NIN(out_ch)(x)
        assert h.shape == x.shape == (B, H, W, out_ch)
        return fusion.boundary(x + h)
