"""NCSN++ and DDPM++ (port of score_sde `models/ncsnpp.py`, registered there as "ncsnpp").

One U-Net class covers both architectures of Song et al. 2021 (App. H):
  * NCSN++: FIR resampling, BigGAN res blocks, `progressive_input='residual'`, Fourier
    embedding of sigma(t) (continuous VE) or positional embedding of the noise-level index;
  * DDPM++: the same with `fir=False` and no progressive branches, positional embedding of
    999 t (VP / sub-VP).

The module never reads a config: `models.utils.get_model(config)` fills the attributes. It
creates its submodules in the original's order, so the auto-names (`Conv_0`, `Dense_0`,
`GaussianFourierProjection_0`, `ResnetBlockBigGANpp_0..43`, `AttnBlockpp_0..5`,
`Downsample_0..2`, `GroupNorm_0`, `Conv_1` for the CIFAR-10 NCSN++) match score_sde checkpoints.

Calling convention: `model.apply(variables, x, labels, train=False)` with `x` [B, H, W, C] NHWC
and `labels` [B]: sigma(t) for the Fourier embedding, time steps / noise-level indices for the
positional one. Dropout uses the 'dropout' rng stream when `train=True`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
from jax import Array
from jax import numpy as jnp

from models import layers, layerspp

SQRT2 = layerspp.SQRT2


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network. Defaults: NCSN++ of `ve/cifar10_ncsnpp_continuous`.

    Attributes:
      nf: base channel count.
      ch_mult: channel multiplier of nf per resolution level.
      num_res_blocks: res blocks per level on the down path (one more on the up path).
      attn_resolutions: spatial sizes at which attention is applied.
      dropout: dropout rate in the res blocks.
      resamp_with_conv: resampling layers have a conv (`resblock_type='ddpm'` only).
      conditional: condition on the noise level / time (otherwise no time embedding).
      fir: FIR resampling (StyleGAN2) instead of nearest / mean.
      fir_kernel: 1-D FIR taps.
      skip_rescale: divide residual sums by sqrt(2).
      resblock_type: 'biggan' (resampling res blocks) or 'ddpm'.
      progressive: output pyramid, 'none', 'output_skip' or 'residual'.
      progressive_input: input pyramid, 'none', 'input_skip' or 'residual'.
      progressive_combine: how `input_skip` merges, 'sum' or 'cat'.
      embedding_type: 'fourier' (labels are sigma(t)) or 'positional' (labels are indices).
      fourier_scale: std of the Fourier frequencies.
      init_scale: init scale of the zero-initialised layers (0: near-zero).
      nonlinearity: 'swish', 'elu', 'relu' or 'lrelu'.
      centered: inputs are in [-1, 1]; otherwise [0, 1] inputs are mapped by 2x - 1.
      scale_by_sigma: divide the output by sigma (VE): the labels for 'fourier', `sigmas[labels]`
        for 'positional'.
      sigmas: descending noise levels (label 0 = sigma_max); needed for positional
        `scale_by_sigma`.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    centered: bool = False
    scale_by_sigma: bool = True
    sigmas: Sequence[float] | None = None

    def _check(self):
        assert self.progressive in ("none", "output_skip", "residual"), self.progressive
        assert self.progressive_input in ("none", "input_skip", "residual"), self.progressive_input
        assert self.embedding_type in ("fourier", "positional"), self.embedding_type
        assert self.resblock_type in ("ddpm", "biggan"), self.resblock_type
        if self.scale_by_sigma and self.embedding_type == "positional":
            assert self.sigmas is not None, "positional scale_by_sigma needs the sigmas table"

    @nn.nowrap
    def _embed(self, time_cond: Array, act) -> tuple[Array | None, Array | None]:
        """Time embedding `temb` [B, 4 nf] (or None) and the per-example sigmas [B] (or None)."""
        nf = self.nf
        if self.embedding_type == "fourier":
            # Gaussian Fourier features of log sigma(t) (continuous training only).
            used_sigmas = time_cond
            temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale)(
                jnp.log(used_sigmas)
            )
        else:
            # Sinusoidal embedding of the time step / noise-level index.
            used_sigmas = None
            if self.sigmas is not None:
                table = jnp.asarray(self.sigmas, dtype=jnp.float32)
                used_sigmas = table[time_cond.astype(jnp.int32)]
            temb = layers.get_timestep_embedding(time_cond, nf)
        if not self.conditional:
            return None, used_sigmas
        temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
        temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))
        return temb, used_sigmas

    @nn.compact
    def __call__(self, x: Array, time_cond: Array, train: bool = True) -> Array:
        """Score (VE, with `scale_by_sigma`) or noise prediction for `x` [B, H, W, C]."""
        self._check()
        assert x.ndim == 4 and time_cond.shape == (x.shape[0],), (x.shape, time_cond.shape)
        act = layers.get_act(self.nonlinearity)
        nf, ch_mult, num_res_blocks = self.nf, tuple(self.ch_mult), self.num_res_blocks
        num_resolutions = len(ch_mult)
        fir, fir_kernel = self.fir, tuple(self.fir_kernel)
        progressive, progressive_input = self.progressive, self.progressive_input

        temb, used_sigmas = self._embed(time_cond, act)

        AttnBlock = functools.partial(
            layerspp.AttnBlockpp, init_scale=self.init_scale, skip_rescale=self.skip_rescale
        )
        Upsample = functools.partial(
            layerspp.Upsample, with_conv=self.resamp_with_conv, fir=fir, fir_kernel=fir_kernel
        )
        Downsample = functools.partial(
            layerspp.Downsample, with_conv=self.resamp_with_conv, fir=fir, fir_kernel=fir_kernel
        )
        # Pyramid resamplers: plain FIR for the *_skip variants, fused FIR conv for 'residual'.
        pyramid_upsample = functools.partial(
            layerspp.Upsample, fir=fir, fir_kernel=fir_kernel, with_conv=progressive == "residual"
        )
        pyramid_downsample = functools.partial(
            layerspp.Downsample,
            fir=fir,
            fir_kernel=fir_kernel,
            with_conv=progressive_input == "residual",
        )
        combiner = functools.partial(layerspp.Combine, method=self.progressive_combine)
        if self.resblock_type == "ddpm":
            ResnetBlock = functools.partial(
                layerspp.ResnetBlockDDPMpp,
                act=act,
                dropout=self.dropout,
                init_scale=self.init_scale,
                skip_rescale=self.skip_rescale,
            )
        else:
            ResnetBlock = functools.partial(
                layerspp.ResnetBlockBigGANpp,
                act=act,
                dropout=self.dropout,
                fir=fir,
                fir_kernel=fir_kernel,
                init_scale=self.init_scale,
                skip_rescale=self.skip_rescale,
            )

        if not self.centered:
            # Inputs in [0, 1] -> [-1, 1].
            x = 2 * x - 1.0

        # Downsampling path; `hs` keeps every skip for the up path.
        input_pyramid = x if progressive_input != "none" else None
        hs = [layerspp.conv3x3(x, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)

            if i_level != num_resolutions - 1:
                if self.resblock_type == "ddpm":
                    h = Downsample()(hs[-1])
                else:
                    h = ResnetBlock(down=True)(hs[-1], temb, train)

                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = combiner()(input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = input_pyramid + h
                    if self.skip_rescale:
                        input_pyramid = input_pyramid / SQRT2
                    h = input_pyramid
                hs.append(h)

        # Middle.
        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        # Upsampling path: attention once per level, after its blocks.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
            if h.shape[1] in self.attn_resolutions:
                h = AttnBlock()(h)

            if progressive != "none":
                h, pyramid = self._progressive_output(
                    h, pyramid, x.shape[-1], i_level == num_resolutions - 1, act, pyramid_upsample
                )

            if i_level != 0:
                if self.resblock_type == "ddpm":
                    h = Upsample()(h)
                else:
                    h = ResnetBlock(up=True)(h, temb, train)

        assert not hs

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(layerspp.group_norm(h))
            h = layerspp.conv3x3(h, x.shape[-1], init_scale=self.init_scale)

        if self.scale_by_sigma:
            h = h / used_sigmas.reshape((x.shape[0], 1, 1, 1))
        assert h.shape == x.shape, (h.shape, x.shape)
        return h

    @nn.nowrap
    def _progressive_output(self, h, pyramid, channels, first, act, pyramid_upsample):
        """One level of the output pyramid; returns the new `(h, pyramid)`."""
        if self.progressive == "output_skip":
            # Per-level RGB head, summed into the upsampled pyramid.
            head = layerspp.conv3x3(
                act(layerspp.group_norm(h)), channels, bias=True, init_scale=self.init_scale
            )
            pyramid = head if first else pyramid_upsample()(pyramid) + head
        elif first:  # 'residual'
            pyramid = layerspp.conv3x3(act(layerspp.group_norm(h)), h.shape[-1], bias=True)
        else:
            pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid) + h
            if self.skip_rescale:
                pyramid = pyramid / SQRT2
            h = pyramid
        return h, pyramid
