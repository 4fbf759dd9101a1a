"""Training the offline feature extractor (`models/feature_extractor.py`) and its command line.

    python -m evaluation --train_extractor --config configs/... --workdir DIR [--steps 500]

The extractor is a small CNN classifier fitted by cross-entropy on labelled training images;
`evaluation.compute_offline_metrics` reports the Frechet and kernel distances of its penultimate
features as `fd_<name>` / `kid_<name>` when no Inception weights are available.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from absl import logging
from jax import numpy as jnp

import datasets
import utils
from models import feature_extractor
from training import loop


def _make_train_step(module, tx):
    def loss_fn(params, images, labels):
        logits, _ = module.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return train_step


def _batches(images, labels, batch_size: int, seed: int):
    """Minibatches drawn uniformly with replacement by a host generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.integers(0, len(images), size=batch_size)
        yield feature_extractor.scale_uint8(images[idx]), labels[idx]


def train_feature_extractor(
    images,
    labels,
    num_classes: int,
    workdir: str,
    steps: int = 500,
    batch_size: int = 128,
    seed: int = 0,
    name: str = "cnn",
    learning_rate: float = 1e-3,
    eval_images=None,
    eval_labels=None,
) -> feature_extractor.OfflineExtractor:
    """Trains the offline feature extractor by cross-entropy and saves it to `workdir`.

    Args:
      images: uint8 training images [N, H, W, C].
      labels: Integer labels [N] in [0, num_classes).
      num_classes: Number of classes.
      workdir: Directory for `params.msgpack` and `extractor.json` (created if missing).
      steps: Adam steps.
      batch_size: Minibatch size; batches are drawn uniformly with replacement.
      seed: Seed of the parameter init and of the batch draws.
      name: Metric suffix (`fd_<name>`, `kid_<name>`).
      learning_rate: Adam learning rate.
      eval_images: Optional held-out uint8 images; their accuracy is logged and saved.
      eval_labels: Labels of `eval_images`.

    Returns:
      The trained extractor (the same as `feature_extractor.load(workdir)` returns).
    """
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"Expected uint8 images [N,H,W,C] and labels [N]; got {images.shape}.")
    module = feature_extractor.FeatureExtractor(num_classes=num_classes)
    dummy = jnp.zeros((1, *images.shape[1:]), jnp.float32)
    params = module.init(jax.random.key(seed), dummy)["params"]
    tx = optax.adam(learning_rate)
    # No checkpoints: a few hundred steps take seconds to a minute.
    schedule = loop.Schedule(
        n_iters=steps, log_freq=100, snapshot_freq=steps, preemption_freq=steps
    )
    params, _ = loop.run(
        (params, tx.init(params)),
        _make_train_step(module, tx),
        _batches(images, labels, batch_size, seed),
        schedule,
        first_step=0,
        nonfinite_hint="Lower --learning_rate.",
        desc="feature extractor",
    )
    info = {
        "name": name,
        "num_classes": num_classes,
        "channels": list(module.channels),
        "feature_dim": module.feature_dim,
        "image_shape": list(images.shape[1:]),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "learning_rate": learning_rate,
    }
    extractor = feature_extractor.OfflineExtractor(name, module, params, images.shape[1:], info)
    if eval_images is not None:
        extractor.info["eval_accuracy"] = extractor.accuracy(eval_images, eval_labels)
        logging.info("feature extractor eval accuracy %.4f", extractor.info["eval_accuracy"])
    feature_extractor.save(extractor, workdir)
    return extractor


def labelled_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """Collects uint8 images [N, H, W, C] and labels [N] from an iterable of batch dicts."""
    images, labels = [], []
    for batch in ds:
        image = np.asarray(batch["image"])
        images.append(utils.to_uint8(image.reshape(-1, *image.shape[-3:])))
        labels.append(np.asarray(batch["label"]).reshape(-1))
    return np.concatenate(images), np.concatenate(labels)


def train_from_config(config, workdir: str, steps: int, batch_size: int, seed: int):
    """Trains on the labelled train split of `datasets.get_dataset(config)`; reports accuracy
    on the eval split."""
    train_ds, eval_ds = datasets.get_dataset(config, evaluation=True)[:2]
    images, labels = labelled_arrays(train_ds)
    eval_images, eval_labels = labelled_arrays(eval_ds)
    num_classes = int(max(labels.max(), eval_labels.max())) + 1
    logging.info("training feature extractor on %d images, %d classes", len(images), num_classes)
    return train_feature_extractor(
        images,
        labels,
        num_classes,
        workdir,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        name=f"{config.data.dataset.lower()}_cnn",
        eval_images=eval_images,
        eval_labels=eval_labels,
    )


def cli() -> None:
    """`python -m evaluation --train_extractor --config CFG --workdir DIR [--steps N]`."""
    from absl import app, flags  # flags are defined only when this command runs
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Dataset configuration.", lock_config=True)
    flags.DEFINE_bool("train_extractor", False, "Train the offline feature extractor.")
    flags.DEFINE_string("workdir", None, "Directory for the trained extractor.")
    flags.DEFINE_integer("steps", 500, "Training steps.")
    flags.DEFINE_integer("batch_size", 128, "Training batch size.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        del argv
        utils.setup_jax_runtime()
        fl = flags.FLAGS
        if not fl.train_extractor:
            raise app.UsageError("Nothing to do: pass --train_extractor.")
        utils.quiet_library_logs()
        extractor = train_from_config(fl.config, fl.workdir, fl.steps, fl.batch_size, fl.seed)
        logging.info("saved %s to %s (%s)", extractor.name, fl.workdir, extractor.info)

    # TensorFlow (imported by `evaluation`) probes CUDA when it first lists devices; done here,
    # before absl starts the app, its start-up notices are filtered (without it, one "failed
    # call to cuInit" line on machines without a GPU).
    utils.hide_gpus_from_tf()
    app.run(main)
