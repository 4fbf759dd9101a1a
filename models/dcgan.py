"""DCGAN generator and discriminator (Radford et al. 2015) as flax.linen modules.

Used by DDLS (`samplers/ddls.py`, Che et al. 2020): the GAN is trained by
`experiments.gan.train` and the discriminator logit of generated images, `d(G(z))`, defines an energy in latent space.

Shapes: latents `z` are `[B, z_dim]` (z ~ N(0, I)); images are NHWC in [-1, 1] (the data scaler
with `data.centered=True`); logits are `[B]`. Image sizes are `base * 2**n` with `base` the first
odd size or 4 reached by halving: 32 px -> 4x4 base and 3 up-samplings, 28 px -> 7x7 and 2.

Layouts (`layout` of both modules):
  * "flax" (default): the layout above, with biases (what `experiments.gan` trains).
  * "torch": the PyTorch DCGAN of pytorch/examples `dcgan/main.py` (64 px there; any
    `4 * 2**n` here), so its `netG` / `netD` state dicts load (`models/convert_dcgan.py`): no
    biases, a 4x4 transposed conv from the 1x1 latent (a Dense layer here), PyTorch's
    `padding=1` on the 4x4 stride-2 (transposed) convs, a 4x4 "valid" conv as the last D layer.
  * "torch_1x1": its 32-px CIFAR-10 variant (the widely used pretrained CIFAR-10 DCGAN,
    `netG_epoch_*.pth` / `netD_epoch_*.pth`): G keeps `ngf` channels at full resolution and ends
    in a 1x1 transposed conv; D has one more stride-2 conv, down to 2x2, and a 2x2 last conv.
  The torch layouts name their layers `main_<i>` after the PyTorch `main.<i>` Sequential index.

References:
  Radford, Metz, Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", arXiv:1511.06434, Sec. 3 ("Architecture guidelines").
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
from jax import numpy as jnp

from models import conv

# DCGAN paper, Sec. 4: "All weights were initialized from a zero-centered Normal distribution
# with standard deviation 0.02."
_INIT = nn.initializers.normal(0.02)
# Leaky ReLU slope of the discriminator (paper Sec. 3).
LEAKY_SLOPE = 0.2


def num_upsamplings(image_size: int) -> tuple[int, int]:
    """`(base, n)` with `image_size = base * 2**n`, halving while even and above 4.

    Raises:
      ValueError: for sizes below 4 or without a usable base (e.g. 30 -> 15 is fine, 6 -> 3 not).
    """
    base, n = image_size, 0
    while base % 2 == 0 and base > 4:
        base, n = base // 2, n + 1
    if n == 0 or base < 4:
        raise ValueError(
            f"DCGAN needs image_size = base * 2**n with base >= 4 and n >= 1 (e.g. 28 or 32); "
            f"got {image_size}."
        )
    return base, n


class ConvTranspose(nn.Module):
    """`nn.ConvTranspose` with the loop-safe gradients of models/conv.py: the same name, params
    (`kernel`, `bias`), padding ('SAME', 'VALID' or explicit pairs), `transpose_kernel` and
    numbers."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], ...] = "SAME"
    use_bias: bool = True
    transpose_kernel: bool = False
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        io = (self.features, x.shape[-1]) if self.transpose_kernel else (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, *io))
        if self.transpose_kernel:
            # As `lax.conv_transpose`: the gradient of a conv with this kernel (flip, swap I/O).
            kernel = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
        if isinstance(self.padding, str):
            pads = [conv.conv_transpose_padding(k, s, self.padding)
                    for k, s in zip(self.kernel_size, self.strides)]  # fmt: skip
        else:
            pads = [tuple(p) for p in self.padding]
        y = conv.conv_general_dilated(x, kernel, (1, 1), pads, self.strides, None, conv.NHWC)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def _batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d defaults (momentum 0.1 of the new value, eps 1e-5), as DCGAN code.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


