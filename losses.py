"""Denoising score matching losses (Song et al. 2021, Eq. 7) and the paper's optimizer.

Pure functions of arrays. The network enters as a parameterised callable:
  * `score_fn(params, x, t, key) -> score` for the continuous SDE loss (what
    `models.utils.get_score_fn` builds for a Flax model), and
  * `model_fn(params, x, labels, key) -> output` (the raw network on integer noise labels) for
    the discrete SMLD (NCSN) and DDPM losses.
`key` is the dropout key (it may be ignored). Every loss returns `loss_fn(key, params, x)` with
`x` a batch `[B, ...]`, giving a scalar.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

import sde_lib
from sde_lib import batch_bcast


def _reduce_op(reduce_mean: bool) -> Callable[[Array], Array]:
    """Per-example reduction over the non-batch dims: mean, or half the sum (original code)."""
    if reduce_mean:
        return lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=-1)
    return lambda v: 0.5 * jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def get_sde_loss_fn(
    sde,
    score_fn: Callable,
    *,
    reduce_mean: bool = True,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
):
    """Continuous-time denoising score matching (paper Eq. 7).

    With `lambda(t) = std(t)^2` (default) the per-example loss is `|s std + z|^2`; with
    `likelihood_weighting` it is `g(t)^2 |s + z/std|^2` (Song et al. 2021b, no importance
    sampling of t). `t ~ U(eps, T)`.

    Args:
      sde: forward SDE.
      score_fn: `score_fn(params, x, t, key)`.
      reduce_mean: mean over pixels instead of half their sum.
      likelihood_weighting: weight by `g(t)^2`.
      eps: smallest time, for numerical stability.

    Returns:
      `loss_fn(key, params, x) -> scalar`.
    """
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(key, params, x):
        t_key, noise_key, dropout_key = jax.random.split(key, 3)
        t = jax.random.uniform(t_key, (x.shape[0],), x.dtype, minval=eps, maxval=sde.T)
        z = jax.random.normal(noise_key, x.shape, x.dtype)
        mean, std = sde.marginal_prob(x, t)
        # Perturb the data with the transition kernel p_0t.
        perturbed = mean + batch_bcast(std, x) * z
        score = score_fn(params, perturbed, t, dropout_key)
        if likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
            losses = reduce_op((score + z / batch_bcast(std, x)) ** 2) * g2
        else:
            losses = reduce_op((score * batch_bcast(std, x) + z) ** 2)
        return jnp.mean(losses)

    return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, model_fn: Callable, *, reduce_mean: bool = False):
    """Discrete NCSN loss (Song & Ermon 2019): noise-level labels, `lambda = sigma^2`.

    Label `i` is the noise level `sigma_max ... sigma_min` in descending order (as
    `models.utils.get_sigmas`), so label 0 is `sigma_max`.
    """
    if not isinstance(vesde, sde_lib.VESDE):
        raise ValueError(f"SMLD training needs a VESDE, got {type(vesde).__name__}")
    smld_sigmas = np.asarray(vesde.discrete_sigmas[::-1])
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(key, params, x):
        label_key, noise_key, dropout_key = jax.random.split(key, 3)
        labels = jax.random.randint(label_key, (x.shape[0],), 0, vesde.N)
        sigmas = jnp.asarray(smld_sigmas, x.dtype)[labels]
        noise = jax.random.normal(noise_key, x.shape, x.dtype) * batch_bcast(sigmas, x)
        score = model_fn(params, x + noise, labels, dropout_key)
        # Score of the Gaussian perturbation kernel: -noise / sigma^2.
        target = -noise / batch_bcast(sigmas**2, x)
        losses = reduce_op((score - target) ** 2) * sigmas**2
        return jnp.mean(losses)

    return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, model_fn: Callable, *, reduce_mean: bool = True):
    """Discrete DDPM loss (Ho et al. 2020, L_simple): predict the noise `eps` at label `i`."""
    if not isinstance(vpsde, sde_lib.VPSDE):
        raise ValueError(
            f"DDPM training needs a VPSDE, got {type(vpsde).__name__} "
            "(discrete sub-VP training is not defined)"
        )
    sqrt_ab = np.asarray(vpsde.sqrt_alphas_cumprod)
    sqrt_1m_ab = np.asarray(vpsde.sqrt_1m_alphas_cumprod)
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(key, params, x):
        label_key, noise_key, dropout_key = jax.random.split(key, 3)
        labels = jax.random.randint(label_key, (x.shape[0],), 0, vpsde.N)
        noise = jax.random.normal(noise_key, x.shape, x.dtype)
        a = jnp.asarray(sqrt_ab, x.dtype)[labels]
        s = jnp.asarray(sqrt_1m_ab, x.dtype)[labels]
        perturbed = batch_bcast(a, x) * x + batch_bcast(s, x) * noise
        out = model_fn(params, perturbed, labels, dropout_key)
        return jnp.mean(reduce_op((out - noise) ** 2))

    return loss_fn


def get_loss_fn(
    sde,
    *,
    score_fn: Callable | None = None,
    model_fn: Callable | None = None,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
):
    """Selects the loss as the original `get_step_fn`: continuous SDE loss, or SMLD / DDPM."""
    if continuous:
        if score_fn is None:
            raise ValueError("continuous training needs score_fn(params, x, t, key)")
        return get_sde_loss_fn(
            sde,
            score_fn,
            reduce_mean=reduce_mean,
            likelihood_weighting=likelihood_weighting,
            eps=eps,
        )
    if likelihood_weighting:
        raise ValueError("likelihood_weighting is only defined for continuous training")
    if model_fn is None:
        raise ValueError("discrete training needs model_fn(params, x, labels, key)")
    if isinstance(sde, sde_lib.VESDE):
        return get_smld_loss_fn(sde, model_fn, reduce_mean=reduce_mean)
    if isinstance(sde, sde_lib.VPSDE):
        return get_ddpm_loss_fn(sde, model_fn, reduce_mean=reduce_mean)
    raise ValueError(f"Discrete training for {type(sde).__name__} is not supported")


# --------------------------------------------------------------------------------------------
# Optimizer: the original `get_optimizer` + `optimization_manager`, with optax.
# --------------------------------------------------------------------------------------------


def warmup_schedule(lr: float, warmup: int) -> optax.Schedule:
    """`lr * min(step / warmup, 1)`, `step` counting updates from 0 (so the first lr is 0)."""
    if warmup > 0:
        return lambda count: lr * jnp.minimum(count / warmup, 1.0)
    return optax.constant_schedule(lr)


def make_optimizer(
    lr: float = 2e-4,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    warmup: int = 5000,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam with linear warm-up, global-norm clipping before Adam (`grad_clip < 0` disables it),
    and decoupled weight decay scaled by the learning rate (flax.optim.Adam's, when > 0)."""
    schedule = warmup_schedule(lr, warmup)
    if weight_decay > 0:
        adam = optax.adamw(schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)
    else:
        adam = optax.adam(schedule, b1=beta1, b2=beta2, eps=eps)
    if grad_clip >= 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adam)
    return adam


def get_optimizer(config) -> optax.GradientTransformation:
    """The paper's optimizer from `config.optim` (only 'Adam' exists in the original)."""
    optim = config.optim
    if optim.optimizer != "Adam":
        raise ValueError(f"Optimizer {optim.optimizer!r} not supported; valid: ['Adam']")
    return make_optimizer(
        optim.lr,
        beta1=optim.beta1,
        eps=optim.eps,
        warmup=optim.warmup,
        grad_clip=optim.grad_clip,
        weight_decay=optim.weight_decay,
    )
