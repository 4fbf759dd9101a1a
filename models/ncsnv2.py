"""NCSNv2 and NCSN (v1) score networks: RefineNet on a dilated ResNet backbone.

Port of score_sde `models/ncsnv2.py` (JAX). `NCSNv2` (registered as "ncsnv2_64", for images up to
~64 px), `NCSNv2_128`, `NCSNv2_256` and the noise-conditional `NCSN` (v1, "ncsn") create their
submodules in the original's order under the original's auto-names (`Conv_0`, `ResidualBlock_0..`,
`RefineBlock_0..`, `InstanceNorm2dPlus_0`, `Conv_1`), so score_sde checkpoints map one to one.

Calling convention: `model.apply(variables, x, labels, train=False)` with `x` [B, H, W, C] NHWC
and `labels` [B] integer noise-level indices into the descending `sigmas` (0 = sigma_max). With
`scale_by_sigma` the output is divided by `sigmas[labels]` (NCSNv2's s(x, sigma) = f(x) / sigma).

`torch_compat=True` gives the variant of score_sde_pytorch (and ermongroup/ncsnv2), which differs
from the JAX original in three places: the third RefineBlock of the 64-px net has nf outputs (JAX
2·nf), InstanceNorm++ uses the unbiased variance across channel means, and RefineNet upsampling is
bilinear with align_corners=True. `torch_to_flax_ncsnv2` maps a PyTorch state dict onto it.

References:
  Song & Ermon, "Improved Techniques for Training Score-Based Generative Models", NeurIPS 2020
  (arXiv:2006.09011); Song & Ermon 2019 (arXiv:1907.05600) for NCSN v1.
"""

from typing import Any, ClassVar

import flax.linen as nn
import numpy as np
from flax import traverse_util
from jax import Array
from jax import numpy as jnp

from models import layers, layers_ncsn, normalization

# Backbone levels as (width multiplier of nf, resample of the level's first block, dilation);
# every level is two residual blocks, the second never resamples.
_BACKBONE_64 = ((1, None, 1), (2, "down", 1), (2, "down", 2), (2, "down", 4))
_BACKBONE_128 = ((1, None, 1), (2, "down", 1), (2, "down", 1), (4, "down", 2), (4, "down", 4))
_BACKBONE_256 = (
    (1, None, 1),
    (2, "down", 1),
    (2, "down", 1),
    (2, "down", 1),
    (4, "down", 2),
    (4, "down", 4),
)


