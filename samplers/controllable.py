"""Controllable generation (Song et al. 2021, Sec. 5 and App. I): class-conditional sampling,
inpainting and colorization with predictor-corrector samplers.

Pure math on arrays and a `score_fn(x, t)`, with the predictor / corrector updates of
`sampling.PREDICTORS` / `sampling.CORRECTORS`; every loop runs on device (`lax.fori_loop`) and
every sampler returns `(x, nfe)` like `sampling.get_pc_sampler`.

  * Class-conditional sampling (Sec. 5, Eq. 14): the conditional score is
    `grad log p_t(x) + scale * grad log p_t(y | x)`, with `p_t(y | x)` a noise-conditional
    classifier (`models/wideresnet_noise_conditional.py`, trained by
    `experiments.classifier.train_classifier`).
  * Inpainting and colorization (App. I.2-I.3): imputation. After every corrector and predictor
    update the known coordinates are replaced by the data perturbed to the current time,
    `mean(t) + std(t) z` from `sde.marginal_prob`. Colorization imputes in the decoupled space
    `x M` where the orthogonal `M` puts the gray-scale intensity in channel 0.

Departures from the original `controllable_generation.py` (each marked at its line):
  * the unknown region starts from the prior and the known one from the data perturbed to T
    (the original starts the known pixels from the clean data, out of distribution at t = T;
    yang-song/score_sde_pytorch#39);
  * `x_mean` of an imputation step keeps the update's `x_mean` in the unknown region (the
    original rebuilds it from the noisy `x`), so `denoise=True` removes the last noise there;
  * the output holds the known pixels (inpainting) and the gray channel (colorization) exactly
    (the original returns `mean(eps) = a(eps) data` there, slightly shrunk for VP);
  * the classifier is conditioned on the VE-equivalent noise level `std(t) / a(t)` of any SDE
    (`noise_level`); for VE this is the original's `sde.marginal_prob(x, t)[1]`, which the
    original uses for every SDE.

The paper's file `controllable_generation.py` exports these samplers under their original
names and runs the command line (`experiments/controllable.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

import sampling
import utils
from samplers import common
from sde_lib import batch_bcast

ScoreFn = Callable[[Array, Array], Array]
LogitFn = Callable[[Array, Array], Array]
ClassifierGradFn = Callable[[Array, Array, Array], Array]

# The orthogonal colour decoupling matrix of the original code (first column (1, 1, 1)/sqrt(3)),
# constants copied exactly; `decouple(x) = x @ M` per pixel, `couple(y) = y @ inv(M)`.
COLOR_M = np.asarray(
    [
        [5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
        [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
        [5.7735026e-01, 4.0824822e-01, -7.0710683e-01],
    ],
    np.float32,
)
# The original also computes the inverse with `jnp.linalg.inv(M)` (not `M.T`).
COLOR_INV_M = np.linalg.inv(COLOR_M.astype(np.float64)).astype(np.float32)


def decouple(x: Array) -> Array:
    """Per-pixel `x @ M`: channel 0 becomes `sqrt(3)` x the gray-scale intensity."""
    return jnp.einsum("...i,ij->...j", x, jnp.asarray(COLOR_M, x.dtype))


def couple(y: Array) -> Array:
    """Inverse of `decouple`."""
    return jnp.einsum("...i,ij->...j", y, jnp.asarray(COLOR_INV_M, y.dtype))


# --------------------------------------------------------------------------------------------
# Classifier guidance.
# --------------------------------------------------------------------------------------------


def noise_level(sde, t: Array) -> Array:
    """VE-equivalent noise level `std(t) / a(t)` of `x(t) = a(t) x(0) + std(t) z`, `[B]`.

    `x(t) / a(t) = x(0) + (std / a) z`, so one classifier input convention serves every SDE;
    for VE (`a = 1`) it is the original's `sde.marginal_prob(x, t)[1]`.
    """
    a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1), t.dtype), t)
    return std / a[:, 0]


def get_logit_fn(classifier, params, sde) -> LogitFn:
    """`logit_fn(x, t) -> [B, num_classes]` of a noise-conditional Flax classifier."""

    def logit_fn(x: Array, t: Array) -> Array:
        return classifier.apply({"params": params}, x, noise_level(sde, t), train=False)

    return logit_fn


def get_classifier_grad_fn(logit_fn: LogitFn) -> ClassifierGradFn:
    """`classifier_grad_fn(x, t, labels) = grad_x log p_t(labels | x)` (Eq. 14's second term).

    Args:
      logit_fn: `logit_fn(x, t) -> [B, num_classes]`; examples must not interact (the gradient
        of the batch sum is then the per-example gradient).

    Returns:
      A function of `x` [B, ...], `t` [B] and integer `labels` [B], returning an array like `x`.
    """

    def classifier_grad_fn(x: Array, t: Array, labels: Array) -> Array:
        def log_prob(x):
            log_p = jax.nn.log_softmax(logit_fn(x, t), axis=-1)
            return jnp.sum(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

        return jax.grad(log_prob)(x)

    return classifier_grad_fn


# --------------------------------------------------------------------------------------------
# The shared PC loop.
# --------------------------------------------------------------------------------------------


# `sampling.check_pc` and `sampling.pc_loop` (with an imputation `project`) run every sampler.


# --------------------------------------------------------------------------------------------
# Class-conditional sampling.
# --------------------------------------------------------------------------------------------


def get_pc_conditional_sampler(
    sde,
    score_fn: ScoreFn,
    classifier_grad_fn: ClassifierGradFn,
    shape,
    predictor: str,
    corrector: str,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
    inverse_scaler: Callable[[Array], Array] | None = None,
    scale: float = 1.0,
    sharding: jax.sharding.Sharding | None = None,
    host_loop: bool | None = None,
):
    """Class-conditional PC sampler with classifier guidance (Sec. 5, Eq. 14; App. I.1).

    Args:
      sde: forward SDE. score_fn: unconditional `score_fn(x, t)`.
      classifier_grad_fn: `classifier_grad_fn(x, t, labels) = grad_x log p_t(labels | x)`,
        e.g. `get_classifier_grad_fn(get_logit_fn(classifier, params, sde))`.
      shape: `(B, ...)`, the batch to draw.
      predictor, corrector: names in `sampling.PREDICTORS` / `sampling.CORRECTORS`.
      snr, n_steps, probability_flow, denoise, eps, inverse_scaler, sharding: as
        `sampling.get_pc_sampler`.
      scale: guidance strength; the score is `s + scale grad log p_t(y | x)`, i.e. sampling
        `p(x) p(y | x)^scale`. 1 is the paper (and Bayes' rule); 0 is unconditional.
      host_loop: run the noise levels from a host loop over one jitted `sampling.pc_step`
        instead of `lax.fori_loop`. None = `not utils.device_loops()`: `$SCORE_SDE_LOOPS`, by
        default the device loop (the classifier's convolution gradients are loop-safe on
        XLA:CPU, models/conv.py); the samples are the same up to float rounding.

    Returns:
      `sampler(key, labels) -> (x, nfe)`: `labels` int `[B]`; `nfe` counts score evaluations
      (each one also evaluates the classifier gradient once, unless `scale == 0`). With the same
      key and `scale=0` the samples equal `sampling.get_pc_sampler`'s.
    """
    shape = common.check_shape(shape)
    updates, nfe = sampling.check_pc(sde, predictor, corrector, probability_flow, n_steps)
    inverse_scaler = inverse_scaler or common.identity
    on_device = utils.device_loops(None if host_loop is None else not host_loop)

    def step_kwargs(labels):
        def total_score(x, t):
            if scale == 0:
                return score_fn(x, t)
            # Bayes' rule: grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x).
            return score_fn(x, t) + scale * classifier_grad_fn(x, t, labels)

        return dict(sde=sde, score_fn=total_score, updates=updates, snr=snr, n_steps=n_steps,
                    probability_flow=probability_flow, eps=eps, sharding=sharding)  # fmt: skip

    @jax.jit
    def prior(key):
        prior_key, loop_key = jax.random.split(key)
        return common.constrain(sde.prior_sampling(prior_key, shape), sharding), loop_key

    @jax.jit
    def device_loop(x, loop_key, labels):
        return sampling.pc_loop(loop_key, x, **step_kwargs(labels))

    @jax.jit
    def host_step(i, carry, loop_key, labels):
        return sampling.pc_step(i, carry, loop_key, **step_kwargs(labels))

    def conditional_sampler(key, labels):
        x, loop_key = prior(key)
        if on_device:
            x, x_mean = device_loop(x, loop_key, labels)
        else:
            carry = (x, x)
            for i in range(sde.N):
                carry = host_step(i, carry, loop_key, labels)
            x, x_mean = carry
        return inverse_scaler(x_mean if denoise else x)

    def sampler(key, labels):
        labels = jnp.asarray(labels)
        if labels.shape != shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"labels must be integers of shape ({shape[0]},); got {labels.dtype} {labels.shape}"
            )
        return conditional_sampler(key, labels), nfe

    return sampler


# --------------------------------------------------------------------------------------------
# Inpainting and colorization: imputation in a (possibly rotated) coordinate system.
# --------------------------------------------------------------------------------------------


def _imputation(sde, data: Array, known: Array, to_space, from_space):
    """`project(key, x, x_mean, t)`: the `known` coordinates of `to_space(x)` are set to the
    data `data` (given in that space) perturbed to time `t` (App. I.2, I.3)."""

    def project(key, x, x_mean, t):
        mean, std = sde.marginal_prob(data, t)
        noisy = mean + batch_bcast(std, data) * jax.random.normal(key, data.shape, data.dtype)
        x = from_space(jnp.where(known, noisy, to_space(x)))
        # Departure: the original rebuilds x_mean from the noisy x; we keep the update's mean.
        x_mean = from_space(jnp.where(known, mean, to_space(x_mean)))
        return x, x_mean

    return project


def _get_pc_imputer(
    sde,
    score_fn,
    predictor,
    corrector,
    *,
    snr,
    n_steps,
    probability_flow,
    denoise,
    eps,
    inverse_scaler,
    sharding,
    to_space,
    from_space,
):
    """Jitted `impute(key, data, known) -> x`, `data` and the boolean `known` in the space of
    `to_space`; also returns the NFE of one call."""
    updates, nfe = sampling.check_pc(sde, predictor, corrector, probability_flow, n_steps)
    inverse_scaler = inverse_scaler or common.identity

    @jax.jit
    def impute(key, data, known):
        project = _imputation(sde, data, known, to_space, from_space)
        prior_key, loop_key = jax.random.split(key)
        x = common.constrain(sde.prior_sampling(prior_key, data.shape), sharding)
        # Departure: the known part starts from the data perturbed to T, not the clean data
        # of the original (out of distribution at t = T; score_sde_pytorch#39).
        vec_T = jnp.full((data.shape[0],), sde.T, data.dtype)
        x, _ = project(jax.random.fold_in(prior_key, 1), x, x, vec_T)
        x, x_mean = sampling.pc_loop(
            loop_key,
            x,
            sde=sde,
            score_fn=score_fn,
            updates=updates,
            snr=snr,
            n_steps=n_steps,
            probability_flow=probability_flow,
            eps=eps,
            sharding=sharding,
            project=project,
        )
        x = x_mean if denoise else x
        # The known coordinates are returned exactly (the original: mean(eps) = a(eps) data).
        return inverse_scaler(from_space(jnp.where(known, data, to_space(x))))

    return impute, nfe


def get_pc_inpainter(
    sde,
    score_fn: ScoreFn,
    predictor: str,
    corrector: str,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """PC inpainter (App. I.2; the original `get_pc_inpainter`).

    After every corrector and predictor update the known pixels are replaced by the data
    perturbed to the current time, `mean(t) + std(t) z` (`sde.marginal_prob`); the unknown
    pixels start from the prior. Arguments as `sampling.get_pc_sampler`.

    Returns:
      `inpainter(key, data, mask) -> (x, nfe)`: `data` `[B, ...]` in the model's (scaled)
      space, `mask` broadcastable to it with 1 (any nonzero) on known pixels and 0 on the ones
      to fill; `x` (after `inverse_scaler`) equals `inverse_scaler(data)` exactly where known.
    """
    identity = common.identity
    impute, nfe = _get_pc_imputer(
        sde,
        score_fn,
        predictor,
        corrector,
        snr=snr,
        n_steps=n_steps,
        probability_flow=probability_flow,
        denoise=denoise,
        eps=eps,
        inverse_scaler=inverse_scaler,
        sharding=sharding,
        to_space=identity,
        from_space=identity,
    )

    def inpainter(key, data, mask):
        data = jnp.asarray(data)
        common.check_shape(data.shape)
        try:
            known = jnp.broadcast_to(jnp.asarray(mask) != 0, data.shape)
        except ValueError as e:
            raise ValueError(
                f"mask of shape {jnp.shape(mask)} does not broadcast to data {data.shape}"
            ) from e
        return impute(key, data, known), nfe

    return inpainter


def get_pc_colorizer(
    sde,
    score_fn: ScoreFn,
    predictor: str,
    corrector: str,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
    inverse_scaler: Callable[[Array], Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """PC colorizer (App. I.3; the original `get_pc_colorizer`).

    Imputation in the decoupled space `y = x M` (`COLOR_M`, orthogonal), where channel 0 is
    `sqrt(3)` x the gray intensity and is known. An orthogonal map keeps the isotropic noise of
    the SDE isotropic, so perturbing `y` is perturbing `x`. Arguments as `get_pc_inpainter`.

    Returns:
      `colorizer(key, gray_scale_img) -> (x, nfe)`: `gray_scale_img` `[B, H, W, 3]` in the
      model's space with equal R, G, B (an RGB image works too: only its channel mean is used);
      `decouple(x)[..., 0]` equals `decouple(gray_scale_img)[..., 0]` up to rounding.
    """
    impute, nfe = _get_pc_imputer(
        sde,
        score_fn,
        predictor,
        corrector,
        snr=snr,
        n_steps=n_steps,
        probability_flow=probability_flow,
        denoise=denoise,
        eps=eps,
        inverse_scaler=inverse_scaler,
        sharding=sharding,
        to_space=decouple,
        from_space=couple,
    )

    def colorizer(key, gray_scale_img):
        gray = jnp.asarray(gray_scale_img)
        if gray.ndim != 4 or gray.shape[-1] != 3:
            raise ValueError(f"gray_scale_img must be [B, H, W, 3]; got shape {gray.shape}")
        known = jnp.zeros(gray.shape, bool).at[..., 0].set(True)
        return impute(key, decouple(gray), known), nfe

    return colorizer
