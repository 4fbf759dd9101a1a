"""Model factory and the network -> score bridge (port of score_sde `models/utils.py`).

* `get_model(config)`: the one place where a ConfigDict becomes explicit module attributes.
* `get_model_fn` / `get_score_fn`: turn a Flax model plus params into `model_fn(x, labels)` and
  `score_fn(x, t)` with the paper's per-SDE label and output scaling.
* `get_sigmas`, `get_ddpm_params`: the discrete noise tables the original models and losses use.

Model modules are imported lazily inside the builders, so `import models` costs only flax/jax
(and `sde_lib`, the bottom layer, which imports jax and numpy only).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax import Array
from jax import numpy as jnp

import sde_lib
from models import ddpm, ncsnpp, ncsnv2

# Labels of a continuous VP / sub-VP model are 999 t: the time embedding expects the range of
# the DDPM time-step index (0 .. 999).
_VP_LABEL_SCALE = 999


def get_sigmas(config) -> Array:
    """Descending SMLD noise levels `exp(linspace(log sigma_max, log sigma_min, N))`, float32.

    Label 0 is sigma_max. Computed in float32 with jnp, as the JAX original does.
    """
    model = config.model
    return jnp.exp(
        jnp.linspace(jnp.log(model.sigma_max), jnp.log(model.sigma_min), model.num_scales)
    )


def get_ddpm_params(config) -> dict[str, Any]:
    """DDPM betas / alphas tables (legacy helper of the original, float64).

    Like the original, the table always has 1000 steps and betas run from
    `beta_min / num_scales` to `beta_max / num_scales`; it is only right for num_scales=1000.
    """
    num_diffusion_timesteps = 1000
    beta_start = config.model.beta_min / config.model.num_scales
    beta_end = config.model.beta_max / config.model.num_scales
    betas = np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": alphas_cumprod,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_1m_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "beta_min": beta_start * (num_diffusion_timesteps - 1),
        "beta_max": beta_end * (num_diffusion_timesteps - 1),
        "num_diffusion_timesteps": num_diffusion_timesteps,
    }


def _sigma_tuple(config) -> tuple[float, ...]:
    return tuple(float(s) for s in np.asarray(get_sigmas(config)))


def _unet_kwargs(config) -> dict[str, Any]:
    """Attributes NCSN++/DDPM++ and DDPM share, read from `config.model` / `config.data`."""
    model = config.model
    return dict(
        nf=model.nf,
        ch_mult=tuple(model.ch_mult),
        num_res_blocks=model.num_res_blocks,
        attn_resolutions=tuple(model.attn_resolutions),
        dropout=model.dropout,
        resamp_with_conv=model.resamp_with_conv,
        conditional=model.conditional,
        nonlinearity=model.nonlinearity,
        centered=config.data.centered,
        scale_by_sigma=model.scale_by_sigma,
    )


def _ncsnpp_from_config(config) -> nn.Module:
    model = config.model
    embedding_type = model.embedding_type.lower()
    if embedding_type == "fourier" and not config.training.continuous:
        raise ValueError("Fourier features are only used for continuous training.")
    needs_sigmas = model.scale_by_sigma and embedding_type == "positional"
    # Like the original, read fourier_scale only for the Fourier embedding (the positional
    # configs do not define it).
    fourier = {"fourier_scale": model.fourier_scale} if embedding_type == "fourier" else {}
    return ncsnpp.NCSNpp(
        **_unet_kwargs(config),
        fir=model.fir,
        fir_kernel=tuple(model.fir_kernel),
        skip_rescale=model.skip_rescale,
        resblock_type=model.resblock_type.lower(),
        progressive=model.progressive.lower(),
        progressive_input=model.progressive_input.lower(),
        progressive_combine=model.progressive_combine.lower(),
        embedding_type=embedding_type,
        **fourier,
        init_scale=model.init_scale,
        sigmas=_sigma_tuple(config) if needs_sigmas else None,
    )


def _ddpm_from_config(config) -> nn.Module:
    model = config.model
    if model.get("normalization", "GroupNorm") != "GroupNorm":
        raise ValueError(
            f"DDPM supports normalization='GroupNorm' only, got {model.normalization!r}"
        )
    return ddpm.DDPM(
        **_unet_kwargs(config),
        sigmas=_sigma_tuple(config) if model.scale_by_sigma else None,
    )


def _ncsnv2_from_config(config) -> nn.Module:
    return ncsnv2.from_config(config)


# `config.model.name` -> builder taking the whole config.
MODELS: dict[str, Callable[[Any], nn.Module]] = {
    "ncsnpp": _ncsnpp_from_config,
    "ddpm": _ddpm_from_config,
    "ncsn": _ncsnv2_from_config,
    "ncsnv2_64": _ncsnv2_from_config,
    "ncsnv2_128": _ncsnv2_from_config,
    "ncsnv2_256": _ncsnv2_from_config,
}


def get_model(config) -> nn.Module:
    """Builds the score network named `config.model.name` with explicit attributes.

    Call it as `model.init({"params": k1, "dropout": k2}, x, labels, train=False)` and
    `model.apply(variables, x, labels, train=..., rngs={"dropout": k})`, `x` NHWC, `labels` [B].

    Raises:
      ValueError: unknown model name (the message lists the valid ones).
    """
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid: {sorted(MODELS)}")
    return MODELS[name](config)


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str | None):
    """The dtype of a `*.compute_dtype` config field (None = float32, the models' own).

    Raises:
      ValueError: a name other than those of `COMPUTE_DTYPES`.
    """
    if name in (None, "", "float32"):
        return None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={name!r} is not one of {sorted(COMPUTE_DTYPES)}.")
    return COMPUTE_DTYPES[name]


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def _cast_module_outputs(dtype):
    """A flax method interceptor: every submodule's float output is cast to `dtype`, so that
    activations stay in `dtype` where they meet float32 values (the time embedding, computed
    from float32 labels)."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        return _cast_floats(out, dtype) if context.method_name == "__call__" else out

    return interceptor


def get_model_fn(
    model: nn.Module,
    params: Any,
    states: dict[str, Any] | None = None,
    train: bool = False,
    dtype=None,
) -> Callable[..., Array]:
    """Binds `model` to its params: `model_fn(x, labels, key=None) -> output`.

    Args:
      model: a Flax score network.
      params: its `params` collection.
      states: other variable collections, applied read-only (none of the score networks has
        mutable state, so unlike the original `model_fn` returns the output alone, not
        `(output, states)`).
      train: training mode (dropout on; then `key` is the dropout key and is required).
      dtype: mixed precision (e.g. `jnp.bfloat16`): the float params and `x` are cast to it
        inside the call (the caller keeps float32 master params: gradients flow back through
        the cast), every submodule's output too, and the output is cast back to float32. The
        labels stay float32, so the time / noise-level embeddings are computed in float32
        (bfloat16 cannot even represent 999 t to the step); flax's GroupNorm computes its
        statistics in float32. None: the model's own float32.

    Returns:
      `model_fn(x, labels, key=None)`.
    """

    def apply(variables, x, labels, **kwargs):
        if dtype is None:
            return model.apply(variables, x, labels, **kwargs)
        with nn.intercept_methods(_cast_module_outputs(dtype)):
            out = model.apply(_cast_floats(variables, dtype), x.astype(dtype), labels, **kwargs)
        return out.astype(x.dtype)

    variables = {"params": params, **(states or {})}

    def model_fn(x: Array, labels: Array, key: Array | None = None) -> Array:
        if not train:
            return apply(variables, x, labels, train=False)
        if key is None:
            raise ValueError("train=True needs a dropout key: model_fn(x, labels, key)")
        return apply(variables, x, labels, train=True, rngs={"dropout": key})

    return model_fn


def get_score_fn(
    sde,
    model: nn.Module,
    params: Any,
    states: dict[str, Any] | None = None,
    train: bool = False,
    continuous: bool = False,
    dtype=None,
) -> Callable[..., Array]:
    """Wraps a score network as the score `s(x, t) ~ grad_x log p_t(x)` of `sde`.

    * VP / sub-VP: the network predicts the noise, so `score = -model(x, labels) / std`.
      Continuous models (and every sub-VP model) take `labels = 999 t` and
      `std = marginal_prob(0, t)[1]`; discrete VP takes `labels = t (N - 1)` (fractional, the
      embedding is sinusoidal) and the DDPM `std = sqrt(1 - alphas_cumprod)[int(labels)]`.
    * VE: the network is the score (divided by sigma inside, via `scale_by_sigma`). Continuous
      models take `labels = sigma(t)`; discrete ones the index `round((T - t) (N - 1))` into
      the descending sigmas (t = T is label 0 = sigma_max).
    * The tutorial's VE SDE (`TutorialVESDE`, continuous only): as continuous VE, `labels =
      std(t)` = `sqrt((sigma^(2t) - 1) / (2 ln sigma))`; with `scale_by_sigma` the network
      output is divided by std(t), which is the tutorial ScoreNet's `h / marginal_prob_std(t)`.

    Args:
      sde: an `sde_lib.VPSDE`, `subVPSDE`, `VESDE` or `TutorialVESDE`.
      model: the Flax score network.
      params: its params.
      states: other variable collections (read-only).
      train: training mode (dropout on; `score_fn` then needs `key`).
      continuous: the model was trained with continuous time.
      dtype: the network's activation dtype (`get_model_fn`); the score is float32 either way.

    Returns:
      `score_fn(x, t, key=None)` with `x` [B, ...] and `t` [B].

    Raises:
      NotImplementedError: an SDE class other than the three above.
    """
    model_fn = get_model_fn(model, params, states, train=train, dtype=dtype)

    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        discrete = not continuous and not isinstance(sde, sde_lib.subVPSDE)
        sqrt_1m_alphas_cumprod = np.asarray(sde.sqrt_1m_alphas_cumprod) if discrete else None

        def score_fn(x: Array, t: Array, key: Array | None = None) -> Array:
            if not discrete:
                labels = t * _VP_LABEL_SCALE
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                table = jnp.asarray(sqrt_1m_alphas_cumprod, dtype=x.dtype)
                std = table[labels.astype(jnp.int32)]
            out = model_fn(x, labels, key)
            return -out / sde_lib.batch_bcast(std, x)

    elif isinstance(sde, sde_lib.TutorialVESDE):
        if not continuous:
            raise ValueError(
                "TutorialVESDE has no discrete noise table: train it with training.continuous=True"
            )

        def score_fn(x: Array, t: Array, key: Array | None = None) -> Array:
            # As continuous VE: the labels are the marginal std, and a `scale_by_sigma` network
            # divides its output by them (the tutorial's ScoreNet divides by std(t) too).
            labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            return model_fn(x, labels, key)

    elif isinstance(sde, sde_lib.VESDE):

        def score_fn(x: Array, t: Array, key: Array | None = None) -> Array:
            if continuous:
                labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
            return model_fn(x, labels, key)

    else:
        raise NotImplementedError(f"SDE class {type(sde).__name__} not yet supported.")

    return score_fn
