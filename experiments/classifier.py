"""The noise-conditional classifier `p_t(y | x)` of class-conditional sampling (paper Sec. 5).

Its config, loss on data perturbed by the score model's SDE, and training through the shared
host loop (`training/loop.py`). The sampler that uses it is `samplers/controllable.py`; the
command line that trains and runs it is `experiments/controllable.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

import datasets
import fileio
import losses
import utils
from models import wideresnet_noise_conditional as wrn
from samplers.controllable import noise_level
from sde_lib import batch_bcast
from training import checkpoints, devices, loop, score_model, steps
from training.state import TrainState, new_train_state

# The classifier's settings are saved beside its checkpoints.
CONFIG_FILE = "classifier_config.json"


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
    return wrn.WideResnet(**classifier_config.model.to_dict())


def create_classifier_state(classifier, tx, key, image_shape) -> TrainState:
    """A `TrainState` at step 0 (EMA starting at the initial params)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    params = classifier.init(key, x, jnp.ones((1,), jnp.float32))["params"]
    return new_train_state(params, tx)


def get_classifier_loss_fn(sde, classifier, eps: float):
    """`loss_fn(key, params, (x, labels)) -> (cross_entropy, {'accuracy'})` on perturbed data.

    `t ~ U(eps, T)`, `x(t) = mean(t) + std(t) z` from `sde.marginal_prob` (VE: `x + sigma z`),
    and the classifier sees `x(t)` with `noise_level(sde, t)`.
    """

    def loss_fn(key, params, batch):
        x, labels = batch
        t_key, z_key = jax.random.split(key)
        t = jax.random.uniform(t_key, (x.shape[0],), x.dtype, eps, sde.T)
        mean, std = sde.marginal_prob(x, t)
        x_t = mean + batch_bcast(std, x) * jax.random.normal(z_key, x.shape, x.dtype)
        logits = classifier.apply({"params": params}, x_t, noise_level(sde, t), train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    return loss_fn


def classifier_setup(config, classifier_config):
    """(classifier, tx, abstract state, image shape) for the score config's image shape."""
    classifier = create_classifier(classifier_config)
    tx = losses.get_optimizer(classifier_config)
    image_shape = datasets.image_shape(config)
    abstract = jax.eval_shape(
        lambda: create_classifier_state(classifier, tx, jax.random.key(0), image_shape)
    )
    return classifier, tx, abstract, image_shape


def train_classifier(config, workdir: str, classifier_config=None) -> TrainState:
    """Trains the noise-conditional classifier on data perturbed by `config`'s SDE.

    Resumable: Orbax checkpoints in `workdir/checkpoints`, `classifier_config.json`,
    `metrics.jsonl`. Data: `datasets.get_dataset(config)` with the classifier's batch size,
    `batch['label']` as targets.

    Returns:
      The final `TrainState`.
    """
    cfg = classifier_config or get_classifier_config()
    tr = cfg.training
    schedule = loop.Schedule.from_config(tr, "classifier.training")
    devices.check_batch_size(tr.batch_size, "classifier.training.batch_size")
    utils.quiet_library_logs()
    workdir = fileio.makedirs(workdir)
    if utils.is_main_process():
        fileio.write_text_atomic(fileio.join(workdir, CONFIG_FILE), cfg.to_json(indent=2) + "\n")
    sde, eps = score_model.sde_from_config(config)
    classifier, tx, abstract, image_shape = classifier_setup(config, cfg)
    base_key = jax.random.fold_in(jax.random.key(config.seed), 7)
    mesh = devices.make_mesh()
    state_sharding = devices.replicated(mesh)
    batch_sharding = devices.batch_sharding(mesh, steps_axis=True)
    manager = checkpoints.checkpoint_manager(workdir, tr.snapshot_freq)

    def init():
        init_key = jax.random.fold_in(base_key, -1 % 2**31)
        state = create_classifier_state(classifier, tx, init_key, image_shape)
        logging.info("Classifier from scratch (%d params).", utils.count_params(state.params))
        return state

    state = checkpoints.restore_or_init(manager, abstract, init, tx)
    state = jax.device_put(state, state_sharding)
    first_step = int(state.step)
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.training.batch_size = tr.batch_size
    train_ds, _, _ = datasets.get_dataset(
        data_config,
        uniform_dequantization=config.data.uniform_dequantization,
        start_step=first_step,
    )
    scaler = datasets.get_data_scaler(config)
    # One optimizer step per call: a leading steps axis of 1.
    batches = (
        devices.to_global((scaler(b["image"])[None], b["label"][None]), batch_sharding)
        for b in train_ds
    )
    step_fn = steps.make_train_step(
        get_classifier_loss_fn(sde, classifier, eps),
        tx,
        tr.ema_rate,
        base_key,
        state_sharding,
        batch_sharding,
        has_aux=True,
    )
    writer = utils.MetricWriter(workdir, tensorboard=False)
    state = loop.run(
        state,
        step_fn,
        batches,
        schedule,
        first_step=first_step,
        manager=manager,
        writer=writer,
        nonfinite_hint="Lower --classifier.optim.lr or set a smaller --classifier.optim.grad_clip.",
        desc="classifier",
    )
    manager.close()
    writer.close()
    return state
