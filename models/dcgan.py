"""DCGAN generator and discriminator (Radford et al. 2015) as flax.linen modules.

Used by DDLS (`samplers/ddls.py`, Che et al. 2020): the GAN is trained by
`experiments.gan.train` and the discriminator logit of generated images, `d(G(z))`, defines an energy in latent space.

Shapes: latents `z` are `[B, z_dim]` (z ~ N(0, I)); images are NHWC in [-1, 1] (the data scaler
with `data.centered=True`); logits are `[B]`. Image sizes are `base * 2**n` with `base` the first
odd size or 4 reached by halving: 32 px -> 4x4 base and 3 up-samplings, 28 px -> 7x7 and 2.

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
    """`nn.ConvTranspose` ('SAME' / 'VALID', untransposed kernel) with the loop-safe gradients of
    models/conv.py: the same name, params (`kernel` HWIO, `bias`) and numbers."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        pads = [conv.conv_transpose_padding(k, s, self.padding)
                for k, s in zip(self.kernel_size, self.strides)]  # fmt: skip
        y = conv.conv_general_dilated(x, kernel, (1, 1), pads, self.strides, None, conv.NHWC)
        return y + bias


def _batch_norm(train: bool) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d defaults (momentum 0.1 of the new value, eps 1e-5), as DCGAN code.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class Generator(nn.Module):
    """z -> dense to `base x base x ngf * 2**(n-1)` -> n transposed convs (4x4, stride 2) -> tanh.

    Attributes:
      image_size: Output height = width (e.g. 28 or 32).
      num_channels: Output channels (1 or 3).
      ngf: Width of the last hidden layer; it doubles at every lower resolution.
    """

    image_size: int = 32
    num_channels: int = 3
    ngf: int = 64

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
        """Images `[B, image_size, image_size, num_channels]` in [-1, 1] from `z` `[B, z_dim]`."""
        assert z.ndim == 2, f"expected latents [B, z_dim], got {z.shape}"
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
    """

    image_size: int = 32
    ndf: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """The logit `d(x)` `[B]` (D(x) = sigmoid(d(x)) is the probability that x is real)."""
        assert x.ndim == 4 and x.shape[1:3] == (self.image_size,) * 2, x.shape
        base, n = num_upsamplings(self.image_size)
        h = x
        for i in range(n):
            h = nn.Conv(self.ndf * 2**i, (4, 4), strides=(2, 2), padding="SAME", kernel_init=_INIT,
                        conv_general_dilated=conv.conv_general_dilated)(h)  # fmt: skip
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
    num_upsamplings(size)  # validates the size early, with a clear message
    generator = Generator(
        image_size=size, num_channels=config.data.num_channels, ngf=config.model.ngf
    )
    return generator, Discriminator(image_size=size, ndf=config.model.ndf)
