"""Noise-conditional classifier training and the controllable-generation command line.

The math (class-conditional sampling, inpainting, colorization) is `controllable_generation.py`;
this module trains the classifier `p_t(y | x)` it needs and runs the samplers on a trained
score model (`python controllable_generation.py --mode ...`, see that module's docstring).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from controllable_generation import (
    get_classifier_grad_fn,
    get_logit_fn,
    get_pc_colorizer,
    get_pc_conditional_sampler,
    get_pc_inpainter,
    noise_level,
)
from sde_lib import batch_bcast

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
    """`run_lib.restore_ema_params`, logged and placed on one device."""
    import run_lib

    params, step = run_lib.restore_ema_params(
        config, workdir, model, what=what, hint=hint, tx=tx, abstract=abstract
    )
    logging.info("Restored %s checkpoint step %d from %s.", what, step, workdir)
    # One device: the CLI batches are small and need not divide the device count.
    return jax.device_put(params, jax.local_devices()[0])


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


def define_flags():
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