LAYOUTS = ("flax", "torch", "torch_1x1")
# PyTorch's ConvTranspose2d(k=4, s=2, p=1) is a conv of the stride-dilated input padded by
# k - 1 - p = 2 on each side; Conv2d(k=4, s=2, p=1) pads by 1.
_TORCH_UP_PAD = ((2, 2), (2, 2))
_TORCH_DOWN_PAD = ((1, 1), (1, 1))


def _check_layout(layout: str, image_size: int) -> int:
    """Validates the layout; returns n (image_size = base * 2**n). Torch layouts need base 4."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown DCGAN layout {layout!r}; valid: {list(LAYOUTS)}")
    base, n = num_upsamplings(image_size)
    if layout != "flax" and base != 4:
        raise ValueError(
            f"DCGAN layout {layout!r} starts from 4x4 (image_size = 4 * 2**n, e.g. 32 or 64); "
            f"got image_size {image_size}"
        )
    return n


def _torch_generator(z, train, *, image_size, num_channels, ngf, head_1x1):
    """The pytorch/examples generator (or its 1x1-head variant); called inside a compact call."""
    n = _check_layout("torch_1x1" if head_1x1 else "torch", image_size)
    # Widths at 4, 8, ...: down to ngf at the last hidden layer (full resolution with the head).
    top = n if head_1x1 else n - 1
    widths = [ngf * 2 ** (top - i) for i in range(top + 1)]
    # main.0: ConvTranspose2d(nz, widths[0], 4, 1, 0) on the 1x1 latent = a Dense layer.
    h = nn.Dense(16 * widths[0], use_bias=False, kernel_init=_INIT, name="main_0")(z)
    h = nn.relu(_batch_norm(train, "main_1")(h.reshape(z.shape[0], 4, 4, widths[0])))
    idx = 3  # every block is (conv, BN, ReLU)
    for width in widths[1:]:
        h = ConvTranspose(width, (4, 4), strides=(2, 2), padding=_TORCH_UP_PAD, use_bias=False,
                          transpose_kernel=True, kernel_init=_INIT, name=f"main_{idx}")(h)  # fmt: skip
        h = nn.relu(_batch_norm(train, f"main_{idx + 1}")(h))
        idx += 3
    if head_1x1:
        out = ConvTranspose(num_channels, (1, 1), padding=((0, 0), (0, 0)), use_bias=False,
                            transpose_kernel=True, kernel_init=_INIT, name=f"main_{idx}")  # fmt: skip
    else:
        out = ConvTranspose(num_channels, (4, 4), strides=(2, 2), padding=_TORCH_UP_PAD,
                            use_bias=False, transpose_kernel=True, kernel_init=_INIT,
                            name=f"main_{idx}")  # fmt: skip
    return jnp.tanh(out(h))


def _torch_discriminator(x, train, *, image_size, ndf, head_1x1):
    """The pytorch/examples discriminator's logit (or its 2x2-head variant)."""
    n = _check_layout("torch_1x1" if head_1x1 else "torch", image_size)
    h, idx = x, 0
    for i in range(n + 1 if head_1x1 else n):
        h = conv.Conv(ndf * 2**i, (4, 4), strides=(2, 2), padding=_TORCH_DOWN_PAD,
                      use_bias=False, kernel_init=_INIT, name=f"main_{idx}")(h)  # fmt: skip
        if i > 0:  # no batch norm on the input layer
            h = _batch_norm(train, f"main_{idx + 1}")(h)
        h = nn.leaky_relu(h, LEAKY_SLOPE)
        idx += 2 if i == 0 else 3
    # The last conv covers the remaining 4x4 (2x2) map: a Dense layer on the flattened features.
    logits = nn.Dense(1, use_bias=False, kernel_init=_INIT, name=f"main_{idx}")(
        h.reshape(x.shape[0], -1)
    )
    return logits[:, 0]


