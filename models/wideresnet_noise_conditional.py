"""Noise-conditional Wide-ResNet classifier for class-conditional sampling (paper App. I.1).

The classifier `p_t(y | x(t))` of Song et al. 2021 (Sec. 5, Eq. 14) is a WRN-28-10 (Zagoruyko &
Komodakis 2016) that takes the perturbed image and its noise level `sigma`. Like the original
`models/wideresnet_noise_conditional.py` of score_sde:
  * BatchNorm is replaced by GroupNorm (`min(C // 4, 32)` groups, epsilon 1e-5), so the model has
    no mutable state and is the same in training and evaluation;
  * the noise level enters as Gaussian Fourier features of `log sigma` (128 frequencies, scale
    16) -> Dense 512 -> swish -> Dense 512, added after the first conv of every block through a
    per-block `Dense(channels)(swish(temb))`;
  * the input is standardised per image, `(x - mean) / max(std, 1 / sqrt(HWC))`;
  * skips are identity, or average pooling + zero channel padding when the width changes;
    conv kernels are Kaiming normal (fan_out, gain 2), the final dense is U[-1, 1) / sqrt(classes).
Submodules are created in the original's order with its explicit names (`init_conv`, `init_bn`,
`conv1`, `bn_2`, `conv2`, `pre-pool-bn`), so the parameter tree has the original's layout.

Departures: depth and width are attributes (the original hard-codes `blocks_per_group=4`,
`channel_multiplier=10`, i.e. WRN-28-10, in `create_classifier`); the shake-shake / shake-drop
helpers of the original file are dead code there and are not ported; the original's logit
function first normalises by the CIFAR-10 channel mean / std, which the per-image standardisation
nearly undoes, so we leave it out (our classifiers are trained here, not loaded).

References:
  Zagoruyko, Komodakis. Wide Residual Networks. BMVC 2016 (arXiv:1605.07146).
  Song et al. Score-Based Generative Modeling through SDEs. ICLR 2021, App. I.1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from models import conv, normalization

# Kaiming normal with fan_out, gain 2 (the autoaugment WRN init the original keeps).
conv_kernel_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def dense_kernel_init(key: Array, shape, dtype=jnp.float32) -> Array:
    """U[-1, 1) / sqrt(fan_out) for the final logits layer (as the original)."""
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / np.sqrt(shape[1])


def _norm(x: Array, name: str, relu: bool = True) -> Array:
    """GroupNorm (the original's BatchNorm replacement), then ReLU."""
    x = normalization.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
    return jax.nn.relu(x) if relu else x


def _output_add(block_x: Array, orig_x: Array) -> Array:
    """Residual sum; the skip is average pooled and zero padded when the width changes."""
    if block_x.shape[-1] != orig_x.shape[-1]:
        stride = orig_x.shape[-2] // block_x.shape[-2]
        orig_x = nn.avg_pool(orig_x, (stride, stride), (stride, stride))
        pad = block_x.shape[-1] - orig_x.shape[-1]
        orig_x = jnp.pad(orig_x, [(0, 0), (0, 0), (0, 0), (0, pad)])
    assert orig_x.shape == block_x.shape, (orig_x.shape, block_x.shape)
    return block_x + orig_x


class GaussianFourierProjection(nn.Module):
    """Fixed random Fourier features `[sin(2 pi W x), cos(2 pi W x)]`, W ~ N(0, scale^2)."""

    embedding_size: int = 128
    scale: float = 16.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        # Not trained (the original stops the gradient too).
        w = jax.lax.stop_gradient(w)
        x_proj = x[:, None] * w[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class WideResnetBlock(nn.Module):
    """Pre-activation residual block: norm-relu-conv, + Dense(temb), norm-relu-conv."""

    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array | None) -> Array:
        if self.activate_before_residual:
            # The first block of the network also normalises the skip branch.
            x = _norm(x, "init_bn")
            orig_x = block_x = x
        else:
            orig_x = x
            block_x = _norm(x, "init_bn")
        same = dict(padding="SAME", use_bias=False, kernel_init=conv_kernel_init)
        block_x = conv.Conv(self.channels, (3, 3), self.strides, name="conv1", **same)(block_x)
        if temb is not None:
            # Noise conditioning: a per-block projection of the embedding, broadcast over HW.
            block_x = block_x + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
        block_x = _norm(block_x, "bn_2")
        block_x = conv.Conv(self.channels, (3, 3), name="conv2", **same)(block_x)
        return _output_add(block_x, orig_x)


class WideResnetGroup(nn.Module):
    """`blocks_per_group` blocks; the first one carries the stride."""

    blocks_per_group: int
    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array | None) -> Array:
        for i in range(self.blocks_per_group):
            x = WideResnetBlock(
                self.channels,
                self.strides if i == 0 else (1, 1),
                activate_before_residual=self.activate_before_residual and i == 0,
            )(x, temb)
        return x


class WideResnet(nn.Module):
    """WRN-`depth`-`widen_factor` conditioned on the noise level; returns logits `[B, classes]`.

    Attributes:
      depth: total depth `6 n + 4` (n blocks per group); 28 for the released CIFAR-10 model.
      widen_factor: channel multiplier k (groups have 16k, 32k, 64k channels); 10 released.
      num_classes: number of logits.
      embedding_size: Fourier frequencies of `log sigma` (the embedding has twice as many).
      fourier_scale: std of the Fourier frequencies.
      temb_dim: width of the noise embedding MLP.
    """

    depth: int = 28
    widen_factor: int = 10
    num_classes: int = 10
    embedding_size: int = 128
    fourier_scale: float = 16.0
    temb_dim: int = 512

    @property
    def blocks_per_group(self) -> int:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"WideResnet depth must be 6 n + 4 with n >= 1, got {self.depth}")
        return (self.depth - 4) // 6

    @nn.compact
    def __call__(self, x: Array, sigmas: Array, train: bool = False) -> Array:
        """Logits of `x` [B, H, W, C] at noise levels `sigmas` [B] (> 0). `train` is unused
        (no dropout or batch statistics) and kept for the original's call signature."""
        del train
        if x.ndim != 4 or sigmas.shape != x.shape[:1]:
            raise ValueError(
                f"expected x [B, H, W, C] and sigmas [B]; got {x.shape}, {sigmas.shape}"
            )
        n = self.blocks_per_group
        # Per-image standardisation (tf.image.per_image_standardization).
        d = int(np.prod(x.shape[1:]))
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(d))
        # Noise-level embedding of log sigma.
        temb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(jnp.log(sigmas))
        temb = nn.Dense(self.temb_dim)(temb)
        temb = nn.Dense(self.temb_dim)(nn.swish(temb))

        k = self.widen_factor
        x = conv.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_kernel_init,
                      name="init_conv")(x)  # fmt: skip
        x = WideResnetGroup(n, 16 * k, activate_before_residual=True)(x, temb)
        x = WideResnetGroup(n, 32 * k, (2, 2))(x, temb)
        x = WideResnetGroup(n, 64 * k, (2, 2))(x, temb)
        x = _norm(x, "pre-pool-bn")
        # Global average pooling, then the logits.
        x = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, kernel_init=dense_kernel_init)(x)
        assert logits.shape == (x.shape[0], self.num_classes)
        return logits
