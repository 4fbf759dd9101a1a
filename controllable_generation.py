"""Controllable generation (Song et al. 2021, Sec. 5 and App. I): class-conditional sampling,
inpainting and colorization with predictor-corrector samplers.

Pure math on arrays and a `score_fn(x, t)`, with the predictor / corrector updates of
`sampling.PREDICTORS` / `sampling.CORRECTORS`; every loop runs on device (`lax.fori_loop`) and
every sampler returns `(x, nfe)` like `sampling.get_pc_sampler`.

  * Class-conditional sampling (Sec. 5, Eq. 14): the conditional score is
    `grad log p_t(x) + scale * grad log p_t(y | x)`, with `p_t(y | x)` a noise-conditional
    classifier (`models/wideresnet_noise_conditional.py`, trained by `train_classifier`).
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

CLI (absl), on a trained score model in `--workdir`:

    python controllable_generation.py --config CFG --workdir W --mode train_classifier
    python controllable_generation.py --config CFG --workdir W --mode conditional --labels 0,1,2
    python controllable_generation.py --config CFG --workdir W --mode inpaint --mask half
    python controllable_generation.py --config CFG --workdir W --mode colorize --split test

writes `W/controllable/<mode>.png` (rows: input | mask | result) and `<mode>.npz` (uint8).
The classifier lives in `--classifier_workdir` (default `W/classifier`); its hyperparameters are
`get_classifier_config()`, overridable as `--classifier.model.depth=16` etc.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import Array
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sampling
import sde_lib
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


def _no_projection(key, x, x_mean, t):
    del key, t
    return x, x_mean


def _check_pc(sde, predictor: str, corrector: str, probability_flow: bool, n_steps: int):
    """Looks the updates up (errors list the valid names), validates ancestral sampling.

    Returns:
      `((predictor_update, corrector_update), nfe)` with `nfe` the score evaluations of a run.
    """
    updates = (sampling.get_predictor(predictor), sampling.get_corrector(corrector))
    if predictor == "ancestral_sampling" and (
        probability_flow or not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE))
    ):
        raise ValueError(
            "ancestral_sampling needs probability_flow=False and a VESDE or VPSDE, got "
            f"{type(sde).__name__} with probability_flow={probability_flow}"
        )
    nfe = sde.N * ((predictor != "none") + (corrector != "none") * n_steps)
    return updates, nfe


def _pc_loop(
    key,
    x,
    *,
    sde,
    score_fn,
    updates,
    snr,
    n_steps,
    probability_flow,
    eps,
    sharding,
    project=_no_projection,
):
    """`sde.N` levels of corrector then predictor (the original's order) from `x` at T to eps.

    `project(key, x, x_mean, t) -> (x, x_mean)` runs after each update (imputation). Step keys
    are those of `sampling.get_pc_sampler`, so without a constraint the samples are identical.
    """
    p_update, c_update = updates
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def body(i, carry):
        x, _ = carry
        vec_t = jnp.full((x.shape[0],), timesteps[i], x.dtype)
        step_key = jax.random.fold_in(key, i)
        c_key, p_key = jax.random.split(step_key)
        c_proj_key, p_proj_key = jax.random.split(jax.random.fold_in(step_key, 1))
        x, x_mean = c_update(c_key, x, vec_t, sde=sde, score_fn=score_fn, snr=snr, n_steps=n_steps)
        x, x_mean = project(c_proj_key, x, x_mean, vec_t)
        x, x_mean = p_update(
            p_key, x, vec_t, sde=sde, score_fn=score_fn, probability_flow=probability_flow
        )
        x, x_mean = project(p_proj_key, x, x_mean, vec_t)
        return sampling._constrain(x, sharding), sampling._constrain(x_mean, sharding)

    return jax.lax.fori_loop(0, sde.N, body, (x, x))


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

    Returns:
      `sampler(key, labels) -> (x, nfe)`: `labels` int `[B]`; `nfe` counts score evaluations
      (each one also evaluates the classifier gradient once, unless `scale == 0`). With the same
      key and `scale=0` the samples equal `sampling.get_pc_sampler`'s.
    """
    shape = sampling._check_shape(shape)
    updates, nfe = _check_pc(sde, predictor, corrector, probability_flow, n_steps)
    inverse_scaler = inverse_scaler or sampling._identity

    @jax.jit
    def conditional_sampler(key, labels):
        def total_score(x, t):
            if scale == 0:
                return score_fn(x, t)
            # Bayes' rule: grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x).
            return score_fn(x, t) + scale * classifier_grad_fn(x, t, labels)

        prior_key, loop_key = jax.random.split(key)
        x = sampling._constrain(sde.prior_sampling(prior_key, shape), sharding)
        x, x_mean = _pc_loop(
            loop_key,
            x,
            sde=sde,
            score_fn=total_score,
            updates=updates,
            snr=snr,
            n_steps=n_steps,
            probability_flow=probability_flow,
            eps=eps,
            sharding=sharding,
        )
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
    updates, nfe = _check_pc(sde, predictor, corrector, probability_flow, n_steps)
    inverse_scaler = inverse_scaler or sampling._identity

    @jax.jit
    def impute(key, data, known):
        project = _imputation(sde, data, known, to_space, from_space)
        prior_key, loop_key = jax.random.split(key)
        x = sampling._constrain(sde.prior_sampling(prior_key, data.shape), sharding)
        # Departure: the known part starts from the data perturbed to T, not the clean data
        # of the original (out of distribution at t = T; score_sde_pytorch#39).
        vec_T = jnp.full((data.shape[0],), sde.T, data.dtype)
        x, _ = project(jax.random.fold_in(prior_key, 1), x, x, vec_T)
        x, x_mean = _pc_loop(
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
    identity = sampling._identity
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
        sampling._check_shape(data.shape)
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


# --------------------------------------------------------------------------------------------
# Noise-conditional classifier: config, loss, training.
# --------------------------------------------------------------------------------------------


def get_classifier_config() -> ml_collections.ConfigDict:
    """Defaults of the noise-conditional classifier (the released CIFAR-10 one is WRN-28-10).

    The original released no training code; the optimiser follows the score models'.
    """
    config = ml_collections.ConfigDict()
    config.model = model = ml_collections.ConfigDict()
    # WRN depth 6 n + 4 and width multiplier (WRN-28-10 as the original `create_classifier`).
    model.depth = 28
    model.widen_factor = 10
    # Number of classes (CIFAR-10).
    model.num_classes = 10
    # Gaussian Fourier features of log sigma: frequencies and their std.
    model.embedding_size = 128
    model.fourier_scale = 16.0
    # Width of the noise-embedding MLP.
    model.temb_dim = 512
    config.training = training = ml_collections.ConfigDict()
    # Global batch size of the classifier's training.
    training.batch_size = 128
    # Training steps.
    training.n_iters = 200_000
    # Log loss / accuracy every this many steps.
    training.log_freq = 100
    # Keep a checkpoint every this many steps; save the latest (for resuming) every ..._preemption.
    training.snapshot_freq = 50_000
    training.snapshot_freq_for_preemption = 5_000
    # EMA rate of the params used for sampling.
    training.ema_rate = 0.999
    config.optim = optim = ml_collections.ConfigDict()
    # Adam with linear warmup and global-norm clipping (`losses.get_optimizer`).
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 1000
    optim.grad_clip = 1.0
    optim.weight_decay = 0.0
    # Guidance scale of the conditional sampler (1 = the paper).
    config.scale = 1.0
    return config


def create_classifier(classifier_config):
    """The `WideResnet` of `classifier_config.model` (explicit attributes, no config inside)."""
    from models import wideresnet_noise_conditional as wrn

    return wrn.WideResnet(**classifier_config.model.to_dict())


def create_classifier_state(classifier, tx, key, image_shape):
    """A `run_lib.TrainState` at step 0 (EMA starting at the initial params)."""
    import run_lib

    x = jnp.zeros((1, *image_shape), jnp.float32)
    params = classifier.init(key, x, jnp.ones((1,), jnp.float32))["params"]
    return run_lib.TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def get_classifier_loss_fn(sde, classifier, eps: float):
    """`loss_fn(key, params, x, labels) -> (cross_entropy, accuracy)` on perturbed data.

    `t ~ U(eps, T)`, `x(t) = mean(t) + std(t) z` from `sde.marginal_prob` (VE: `x + sigma z`),
    and the classifier sees `x(t)` with `noise_level(sde, t)`.
    """

    def loss_fn(key, params, x, labels):
        t_key, z_key = jax.random.split(key)
        t = jax.random.uniform(t_key, (x.shape[0],), x.dtype, eps, sde.T)
        mean, std = sde.marginal_prob(x, t)
        x_t = mean + batch_bcast(std, x) * jax.random.normal(z_key, x.shape, x.dtype)
        logits = classifier.apply({"params": params}, x_t, noise_level(sde, t), train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    return loss_fn


def make_classifier_train_step(
    loss_fn, tx, ema_rate: float, base_key, state_sharding=None, batch_sharding=None
):
    """Jitted `step(state, images, labels) -> (state, {'loss', 'accuracy'})`; the step key is
    `fold_in(base_key, step)`, so a resumed run repeats an uninterrupted one."""

    def train_step(state, images, labels):
        key = jax.random.fold_in(base_key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
        (loss, acc), grads = grad_fn(key, state.params, images, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: e * ema_rate + p * (1 - ema_rate), state.ema_params, params)
        state = state.replace(
            step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
        )
        return state, {"loss": loss, "accuracy": acc}

    shardings = {}
    if state_sharding is not None:
        shardings = dict(
            in_shardings=(state_sharding, batch_sharding, batch_sharding),
            out_shardings=(state_sharding, None),
        )
    return jax.jit(train_step, donate_argnums=0, **shardings)


def _classifier_setup(config, classifier_config):
    """(classifier, tx, abstract state) for the score config's image shape."""
    import losses

    classifier = create_classifier(classifier_config)
    tx = losses.get_optimizer(classifier_config)
    image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    abstract = jax.eval_shape(
        lambda: create_classifier_state(classifier, tx, jax.random.key(0), image_shape)
    )
    return classifier, tx, abstract, image_shape


def train_classifier(config, workdir: str, classifier_config=None):
    """Trains the noise-conditional classifier on data perturbed by `config`'s SDE.

    Resumable: Orbax checkpoints in `workdir/checkpoints` (`run_lib.checkpoint_manager`),
    `classifier_config.json`, `metrics.jsonl`. Data: `datasets.get_dataset(config)` with the
    classifier's batch size, `batch['label']` as targets.

    Returns:
      The final `run_lib.TrainState`.
    """
    import datasets
    import run_lib
    import utils

    cfg = classifier_config or get_classifier_config()
    run_lib.check_batch_size(cfg.training.batch_size)
    utils.quiet_library_logs()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "classifier_config.json"), "w") as f:
        f.write(cfg.to_json(indent=2) + "\n")
    sde, eps = run_lib.get_sde(config)
    classifier, tx, abstract, image_shape = _classifier_setup(config, cfg)
    base_key = jax.random.fold_in(jax.random.key(config.seed), 7)
    mesh = run_lib.make_mesh()
    state_sharding, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    manager = run_lib.checkpoint_manager(workdir, cfg)
    state, restored = run_lib.restore_latest_good(manager, abstract, tx)
    if state is None:
        init_key = jax.random.fold_in(base_key, -1 % 2**31)
        state = create_classifier_state(classifier, tx, init_key, image_shape)
        logging.info("Classifier from scratch (%d params).", utils.count_params(state.params))
    state = jax.device_put(state, state_sharding)
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.training.batch_size = cfg.training.batch_size
    train_ds, _, _ = datasets.get_dataset(
        data_config,
        uniform_dequantization=config.data.uniform_dequantization,
        start_step=int(state.step),
    )
    scaler = datasets.get_data_scaler(config)
    step_fn = make_classifier_train_step(
        get_classifier_loss_fn(sde, classifier, eps),
        tx,
        cfg.training.ema_rate,
        base_key,
        state_sharding,
        batch_sharding,
    )
    writer = utils.MetricWriter(workdir, tensorboard=False)
    t0, tr, first_step = time.perf_counter(), cfg.training, int(state.step)
    logging.info("Initial compilation, this may take a few minutes...")
    with run_lib._StopSignal() as stop:
        for batch in train_ds:
            if int(state.step) >= tr.n_iters:
                break
            images = run_lib.to_global(scaler(batch["image"]), batch_sharding)
            labels = run_lib.to_global(batch["label"], batch_sharding)
            state, metrics = step_fn(state, images, labels)
            step = int(state.step)
            if step % tr.log_freq == 0 or step == tr.n_iters:
                rate = (step - first_step) / max(time.perf_counter() - t0, 1e-9)
                writer.write(step, **{k: float(v) for k, v in metrics.items()}, steps_per_s=rate)
            if (
                step % tr.snapshot_freq_for_preemption == 0
                or step % tr.snapshot_freq == 0
                or (step >= tr.n_iters or stop.received)
            ):
                run_lib.save_checkpoint(manager, state)
            if stop.received:
                logging.warning("Received %s: checkpoint saved at step %d.", stop.received, step)
                break
    manager.close()
    writer.close()
    return state


# --------------------------------------------------------------------------------------------
# Masks, inputs and the command-line modes.
# --------------------------------------------------------------------------------------------


def _half_mask(key, shape):
    del key
    w = shape[2]
    return np.broadcast_to((np.arange(w) < w // 2)[None, None, :, None], shape)  # left half known


def _center_mask(key, shape):
    del key
    h, w = shape[1:3]
    rows = (np.arange(h) >= h // 4) & (np.arange(h) < h - h // 4)
    cols = (np.arange(w) >= w // 4) & (np.arange(w) < w - w // 4)
    return np.broadcast_to(~(rows[:, None] & cols[None, :])[None, :, :, None], shape)


def _random_mask(key, shape):
    # Half of the pixels known (all channels of a pixel together).
    return np.broadcast_to(np.asarray(jax.random.bernoulli(key, 0.5, (*shape[:3], 1))), shape)


# Mask name -> `mask_fn(key, shape) -> bool [B, H, W, C]`, True on known pixels.
MASKS = {"half": _half_mask, "center": _center_mask, "random": _random_mask}


def get_mask(name: str, key, shape) -> np.ndarray:
    """float32 mask of `shape` `[B, H, W, C]`: 1 on known pixels, 0 on the ones to inpaint."""
    if name not in MASKS:
        raise ValueError(f"Unknown mask {name!r}; valid masks: {sorted(MASKS)}")
    return MASKS[name](key, tuple(shape)).astype(np.float32)


_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def load_images(config, *, image_folder: str | None = None, split: str = "test", num: int = 16):
    """`num` images in [0, 1], float32 `[num, H, W, C]`, from a folder or a dataset split."""
    size, channels = config.data.image_size, config.data.num_channels
    if image_folder:
        from PIL import Image

        if not os.path.isdir(image_folder):
            raise FileNotFoundError(f"--image_folder {image_folder!r} is not a directory")
        files = sorted(f for f in os.listdir(image_folder) if f.lower().endswith(_IMAGE_EXTENSIONS))
        if len(files) < num:
            raise ValueError(
                f"{image_folder} has {len(files)} images {_IMAGE_EXTENSIONS}, need {num}"
            )
        images = []
        for name in files[:num]:
            image = Image.open(os.path.join(image_folder, name)).convert(
                "L" if channels == 1 else "RGB"
            )
            if image.size != (size, size):
                raise ValueError(
                    f"{name} is {image.size[0]}x{image.size[1]} but config.data.image_size={size}: "
                    "resize the images or set --config.data.image_size"
                )
            images.append(np.asarray(image, np.float32).reshape(size, size, channels) / 255.0)
        return np.stack(images)
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; valid: ['test', 'train']")
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.eval.batch_size = num
    train_ds, eval_ds, _ = datasets.get_dataset(data_config, evaluation=True)
    batch = next(iter(train_ds if split == "train" else eval_ds), None)
    if batch is None:
        raise ValueError(f"The {split} split has fewer than --num={num} images")
    return np.asarray(batch["image"], np.float32)


def _restore_ema_params(workdir, config, model, what: str, hint: str, tx=None, abstract=None):
    """EMA params of the newest good checkpoint in `workdir/checkpoints` (clear error if none)."""
    import losses
    import run_lib

    if abstract is None:
        tx = losses.get_optimizer(config)
        abstract = jax.eval_shape(
            lambda: run_lib.create_train_state(config, model, tx, jax.random.key(0))
        )
    manager = run_lib.checkpoint_manager(workdir, config)
    state, step = run_lib.restore_latest_good(manager, abstract, tx)
    manager.close()
    if state is None:
        raise FileNotFoundError(
            f"No {what} checkpoint in {os.path.join(workdir, 'checkpoints')}; {hint}"
        )
    logging.info("Restored %s checkpoint step %d from %s.", what, step, workdir)
    # One device: the CLI batches are small and need not divide the device count.
    return jax.device_put(state.ema_params, jax.local_devices()[0])


def _load_classifier_config(classifier_workdir: str, default):
    """The config the classifier was trained with (`classifier_config.json`), else `default`."""
    path = os.path.join(classifier_workdir, "classifier_config.json")
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _pc_kwargs(config, eps, inverse_scaler):
    s = config.sampling
    return dict(
        snr=s.snr,
        n_steps=s.n_steps_each,
        probability_flow=s.probability_flow,
        denoise=s.noise_removal,
        eps=eps,
        inverse_scaler=inverse_scaler,
    )


def _save(out_dir: str, mode: str, rows: list[np.ndarray], **arrays) -> str:
    """`<mode>.png`: one grid row per entry of `rows` ([N, H, W, C] in [0, 1]); `<mode>.npz`."""
    from PIL import Image

    import utils

    os.makedirs(out_dir, exist_ok=True)
    rows = [utils.to_uint8(r) for r in rows]
    grid = utils.image_grid(np.concatenate(rows), nrow=len(rows[0]))
    path = os.path.join(out_dir, f"{mode}.png")
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    np.savez_compressed(
        os.path.join(out_dir, f"{mode}.npz"),
        **{k: utils.to_uint8(v) if v.dtype.kind == "f" else v for k, v in arrays.items()},
    )
    return path


def run(
    config,
    workdir: str,
    mode: str,
    *,
    classifier_workdir: str | None = None,
    labels: list[int] | None = None,
    mask: str = "half",
    image_folder: str | None = None,
    split: str = "test",
    num: int = 16,
    classifier_config=None,
) -> str | None:
    """One CLI mode; returns the written PNG (None for `train_classifier`)."""
    import datasets
    import run_lib
    import utils
    from models import utils as mutils

    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; valid modes: {MODES}")
    utils.quiet_library_logs()
    classifier_workdir = classifier_workdir or os.path.join(workdir, "classifier")
    classifier_config = classifier_config or get_classifier_config()
    if mode == "train_classifier":
        train_classifier(config, classifier_workdir, classifier_config)
        return None
    if mode == "inpaint" and mask not in MASKS:
        raise ValueError(f"Unknown mask {mask!r}; valid masks: {sorted(MASKS)}")
    if mode == "colorize" and config.data.num_channels != 3:
        raise ValueError(
            f"colorize needs RGB data; config.data.num_channels={config.data.num_channels}"
        )
    sde, eps = run_lib.get_sde(config)
    model = mutils.get_model(config)
    params = _restore_ema_params(
        workdir, config, model, "score-model", "train one first: main.py --mode train"
    )
    score_fn = mutils.get_score_fn(
        sde, model, params, train=False, continuous=config.training.continuous
    )
    scaler, inverse_scaler = (
        datasets.get_data_scaler(config),
        datasets.get_data_inverse_scaler(config),
    )
    kwargs = _pc_kwargs(config, eps, inverse_scaler)
    predictor, corrector = config.sampling.predictor, config.sampling.corrector
    key = jax.random.fold_in(jax.random.key(config.seed), 11)
    out_dir = os.path.join(workdir, "controllable")
    if mode == "conditional":
        return _run_conditional(
            config,
            sde,
            eps,
            score_fn,
            kwargs,
            key,
            out_dir,
            num,
            labels,
            classifier_workdir,
            classifier_config,
        )
    images = load_images(config, image_folder=image_folder, split=split, num=num)
    data = jnp.asarray(scaler(images))
    if mode == "inpaint":
        m = get_mask(mask, jax.random.fold_in(key, 1), images.shape)
        inpainter = get_pc_inpainter(sde, score_fn, predictor, corrector, **kwargs)
        x, nfe = inpainter(key, data, m)
        # Known pixels from the [0, 1] input itself: inverse_scaler(scaler(x)) can differ by 1 ulp.
        x = np.where(m > 0, images, np.asarray(x))
        return _save(out_dir, mode, [images, images * m, x], input=images, mask=m, result=x)
    gray = np.repeat(images.mean(-1, keepdims=True), 3, axis=-1)
    colorizer = get_pc_colorizer(sde, score_fn, predictor, corrector, **kwargs)
    x, nfe = colorizer(key, jnp.asarray(scaler(gray)))
    x = np.asarray(x)
    return _save(out_dir, mode, [images, gray, x], input=images, gray=gray, result=x)


def _run_conditional(
    config,
    sde,
    eps,
    score_fn,
    kwargs,
    key,
    out_dir,
    num,
    labels,
    classifier_workdir,
    classifier_config,
):
    cfg = _load_classifier_config(classifier_workdir, classifier_config)
    labels = list(range(cfg.model.num_classes)) if not labels else list(labels)
    bad = [y for y in labels if not 0 <= y < cfg.model.num_classes]
    if bad:
        raise ValueError(f"labels {bad} out of range; valid: 0..{cfg.model.num_classes - 1}")
    labels = np.resize(np.asarray(labels, np.int32), num)  # cycled to --num samples
    classifier, tx, abstract, _ = _classifier_setup(config, cfg)
    hint = "train one first: --mode train_classifier"
    cls_params = _restore_ema_params(
        classifier_workdir, cfg, None, "classifier", hint, tx, abstract
    )
    grad_fn = get_classifier_grad_fn(get_logit_fn(classifier, cls_params, sde))
    size, channels = config.data.image_size, config.data.num_channels
    sampler = get_pc_conditional_sampler(
        sde,
        score_fn,
        grad_fn,
        (num, size, size, channels),
        config.sampling.predictor,
        config.sampling.corrector,
        scale=cfg.scale,
        **kwargs,
    )
    x, nfe = sampler(key, jnp.asarray(labels))
    x = np.asarray(x)
    logging.info("conditional: %d samples, nfe %d", num, nfe)
    return _save(out_dir, "conditional", [x], result=x, labels=labels)


MODES = ["train_classifier", "conditional", "inpaint", "colorize"]


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    labels = [int(v) for v in f.labels.split(",") if v.strip()] if f.labels else None
    path = run(
        f.config,
        f.workdir,
        f.mode,
        classifier_workdir=f.classifier_workdir,
        labels=labels,
        mask=f.mask,
        image_folder=f.image_folder,
        split=f.split,
        num=f.num,
        classifier_config=f.classifier,
    )
    if path:
        logging.info("Wrote %s", path)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Score-model configuration.", lock_config=True)
    config_flags.DEFINE_config_dict("classifier", get_classifier_config(), "Classifier settings.")
    flags.DEFINE_string("workdir", None, "Work directory of the trained score model.")
    flags.DEFINE_enum("mode", None, MODES, "What to run.")
    flags.DEFINE_string("classifier_workdir", None, "Classifier directory (default W/classifier).")
    flags.DEFINE_string("labels", None, "Comma-separated class labels (conditional).")
    flags.DEFINE_string("mask", "half", f"Inpainting mask: {', '.join(sorted(MASKS))}.")
    flags.DEFINE_string("image_folder", None, "Folder of input images (else --split).")
    flags.DEFINE_string("split", "test", "Dataset split of the inputs: test or train.")
    flags.DEFINE_integer("num", 16, "Number of images / samples.")
    flags.mark_flags_as_required(["config", "workdir", "mode"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