class Generator(nn.Module):
    """z -> dense to `base x base x ngf * 2**(n-1)` -> n transposed convs (4x4, stride 2) -> tanh.

    Attributes:
      image_size: Output height = width (e.g. 28 or 32).
      num_channels: Output channels (1 or 3).
      ngf: Width of the last hidden layer; it doubles at every lower resolution.
      layout: "flax" (the above), "torch" or "torch_1x1" (module docstring).
    """

    image_size: int = 32
    num_channels: int = 3
    ngf: int = 64
    layout: str = "flax"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
        """Images `[B, image_size, image_size, num_channels]` in [-1, 1] from `z` `[B, z_dim]`."""
        assert z.ndim == 2, f"expected latents [B, z_dim], got {z.shape}"
        _check_layout(self.layout, self.image_size)
        if self.layout != "flax":
            h = _torch_generator(z, train, image_size=self.image_size,
                                 num_channels=self.num_channels, ngf=self.ngf,
                                 head_1x1=self.layout == "torch_1x1")  # fmt: skip
            assert h.shape == (z.shape[0], self.image_size, self.image_size, self.num_channels)
            return h
        base, n = num_upsamplings(self.image_size)
        # Project and reshape (paper Fig. 1), then BN + ReLU.
        width = self.ngf * 2 ** (n - 1)
        h = nn.Dense(base * base * width, kernel_init=_INIT)(z)
        h = h.reshape(z.shape[0], base, base, width)
        h = nn.relu(_batch_norm(train)(h))
        for i in range(n):
            last = i == n - 1
            out = self.num_channels if last else self.ngf * 2 ** (n - 2 - i)
            h = ConvTranspose(out, (4, 4), strides=(2, 2), padding="SAME", kernel_init=_INIT)(h)
            # No batch norm on the generator output layer (paper Sec. 3).
            h = jnp.tanh(h) if last else nn.relu(_batch_norm(train)(h))
        assert h.shape == (z.shape[0], self.image_size, self.image_size, self.num_channels)
        return h


class Discriminator(nn.Module):
    """x -> n strided convs (4x4, stride 2, leaky ReLU 0.2; BN on all but the first) -> logit.

    Attributes:
      image_size: Input height = width.
      ndf: Width of the first conv; it doubles at every lower resolution.
      layout: "flax" (the above), "torch" or "torch_1x1" (module docstring).
    """

    image_size: int = 32
    ndf: int = 64
    layout: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """The logit `d(x)` `[B]` (D(x) = sigmoid(d(x)) is the probability that x is real)."""
        assert x.ndim == 4 and x.shape[1:3] == (self.image_size,) * 2, x.shape
        _check_layout(self.layout, self.image_size)
        if self.layout != "flax":
            return _torch_discriminator(x, train, image_size=self.image_size, ndf=self.ndf,
                                        head_1x1=self.layout == "torch_1x1")  # fmt: skip
        base, n = num_upsamplings(self.image_size)
        h = x
        for i in range(n):
            h = conv.Conv(self.ndf * 2**i, (4, 4), strides=(2, 2), padding="SAME",
                          kernel_init=_INIT)(h)  # fmt: skip
            # No batch norm on the discriminator input layer (paper Sec. 3).
            h = h if i == 0 else _batch_norm(train)(h)
            h = nn.leaky_relu(h, LEAKY_SLOPE)
        assert h.shape[1:3] == (base, base), h.shape
        # The final base x base "valid" conv of DCGAN is a dense layer on the flattened features.
        logits = nn.Dense(1, kernel_init=_INIT)(h.reshape(x.shape[0], -1))
        return logits[:, 0]


def get_gan(config) -> tuple[Generator, Discriminator]:
    """The one place where `config.model` / `config.data` become module attributes.

    Raises:
      ValueError: `config.model.name` is not 'dcgan', or the image size is not supported.
    """
    if config.model.name != "dcgan":
        raise ValueError(f"get_gan builds model.name='dcgan'; got {config.model.name!r}.")
    size = config.data.image_size
    # "flax" unless the config asks for a PyTorch layout (configs without the field: "flax").
    layout = config.model.get("layout", "flax")
    _check_layout(layout, size)  # validates the size early, with a clear message
    generator = Generator(
        image_size=size, num_channels=config.data.num_channels, ngf=config.model.ngf, layout=layout
    )
    return generator, Discriminator(image_size=size, ndf=config.model.ndf, layout=layout)