class _RefineNet(nn.Module):
    """Shared body of the NCSN models (not registered; use a subclass).

    Attributes:
      nf: base channel count.
      num_channels: image channels (input and output).
      image_size: image height and width.
      centered: inputs already in [-1, 1]; otherwise x is mapped to 2x - 1 first.
      normalization: "InstanceNorm++" (all paper configs), "InstanceNorm", "VarianceNorm" or
        "GroupNorm" (the conditional NCSN supports InstanceNorm++ only).
      nonlinearity: activation name (elu in all paper configs).
      interpolation: RefineNet upsampling, "bilinear" or "nearest_neighbor".
      scale_by_sigma: divide the output by sigmas[labels].
      sigmas: descending noise levels; needed with scale_by_sigma.
      torch_compat: the score_sde_pytorch variant (see the module docstring).
    """

    nf: int = 128
    num_channels: int = 3
    image_size: int = 32
    centered: bool = False
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    interpolation: str = "bilinear"
    scale_by_sigma: bool = True
    sigmas: tuple[float, ...] = ()
    torch_compat: bool = False

    BACKBONE: ClassVar[tuple] = _BACKBONE_64
    # Width multipliers of the RefineBlocks, coarsest first (JAX original / torch variant).
    REFINE: ClassVar[tuple[int, ...]] = (2, 2, 2, 1)
    REFINE_TORCH: ClassVar[tuple[int, ...]] = (2, 2, 1, 1)
    CONDITIONAL: ClassVar[bool] = False

    def _normalizer(self):
        ddof = 1 if self.torch_compat else 0
        return normalization.get_normalization(self.normalization, ddof=ddof)

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        """Score estimate for images `x` [B, H, W, C] at noise-level indices `labels` [B].

        Returns:
          [B, H, W, C]; divided by sigmas[labels] when `scale_by_sigma`.
        """
        del train  # No dropout in these models.
        batch = x.shape[0]
        assert x.shape == (batch, self.image_size, self.image_size, self.num_channels), x.shape
        assert labels.shape == (batch,), labels.shape
        assert jnp.issubdtype(labels.dtype, jnp.integer), labels.dtype
        nf, act = self.nf, layers.get_act(self.nonlinearity)
        norm = self._normalizer()
        # NCSN v1 threads the labels through every normalisation.
        cond = (labels,) if self.CONDITIONAL else ()
        if self.CONDITIONAL:
            res_block = layers_ncsn.ConditionalResidualBlock
            refine_block = lambda *a, **kw: layers_ncsn.CondRefineBlock(*a, normalizer=norm, **kw)
        else:
            res_block, refine_block = layers_ncsn.ResidualBlock, layers_ncsn.RefineBlock

        h = x if self.centered else 2 * x - 1.0
        h = layers_ncsn.ncsn_conv3x3(h, nf, stride=1, bias=True)

        # ResNet backbone; keep each level's output for the RefineNet skips.
        skips = []
        for mult, resample, dilation in self.BACKBONE:
            for block_resample in (resample, None):
                h = res_block(
                    mult * nf,
                    resample=block_resample,
                    act=act,
                    normalization=norm,
                    dilation=dilation,
                )(h, *cond)
            skips.append(h)

        # RefineNet decoder, coarsest level first; each block fuses a skip with the previous output.
        widths = self.REFINE_TORCH if self.torch_compat else self.REFINE
        assert len(widths) == len(skips)
        ref = None
        for i, (mult, skip) in enumerate(zip(widths, reversed(skips))):
            ref = refine_block(
                skip.shape[1:3],
                mult * nf,
                act=act,
                interpolation=self.interpolation,
                start=i == 0,
                end=i == len(skips) - 1,
                align_corners=self.torch_compat,
            )([skip] if ref is None else [skip, ref], *cond)

        h = act(norm()(ref, *cond))
        h = layers_ncsn.ncsn_conv3x3(h, x.shape[-1])
        assert h.shape == x.shape, (h.shape, x.shape)

        if self.scale_by_sigma:
            # s(x, sigma_i) = f(x, i) / sigma_i (NCSNv2, technique 3).
            if not self.sigmas:
                raise ValueError("scale_by_sigma needs the sigmas table.")
            used_sigmas = jnp.asarray(self.sigmas, h.dtype)[labels]
            h = h / used_sigmas[:, None, None, None]
        return h


class NCSNv2(_RefineNet):
    """NCSNv2 for images up to ~64 px ("ncsnv2_64"): 4 levels, dilations 2 and 4 at 1/2 res."""


class NCSNv2_128(_RefineNet):  # noqa: N801 (original name)
    """NCSNv2 for 96-128 px images ("ncsnv2_128"): 5 levels, widest 4·nf."""

    BACKBONE: ClassVar[tuple] = _BACKBONE_128
    REFINE: ClassVar[tuple[int, ...]] = (4, 2, 2, 1, 1)
    REFINE_TORCH: ClassVar[tuple[int, ...]] = (4, 2, 2, 1, 1)


class NCSNv2_256(_RefineNet):  # noqa: N801 (original name)
    """NCSNv2 for 129-256 px images ("ncsnv2_256"): 6 levels, widest 4·nf."""

    BACKBONE: ClassVar[tuple] = _BACKBONE_256
    REFINE: ClassVar[tuple[int, ...]] = (4, 2, 2, 2, 1, 1)
    REFINE_TORCH: ClassVar[tuple[int, ...]] = (4, 2, 2, 2, 1, 1)


class NCSN(_RefineNet):
    """NCSN v1 ("ncsn"): NCSNv2_64's layout with ConditionalInstanceNorm2dPlus everywhere.

    Conditioning is an embedding per noise level in every normalisation layer, so `num_classes`
    (number of noise levels) is required. The original could not run (see
    `layers_ncsn.ConditionalResidualBlock` and the missing config field).

    Attributes:
      num_classes: rows of every conditional normalisation embedding; labels must be below it.
    """

    scale_by_sigma: bool = False
    num_classes: int | None = None

    CONDITIONAL: ClassVar[bool] = True

    def _normalizer(self):
        if self.num_classes is None:
            raise ValueError("NCSN needs num_classes (the number of noise levels).")
        ddof = 1 if self.torch_compat else 0
        return normalization.get_normalization(
            self.normalization, conditional=True, num_classes=self.num_classes, ddof=ddof
        )


