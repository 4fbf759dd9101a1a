"""The controllable-generation command line (`python controllable_generation.py --mode ...`).

    python controllable_generation.py --config CFG --workdir W --mode train_classifier
    python controllable_generation.py --config CFG --workdir W --mode conditional --labels 0,1,2
    python controllable_generation.py --config CFG --workdir W --mode inpaint --mask half
    python controllable_generation.py --config CFG --workdir W --mode colorize --split test

writes `W/controllable/<mode>.png` (rows: input | mask | result) and `<mode>.npz` (uint8).
The classifier lives in `--classifier_workdir` (default `W/classifier`); its hyperparameters are
`experiments.classifier.get_classifier_config()`, overridable as `--classifier.model.depth=16`.
The samplers are `samplers/controllable.py` (math only).
"""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image

import datasets
import fileio
import utils
from experiments import classifier as classifier_lib
from models import utils as mutils
from samplers.controllable import (
    get_classifier_grad_fn,
    get_logit_fn,
    get_pc_colorizer,
    get_pc_conditional_sampler,
    get_pc_inpainter,
)
from training import checkpoints, devices, score_model

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
        if not fileio.isdir(image_folder):
            raise FileNotFoundError(f"--image_folder {image_folder!r} is not a directory")
        files = [f for f in fileio.listdir(image_folder) if f.lower().endswith(_IMAGE_EXTENSIONS)]
        if len(files) < num:
            raise ValueError(
                f"{image_folder} has {len(files)} images {_IMAGE_EXTENSIONS}, need {num}"
            )
        images = []
        for name in files[:num]:
            image = Image.open(
                io.BytesIO(fileio.read_bytes(fileio.join(image_folder, name)))
            ).convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                raise ValueError(
                    f"{name} is {image.size[0]}x{image.size[1]} but config.data.image_size={size}: "
                    "resize the images or set --config.data.image_size"
                )
            images.append(np.asarray(image, np.float32).reshape(size, size, channels) / 255.0)
        return np.stack(images)
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; valid: ['test', 'train']")
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.eval.batch_size = num
    train_ds, eval_ds, _ = datasets.get_dataset(data_config, evaluation=True)
    batch = next(iter(train_ds if split == "train" else eval_ds), None)
    if batch is None:
        raise ValueError(f"The {split} split has fewer than --num={num} images")
    # Multi-host: each host reads its block of the batch; every host gets all `num` images.
    return devices.allgather_host(np.asarray(batch["image"], np.float32))


def _on_one_device(params):
    # One device: the CLI batches are small and need not divide the device count. Multi-host:
    # every process runs the same computation on its first device (from its local copy of the
    # replicated params), so every host has the same images; process 0 writes them.
    def local(a):
        a = a.addressable_data(0) if isinstance(a, jax.Array) else a
        return jax.device_put(a, jax.local_devices()[0])

    return jax.tree.map(local, params)


def _load_classifier_config(classifier_workdir: str, default):
    """The config the classifier was trained with (`classifier_config.json`), else `default`."""
    path = fileio.join(classifier_workdir, classifier_lib.CONFIG_FILE)
    if not fileio.exists(path):
        return default
    return ml_collections.ConfigDict(json.loads(fileio.read_text(path)))


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
    path = fileio.join(out_dir, f"{mode}.png")
    if not utils.is_main_process():
        return path
    rows = [utils.to_uint8(r) for r in rows]
    grid = utils.image_grid(np.concatenate(rows), nrow=len(rows[0]))
    utils.save_png(grid, path)
    fileio.save_npz(
        fileio.join(out_dir, f"{mode}.npz"),
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
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; valid modes: {MODES}")
    utils.quiet_library_logs()
    workdir = fileio.absolute(workdir)
    classifier_workdir = classifier_workdir or fileio.join(workdir, "classifier")
    classifier_config = classifier_config or classifier_lib.get_classifier_config()
    if mode == "train_classifier":
        classifier_lib.train_classifier(config, classifier_workdir, classifier_config)
        return None
    if mode == "inpaint" and mask not in MASKS:
        raise ValueError(f"Unknown mask {mask!r}; valid masks: {sorted(MASKS)}")
    if mode == "colorize" and config.data.num_channels != 3:
        raise ValueError(
            f"colorize needs RGB data; config.data.num_channels={config.data.num_channels}"
        )
    sde, eps = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    params, step = score_model.restore_score_params(config, workdir, model)
    logging.info("Restored score-model checkpoint step %d from %s.", step, workdir)
    params = _on_one_device(params)
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
    out_dir = fileio.join(workdir, "controllable")
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
    classifier, tx, abstract, _ = classifier_lib.classifier_setup(config, cfg)
    cls_params, step = checkpoints.restore_ema_params(
        classifier_workdir,
        abstract,
        snapshot_freq=cfg.training.snapshot_freq,
        tx=tx,
        what="classifier",
        hint="train one first: --mode train_classifier",
    )
    logging.info("Restored classifier checkpoint step %d from %s.", step, classifier_workdir)
    cls_params = _on_one_device(cls_params)
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
    utils.setup_jax_runtime()
    f = flags.FLAGS
    if f.distributed or f.coordinator_address:  # multi-host, as main.py
        jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
    utils.quiet_library_logs()
    utils.hide_gpus_from_tf()  # TensorFlow starts here, its start-up notices filtered
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
    """Defines the command's flags (only when it runs, so importing this module adds none)."""
    config_flags.DEFINE_config_file("config", None, "Score-model configuration.", lock_config=True)
    config_flags.DEFINE_config_dict(
        "classifier", classifier_lib.get_classifier_config(), "Classifier settings."
    )
    flags.DEFINE_string("workdir", None, "Work directory of the trained score model.")
    flags.DEFINE_enum("mode", None, MODES, "What to run.")
    flags.DEFINE_string("classifier_workdir", None, "Classifier directory (default W/classifier).")
    flags.DEFINE_string("labels", None, "Comma-separated class labels (conditional).")
    flags.DEFINE_string("mask", "half", f"Inpainting mask: {', '.join(sorted(MASKS))}.")
    flags.DEFINE_string("image_folder", None, "Folder of input images (else --split).")
    flags.DEFINE_string("split", "test", "Dataset split of the inputs: test or train.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's id (multi-host).")
    flags.DEFINE_integer("num", 16, "Number of images / samples.")
    flags.mark_flags_as_required(["config", "workdir", "mode"])
