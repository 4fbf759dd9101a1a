"""DDPM U-Net (port of score_sde `models/ddpm.py`, registered there as "ddpm").

The Ho et al. 2020 architecture as score_sde has it, including its one deviation from Ho's
U-Net: on the up path attention is applied once per level after the res blocks, not after
every block (35.22M parameters at CIFAR-10 size instead of 35.75M).

Every GroupNorm has 32 groups, epsilon 1e-6: the JAX original builds `nn.GroupNorm()` (flax's
default is 32) and score_sde_pytorch `nn.GroupNorm(num_groups=32, eps=1e-6)`, so the two agree
and no torch-compatibility switch is needed (nf must be a multiple of 32).

The module never reads a config: `models.utils.get_model(config)` fills the attributes.
Submodules are created in the original's order (`Dense_0/1`, `Conv_0`, `ResnetBlockDDPM_k`,
`AttnBlock_k`, `Downsample_k`, `Upsample_k`, `GroupNorm_0`, `Conv_1`).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
from jax import Array
from jax import numpy as jnp

from models import layers, normalization


class DDPM(nn.Module):
    """DDPM score / noise-prediction network. Defaults: `vp/ddpm/cifar10`.

    Attributes:
      nf: base channel count (a multiple of 32).
      ch_mult: channel multiplier of nf per resolution level.
      num_res_blocks: res blocks per level on the down path (one more on the up path).
      attn_resolutions: spatial sizes at which attention is applied.
      dropout: dropout rate in the res blocks.
      resamp_with_conv: resampling layers have a conv.
      conditional: condition on the labels via a sinusoidal time embedding.
      nonlinearity: 'swish', 'elu', 'relu' or 'lrelu'.
      centered: inputs are in [-1, 1]; otherwise [0, 1] inputs are mapped by 2x - 1.
      scale_by_sigma: divide the output by `sigmas[labels]` (VE-trained DDPM).
      sigmas: descending noise levels (label 0 = sigma_max), needed with `scale_by_sigma`.
      num_groups: GroupNorm groups (32 in both originals).
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    nonlinearity: str = "swish"
    centered: bool = True
    scale_by_sigma: bool = False
    sigmas: Sequence[float] | None = None
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        """Output [B, H, W, C] for `x` [B, H, W, C] NHWC and time-step labels [B]."""
        assert x.ndim == 4 and labels.shape == (x.shape[0],), (x.shape, labels.shape)
        act = layers.get_act(self.nonlinearity)
        nf, ch_mult, num_res_blocks = self.nf, tuple(self.ch_mult), self.num_res_blocks
        num_resolutions = len(ch_mult)
        AttnBlock = functools.partial(layers.AttnBlock, num_groups=self.num_groups)
        ResnetBlock = functools.partial(
            layers.ResnetBlockDDPM, act=act, dropout=self.dropout, num_groups=self.num_groups
        )

        if self.conditional:
            # Sinusoidal time embedding -> 2-layer MLP.
            temb = layers.get_timestep_embedding(labels, nf)
            temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
            temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))
        else:
            temb = None

        # Inputs in [0, 1] are mapped to [-1, 1].
        h = x if self.centered else 2 * x - 1.0

        # Downsampling path; `hs` keeps every skip for the up path.
        hs = [layers.ddpm_conv3x3(h, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

        # Middle.
        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        # Upsampling path: attention once per level, after its blocks (score_sde, not Ho et al.).
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
            if h.shape[1] in self.attn_resolutions:
                h = AttnBlock()(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=self.resamp_with_conv)(h)

        assert not hs
        h = act(normalization.GroupNorm(num_groups=self.num_groups)(h))
        h = layers.ddpm_conv3x3(h, x.shape[-1], init_scale=0.0)

        if self.scale_by_sigma:
            # Divide by sigma for the NCSN (SMLD) loss; the DDPM loss needs no scaling.
            assert self.sigmas is not None, "scale_by_sigma needs the sigmas table"
            # The original indexes with `labels` directly (always ints there); we cast.
            used_sigmas = jnp.asarray(self.sigmas, dtype=jnp.float32)[labels.astype(jnp.int32)]
            h = h / used_sigmas.reshape((x.shape[0], 1, 1, 1))
        assert h.shape == x.shape, (h.shape, x.shape)
        return h