MODELS = {"ncsn": NCSN, "ncsnv2_64": NCSNv2, "ncsnv2_128": NCSNv2_128, "ncsnv2_256": NCSNv2_256}


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    """Descending SMLD noise levels exp(linspace(log sigma_max, log sigma_min, N)), float64."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


def from_config(config) -> nn.Module:
    """Builds the model named `config.model.name` (one of MODELS) from a score_sde config.

    Reads data.{num_channels, image_size, centered} and model.{nf, normalization, nonlinearity,
    interpolation, scale_by_sigma, sigma_min, sigma_max, num_scales}, plus the optional
    model.torch_compat (default False) and, for "ncsn", model.num_classes (default num_scales).

    Raises:
      ValueError: unknown model name.
    """
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"Unknown NCSN model {name!r}; valid: {sorted(MODELS)}")
    model, data = config.model, config.data
    sigmas = get_sigmas(model.sigma_min, model.sigma_max, model.num_scales)
    kwargs: dict[str, Any] = dict(
        nf=model.nf,
        num_channels=data.num_channels,
        image_size=data.image_size,
        centered=data.centered,
        normalization=model.normalization,
        nonlinearity=model.nonlinearity,
        interpolation=model.interpolation,
        scale_by_sigma=model.scale_by_sigma,
        sigmas=tuple(float(s) for s in sigmas),
        torch_compat=bool(model.get("torch_compat", False)),
    )
    if name == "ncsn":
        kwargs["num_classes"] = model.get("num_classes", model.num_scales)
    return MODELS[name](**kwargs)


# ---------------------------------------------------------------------------------------------
# PyTorch (score_sde_pytorch) state dict -> Flax params of the torch_compat NCSNv2 variants.
# ---------------------------------------------------------------------------------------------

# torch attribute names of the backbone levels / RefineBlocks, in forward (= flax creation) order.
_TORCH_LEVELS = {
    4: (("res1", "res2", "res3", "res4"), ("refine1", "refine2", "refine3", "refine4")),
    5: (
        ("res1", "res2", "res3", "res4", "res5"),
        ("refine1", "refine2", "refine3", "refine4", "refine5"),
    ),
    6: (
        ("res1", "res2", "res3", "res31", "res4", "res5"),
        ("refine1", "refine2", "refine31", "refine3", "refine4", "refine5"),
    ),
}


def _residual_block_paths(prefix: str, flax_block: str, down: bool, dilated: bool, shortcut: bool):
    """torch -> flax module paths inside one ResidualBlock (creation order decides Conv_<i>)."""
    paths = {
        f"{prefix}.normalize1": f"{flax_block}/InstanceNorm2dPlus_0",
        f"{prefix}.normalize2": f"{flax_block}/InstanceNorm2dPlus_1",
    }
    if down and not dilated:
        paths[f"{prefix}.conv1"] = f"{flax_block}/Conv_0"
        paths[f"{prefix}.conv2.conv"] = f"{flax_block}/ConvMeanPool_0/Conv_0"
        paths[f"{prefix}.shortcut.conv"] = f"{flax_block}/ConvMeanPool_1/Conv_0"
    elif down:  # dilated: conv1, conv2, then the shortcut conv
        order = ("conv1", "conv2", "shortcut")
        paths.update({f"{prefix}.{n}": f"{flax_block}/Conv_{i}" for i, n in enumerate(order)})
    else:  # no resampling: the shortcut conv (if any) is created first
        order = (("shortcut",) if shortcut else ()) + ("conv1", "conv2")
        paths.update({f"{prefix}.{n}": f"{flax_block}/Conv_{i}" for i, n in enumerate(order)})
    return paths


def _refine_block_paths(prefix: str, flax_block: str, n_inputs: int, n_out_blocks: int):
    """torch -> flax module paths inside one RefineBlock."""

    def rcu(torch_rcu: str, flax_rcu: str, n_blocks: int):
        # RCU conv "{i}_{j}_conv" (1-based block i, stage j of 2) is the flax Conv_{2(i-1)+(j-1)}.
        return {
            f"{torch_rcu}.{i + 1}_{j + 1}_conv": f"{flax_rcu}/Conv_{2 * i + j}"
            for i in range(n_blocks)
            for j in range(2)
        }

    paths = {}
    for k in range(n_inputs):
        paths.update(rcu(f"{prefix}.adapt_convs.{k}", f"{flax_block}/RCUBlock_{k}", 2))
    paths.update(rcu(f"{prefix}.output_convs", f"{flax_block}/RCUBlock_{n_inputs}", n_out_blocks))
    if n_inputs > 1:
        for k in range(n_inputs):
            paths[f"{prefix}.msf.convs.{k}"] = f"{flax_block}/MSFBlock_0/Conv_{k}"
    for k in range(2):
        paths[f"{prefix}.crp.convs.{k}"] = f"{flax_block}/CRPBlock_0/Conv_{k}"
    return paths


def _torch_module_paths(n_levels: int, backbone: tuple) -> dict[str, str]:
    """All torch module prefixes of an NCSNv2 mapped to flax module paths ('/'-joined)."""
    res_names, refine_names = _TORCH_LEVELS[n_levels]
    paths = {
        "begin_conv": "Conv_0",
        "end_conv": "Conv_1",
        "normalizer": "InstanceNorm2dPlus_0",
    }
    in_mult = 1
    for level, (name, (mult, resample, dilation)) in enumerate(zip(res_names, backbone)):
        for j, block_resample in enumerate((resample, None)):
            block_in = in_mult if j == 0 else mult
            paths.update(
                _residual_block_paths(
                    f"{name}.{j}",
                    f"ResidualBlock_{2 * level + j}",
                    down=block_resample == "down",
                    dilated=dilation > 1,
                    shortcut=block_in != mult,
                )
            )
        in_mult = mult
    for i, name in enumerate(refine_names):
        start, end = i == 0, i == n_levels - 1
        paths.update(
            _refine_block_paths(name, f"RefineBlock_{i}", 1 if start else 2, 3 if end else 1)
        )
    return paths


def _convert_entry(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """torch parameter name and layout -> flax parameter name and layout."""
    if leaf == "weight" and value.ndim == 4:  # conv (out, in, kh, kw) -> HWIO
        return "kernel", value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 2:  # linear (out, in) -> (in, out)
        return "kernel", value.T
    if leaf == "bias" and value.ndim == 1:
        return "bias", value
    if leaf in ("alpha", "gamma", "beta"):  # InstanceNorm++ (C,) -> (1, 1, 1, C)
        return leaf, value.reshape(1, 1, 1, -1)
    raise ValueError(f"Unexpected torch entry {leaf!r} with shape {value.shape}")


def torch_to_flax_ncsnv2(state_dict: dict[str, np.ndarray], variables_template) -> dict:
    """Maps a score_sde_pytorch NCSNv2 state dict onto a `torch_compat=True` NCSNv2 param tree.

    The mapping follows the module structure (torch attribute names and the flax creation order),
    not values: the number of backbone levels (4, 5 or 6 -> ncsnv2_64/128/256) is read from the
    template, every template leaf must be filled exactly once with a matching shape, and every
    torch entry except the `sigmas` buffer must be used.

    Args:
      state_dict: torch names -> arrays in torch layouts (conv (out, in, kh, kw)).
      variables_template: `{"params": ...}` or params of the target model (arrays or
        ShapeDtypeStructs, e.g. from `jax.eval_shape(model.init, ...)`).

    Returns:
      The params tree (nested dicts of float32 numpy arrays), for `{"params": ...}`.

    Raises:
      ValueError: unmatched, duplicate or missing entries, or shape mismatches.
    """
    template = variables_template.get("params", variables_template)
    flat_template = traverse_util.flatten_dict(template, sep="/")
    n_levels = len({k.split("/")[0] for k in flat_template if k.startswith("ResidualBlock_")}) // 2
    if n_levels not in _TORCH_LEVELS:
        raise ValueError(f"Template has {2 * n_levels} ResidualBlocks; not an NCSNv2.")
    backbone = {4: _BACKBONE_64, 5: _BACKBONE_128, 6: _BACKBONE_256}[n_levels]
    module_paths = _torch_module_paths(n_levels, backbone)

    flat: dict[str, np.ndarray] = {}
    for torch_name, value in state_dict.items():
        if torch_name == "sigmas":  # buffer; the flax model holds sigmas as an attribute
            continue
        prefix, leaf = torch_name.rsplit(".", 1)
        if prefix not in module_paths:
            raise ValueError(f"No flax module for torch entry {torch_name!r}")
        name, array = _convert_entry(leaf, np.asarray(value, np.float32))
        path = f"{module_paths[prefix]}/{name}"
        if path not in flat_template:
            raise ValueError(f"{torch_name!r} -> {path!r} is not in the template")
        if path in flat:
            raise ValueError(f"Two torch entries map to {path!r}")
        if tuple(flat_template[path].shape) != array.shape:
            raise ValueError(
                f"{torch_name!r} -> {path!r}: shape {array.shape}, "
                f"template {tuple(flat_template[path].shape)}"
            )
        flat[path] = array
    missing = sorted(set(flat_template) - set(flat))
    if missing:
        raise ValueError(f"Template entries with no torch counterpart: {missing}")
    # Re-nest in the template's (creation) order.
    return traverse_util.unflatten_dict({tuple(k.split("/")): flat[k] for k in flat_template})
