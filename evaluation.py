"""Sample-quality metrics: Inception features with FID / IS / KID, and an offline feature space.

Inception path (the paper's numbers, as in yang-song/score_sde `evaluation.py` and
`run_lib.evaluate`):

1. Samples in [0, 1] are quantised to uint8 by flooring (`quantize`).
2. `run_inception_distributed` feeds them to the TF-GAN Inception module from TF-Hub,
   mapped to [-1, 1], and returns its `pool_3` [N, 2048] and `logits` [N, 1008] outputs.
   At 256 px and above the original uses InceptionV3 `feature_vector/4` (inputs in [0, 1],
   no logits, IS reported as -1).
3. FID and KID compare the sample `pool_3` activations with the raw `pool_3` activations of
   the 50k training images (`load_dataset_stats`). IS uses the sample logits as a single split.
   All three are TF-GAN's estimators (`compute_fid`, `compute_kid`, `compute_inception_score`).

Offline path (no Inception weights needed): `train_feature_extractor` fits the small CNN of
`models/feature_extractor.py` on labelled training images, and `compute_offline_metrics` reports
the Frechet and kernel distances of its penultimate features as `fd_<name>` / `kid_<name>`.
Those are not FIDs and are only comparable between runs that use the same saved extractor.

TensorFlow only runs the Inception network and TF-GAN's estimators. GPUs are hidden from it on
import, as the original `main.py` does, so that TensorFlow does not take accelerator memory that
JAX needs; on a GPU host the Inception network therefore runs on the CPU, as in the original.

Train an extractor from the command line (data come from `datasets.get_dataset`):

    python -m evaluation --train_extractor --config configs/... --workdir DIR [--steps 500]
"""

import functools
import importlib
import importlib.util
import json
import os
import pathlib
import sys
import types
from typing import Any

import jax
import numpy as np
import optax
import scipy.linalg
import tensorflow as tf
import tensorflow_hub as tfhub
from absl import logging
from flax import serialization
from jax import numpy as jnp

import utils
from models import feature_extractor

INCEPTION_TFHUB = "https://tfhub.dev/tensorflow/tfgan/eval/inception/1"
INCEPTION_V3 = "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/4"
INCEPTION_OUTPUT = "logits"
INCEPTION_FINAL_POOL = "pool_3"
INCEPTION_DEFAULT_IMAGE_SIZE = 299

# Where the original looks for dataset statistics, relative to the working directory.
STATS_DIR = os.path.join("assets", "stats")
_REPO_ROOT = pathlib.Path(__file__).resolve().parent

# Files written by `train_feature_extractor` into its directory.
EXTRACTOR_PARAMS = "params.msgpack"
EXTRACTOR_CONFIG = "extractor.json"


def _hide_gpus_from_tf() -> None:
    """Hides GPUs from TensorFlow (original `main.py`); only possible before TF has started."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        logging.warning("TensorFlow was initialised before evaluation.py; GPUs stay visible to it.")


_hide_gpus_from_tf()


@functools.cache
def _tfgan_eval() -> types.ModuleType:
    """Returns the `tensorflow_gan.eval` module, importable also where `tensorflow_gan` is not.

    `import tensorflow_gan` fails on TF >= 2.16 because its `__init__` imports the estimator code,
    which needs the removed `tf.estimator`. The `eval` subpackage itself only needs TF, TFP and
    TF-Hub, so we fall back to importing it under stand-in parent packages that skip those
    `__init__` files. The stand-in `tensorflow_gan` gets an `eval` attribute, so
    `tfgan.eval.<fn>` keeps working for code that imports `tensorflow_gan` afterwards.
    """
    try:
        import tensorflow_gan as tfgan

        return tfgan.eval
    except (AttributeError, ImportError) as e:
        logging.info("`import tensorflow_gan` failed (%s); importing tensorflow_gan.eval alone.", e)
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec("tensorflow_gan")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow_gan is not installed; it provides the FID/IS/KID estimators.")
    package_dir = pathlib.Path(list(spec.submodule_search_locations)[0])
    for name, path in (
        ("tensorflow_gan", package_dir),
        ("tensorflow_gan.python", package_dir / "python"),
    ):
        stand_in = types.ModuleType(name)
        stand_in.__path__ = [str(path)]
        sys.modules[name] = stand_in
    tfgan_eval = importlib.import_module("tensorflow_gan.python.eval")
    sys.modules["tensorflow_gan"].eval = tfgan_eval
    return tfgan_eval


# ----------------------------------------------------------------------------------------------
# Inception network
# ----------------------------------------------------------------------------------------------


def get_inception_model(inceptionv3: bool = False, path: str = "") -> Any:
    """Loads the TF-Hub Inception module used for FID / IS / KID.

    Args:
      inceptionv3: Load InceptionV3 `feature_vector/4` (for >= 256 px images) instead of the
        TF-GAN Inception module.
      path: Local directory of the module (a SavedModel, e.g. the unpacked TF-Hub download); ''
        loads it from the TF-Hub URL (needs network access, cached in `TFHUB_CACHE_DIR`).

    Returns:
      The loaded module; see `run_inception_jit` for how it is called.
    """
    if path and not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"Inception module directory {path!r} does not exist (config.eval.inception_path). "
            f"Unpack {INCEPTION_V3 if inceptionv3 else INCEPTION_TFHUB} there, or set the "
            "path to '' to download it from TF-Hub."
        )
    handle = path or (INCEPTION_V3 if inceptionv3 else INCEPTION_TFHUB)
    logging.info("Loading Inception module from %s", handle)
    return tfhub.load(handle)


def _call_model(model: Any, images: tf.Tensor) -> Any:
    """Calls a loaded module: its `__call__` if it has one, else its default signature."""
    if callable(model):
        return model(images)
    # TF1 Hub-format modules restored by TF2 expose only signatures taking keyword tensors.
    signature = model.signatures.get("default") or model.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    return signature(**{input_name: images})


def _get_classifier_fn(inception_model: Any, inceptionv3: bool):
    """Returns `images -> {'pool_3': [B, F], 'logits': [B, 1008]}` (no logits for InceptionV3).

    Like the original `classifier_fn_from_tfhub`, it reuses one loaded module instead of loading
    it on every call. It flattens with `tf.reshape` because TF-GAN's `tf.compat.v1.layers.flatten`
    needs legacy Keras on TF >= 2.16.
    """
    fields = (INCEPTION_FINAL_POOL,) if inceptionv3 else (INCEPTION_FINAL_POOL, INCEPTION_OUTPUT)

    def classifier_fn(images):
        output = _call_model(inception_model, images)
        if not isinstance(output, dict):  # InceptionV3 feature_vector returns pool features only.
            output = {INCEPTION_FINAL_POOL: output}
        return {k: tf.reshape(output[k], [tf.shape(output[k])[0], -1]) for k in fields}

    return classifier_fn


@tf.function
def _run_inception(inputs, inception_model, num_batches, inceptionv3):
    """Graph-mode Inception forward pass on uint8 images (original `run_inception_jit`)."""
    if inceptionv3:
        images = tf.cast(inputs, tf.float32) / 255.0
        dtypes = {INCEPTION_FINAL_POOL: tf.float32}
    else:
        # The TF-GAN module expects [-1, 1]; the original never resizes (the module does).
        images = (tf.cast(inputs, tf.float32) - 127.5) / 127.5
        dtypes = {INCEPTION_FINAL_POOL: tf.float32, INCEPTION_OUTPUT: tf.float32}
    return _tfgan_eval().run_classifier_fn(
        images,
        num_batches=num_batches,
        classifier_fn=_get_classifier_fn(inception_model, inceptionv3),
        dtypes=dtypes,
    )


def _check_uint8(inputs) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.dtype != np.uint8 or inputs.ndim != 4:
        raise ValueError(
            f"Inception inputs must be uint8 NHWC images in [0, 255] (see `quantize`); got "
            f"{inputs.dtype} with shape {inputs.shape}."
        )
    return inputs


def _to_numpy(outputs: dict, inceptionv3: bool) -> dict[str, np.ndarray | None]:
    logits = None if inceptionv3 else outputs[INCEPTION_OUTPUT].numpy()
    return {INCEPTION_FINAL_POOL: outputs[INCEPTION_FINAL_POOL].numpy(), INCEPTION_OUTPUT: logits}


def run_inception_jit(
    inputs, inception_model: Any, num_batches: int = 1, inceptionv3: bool = False
) -> dict[str, np.ndarray | None]:
    """Runs the Inception network on uint8 images.

    Args:
      inputs: uint8 images [N, H, W, 3] in [0, 255].
      inception_model: Module from `get_inception_model`.
      num_batches: Number of sequential chunks (must divide N), to bound memory.
      inceptionv3: Whether `inception_model` is InceptionV3 `feature_vector/4`.

    Returns:
      `{'pool_3': [N, 2048], 'logits': [N, 1008]}` as float32 NumPy arrays; `logits` is None for
      InceptionV3.
    """
    inputs = tf.convert_to_tensor(_check_uint8(inputs))
    return _to_numpy(_run_inception(inputs, inception_model, num_batches, inceptionv3), inceptionv3)


def run_inception_distributed(
    inputs, inception_model: Any, num_batches: int = 1, inceptionv3: bool = False
) -> dict[str, np.ndarray | None]:
    """`run_inception_jit` with the batch split over the accelerators visible to TensorFlow.

    The original splits over `jax.local_device_count()` shards placed on `/TPU:i` or `/GPU:i`.
    We split over the TPU/GPU devices TensorFlow actually sees; with none (CPU hosts, and GPU
    hosts since the GPUs are hidden from TensorFlow) the whole batch runs on the CPU at once.

    Args:
      inputs: uint8 images [N, H, W, 3] in [0, 255].
      inception_model: Module from `get_inception_model`.
      num_batches: Sequential chunks per shard (must divide the shard size).
      inceptionv3: Whether `inception_model` is InceptionV3 `feature_vector/4`.

    Returns:
      The same dictionary as `run_inception_jit`.
    """
    inputs = _check_uint8(inputs)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("TPU", "GPU")]
    if not devices:
        return run_inception_jit(inputs, inception_model, num_batches, inceptionv3)
    shards = []
    for device, shard in zip(devices, np.array_split(inputs, len(devices))):
        with tf.device(device):
            outputs = _run_inception(tf.constant(shard), inception_model, num_batches, inceptionv3)
        shards.append(_to_numpy(outputs, inceptionv3))
    logits = None if inceptionv3 else np.concatenate([s[INCEPTION_OUTPUT] for s in shards])
    pool_3 = np.concatenate([s[INCEPTION_FINAL_POOL] for s in shards])
    return {INCEPTION_FINAL_POOL: pool_3, INCEPTION_OUTPUT: logits}


def quantize(samples) -> np.ndarray:
    """Maps samples in [0, 1] to uint8 by flooring `x * 255`, exactly as the original does.

    Flooring (not rounding) biases pixels down by half a level on average; we keep it because
    the paper's FIDs were computed this way. The one implementation is `utils.to_uint8`, which
    the training and evaluation loops use.
    """
    return utils.to_uint8(samples)


# ----------------------------------------------------------------------------------------------
# Dataset statistics
# ----------------------------------------------------------------------------------------------


def _default_stats_filename(config) -> str | None:
    """The original's stats file name for `config.data`, or None where it has none."""
    dataset = config.data.dataset
    if dataset == "CIFAR10":
        return "cifar10_stats.npz"
    if dataset == "CELEBA":
        return "celeba_stats.npz"
    if dataset == "LSUN":
        return f"lsun_{config.data.category}_{config.data.image_size}_stats.npz"
    return None


def load_dataset_stats(config) -> np.ndarray:
    """Loads the Inception `pool_3` activations of the training images, for FID and KID.

    The file is `config.eval.stats_path` if set; otherwise the original's
    `assets/stats/<name>_stats.npz`, looked up relative to the working directory and then to the
    repository root. It holds raw activations [N, 2048] under the key `pool_3`, not (mu, Sigma).

    Raises:
      FileNotFoundError: If no file exists; the message lists the paths tried.
      ValueError: If the dataset has no default file and `config.eval.stats_path` is unset.
      KeyError: If the file has no `pool_3` array.
    """
    stats_path = config.eval.get("stats_path", "")
    if stats_path:
        candidates = [stats_path]
    else:
        filename = _default_stats_filename(config)
        if filename is None:
            # The original raises here too (FFHQ, CelebAHQ, ...).
            raise ValueError(
                f"No default FID statistics file for dataset {config.data.dataset!r}; set "
                "config.eval.stats_path to an .npz file with `pool_3` activations."
            )
        candidates = [os.path.join(STATS_DIR, filename), str(_REPO_ROOT / STATS_DIR / filename)]
        candidates = list(dict.fromkeys(candidates))
    for path in candidates:
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f, np.load(f) as stats:
                if INCEPTION_FINAL_POOL not in stats:
                    raise KeyError(f"{path} has no {INCEPTION_FINAL_POOL!r} array ({stats.files}).")
                logging.info("Loaded dataset statistics from %s", path)
                return stats[INCEPTION_FINAL_POOL]
    raise FileNotFoundError(
        f"FID statistics not found; tried {', '.join(candidates)}. Create them with "
        "`python main.py --mode stats --config ... --workdir ...` or set config.eval.stats_path."
    )


# ----------------------------------------------------------------------------------------------
# TF-GAN metrics (the paper's numbers)
# ----------------------------------------------------------------------------------------------


def compute_fid(data_pools, sample_pools) -> float:
    """Frechet Inception distance between two activation sets [N, F] (TF-GAN's estimator).

    TF-GAN computes it in float64 from the means and unbiased covariances, taking
    tr sqrt(S1 S2) as tr sqrt(sqrt(S1) S2 sqrt(S1)) with SVD square roots.
    """
    fid = _tfgan_eval().frechet_classifier_distance_from_activations(
        tf.convert_to_tensor(data_pools, tf.float64), tf.convert_to_tensor(sample_pools, tf.float64)
    )
    return float(fid)


def compute_inception_score(logits) -> float:
    """Inception score exp(E_x KL(p(y|x) || p(y))) of logits [N, C] as one split (TF-GAN)."""
    score = _tfgan_eval().classifier_score_from_logits(tf.convert_to_tensor(logits, tf.float64))
    return float(score)


def compute_kid(data_pools, sample_pools) -> float:
    """Kernel Inception distance of two activation sets [N, F] (TF-GAN's estimator).

    The unbiased MMD^2 with kernel k(x, y) = (x.y / F + 1)^3, averaged over blocks of at most
    1024 rows of each set (see `kernel_distance`). The original feeds float32 activations and
    TF-GAN then computes in float32; we compute in float64, which changes only rounding.
    """
    kid = _tfgan_eval().kernel_classifier_distance_from_activations(
        tf.convert_to_tensor(data_pools, tf.float64), tf.convert_to_tensor(sample_pools, tf.float64)
    )
    return float(kid)


# ----------------------------------------------------------------------------------------------
# NumPy references (also used for the offline features)
# ----------------------------------------------------------------------------------------------


def activation_statistics(activations) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] of activations [N, F], in float64."""
    activations = np.asarray(activations, np.float64)
    return activations.mean(axis=0), np.cov(activations, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) of two Gaussians.

    References:
      Dowson & Landau 1982; Heusel et al. 2017 (arXiv:1706.08500), Eq. (6).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = (
        np.atleast_2d(sigma1).astype(np.float64),
        np.atleast_2d(sigma2).astype(np.float64),
    )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product: regularise both covariances slightly (as pytorch-fid does).
        offset = 1e-6 * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # Round-off can leave a tiny imaginary part; the exact root of S1 S2 is real.
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _block_bounds(n: int, n_blocks: int) -> np.ndarray:
    """TF-GAN's split of n rows into n_blocks contiguous blocks; the larger ones come last."""
    size, n_plus_one = divmod(n, n_blocks)
    sizes = [size] * (n_blocks - n_plus_one) + [size + 1] * n_plus_one
    return np.concatenate([[0], np.cumsum(sizes)])


def kernel_distance(x, y, max_block_size: int = 1024) -> float:
    """NumPy version of TF-GAN's kernel (KID) estimator, in float64.

    Both sets are cut into the same number of contiguous blocks (none larger than
    `max_block_size`); on each pair of blocks the unbiased MMD^2 estimate
    mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)
    with k(x, y) = (x.y / F + 1)^3 is computed, and the estimates are averaged.

    References:
      Binkowski et al. 2018, "Demystifying MMD GANs" (arXiv:1801.01401), Eq. (3).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dim = x.shape[1]
    n_blocks = int(np.ceil(max(len(x), len(y)) / max_block_size))
    bounds_x, bounds_y = _block_bounds(len(x), n_blocks), _block_bounds(len(y), n_blocks)

    def kernel(a, b):
        return (a @ b.T / dim + 1.0) ** 3

    estimates = []
    for i in range(n_blocks):
        xb, yb = x[bounds_x[i] : bounds_x[i + 1]], y[bounds_y[i] : bounds_y[i + 1]]
        m, n = len(xb), len(yb)
        k_xx, k_yy = kernel(xb, xb), kernel(yb, yb)
        # Drop the diagonals for the unbiased within-set terms.
        within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        estimates.append(within_x + within_y - 2.0 * kernel(xb, yb).mean())
    return float(np.mean(estimates))


# ----------------------------------------------------------------------------------------------
# Offline feature extractor (models/feature_extractor.py)
# ----------------------------------------------------------------------------------------------


def _scale_uint8(images) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], the same input convention as the TF-GAN Inception."""
    return ((np.asarray(images, np.float32) - 127.5) / 127.5).astype(np.float32)


class OfflineExtractor:
    """A trained `FeatureExtractor` with its parameters; computes features of uint8 images.

    Attributes:
      name: Metric suffix, e.g. 'mnist_cnn' -> `fd_mnist_cnn`, `kid_mnist_cnn`.
      module: The Flax module.
      params: Its parameters.
      image_shape: (H, W, C) of the training images.
      info: The settings stored in `extractor.json`.
    """

    def __init__(self, name: str, module, params, image_shape, info: dict | None = None):
        self.name = name
        self.module = module
        self.params = params
        self.image_shape = tuple(image_shape)
        self.info = dict(info or {})
        self._apply = jax.jit(module.apply)

    def _outputs(self, images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"Extractor {self.name!r} takes uint8 images of shape [N, {self.image_shape}]; got "
                f"{images.dtype} {images.shape}."
            )
        logits, features = [], []
        for start in range(0, len(images), batch_size):
            batch = _scale_uint8(images[start : start + batch_size])
            n = len(batch)
            # Pad the last batch to a fixed size so the forward pass compiles once.
            batch = np.pad(batch, [(0, batch_size - n)] + [(0, 0)] * 3)
            batch_logits, batch_features = self._apply({"params": self.params}, batch)
            logits.append(np.asarray(batch_logits)[:n])
            features.append(np.asarray(batch_features)[:n])
        return np.concatenate(logits), np.concatenate(features)

    def features(self, images, batch_size: int = 256) -> np.ndarray:
        """Penultimate-layer features [N, F] (float32) of uint8 images [N, H, W, C]."""
        return self._outputs(images, batch_size)[1]

    def logits(self, images, batch_size: int = 256) -> np.ndarray:
        """Class logits [N, num_classes] of uint8 images [N, H, W, C]."""
        return self._outputs(images, batch_size)[0]

    def accuracy(self, images, labels, batch_size: int = 256) -> float:
        """Top-1 accuracy on uint8 images and integer labels."""
        predictions = self.logits(images, batch_size).argmax(axis=-1)
        return float(np.mean(predictions == np.asarray(labels)))


def _make_train_step(module, tx):
    def loss_fn(params, images, labels):
        logits, _ = module.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


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
) -> OfflineExtractor:
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
      The trained extractor (the same as `load_feature_extractor(workdir)` returns).
    """
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"Expected uint8 images [N,H,W,C] and labels [N]; got {images.shape}.")
    module = feature_extractor.FeatureExtractor(num_classes=num_classes)
    params = module.init(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.float32))[
        "params"
    ]
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)
    train_step = _make_train_step(module, tx)
    rng = np.random.default_rng(seed)  # Host-side batch draws.
    for step in range(steps):
        idx = rng.integers(0, len(images), size=batch_size)
        params, opt_state, loss = train_step(
            params, opt_state, _scale_uint8(images[idx]), labels[idx]
        )
        if step % 100 == 0 or step == steps - 1:
            logging.info("feature extractor step %d, loss %.4f", step, float(loss))

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
    extractor = OfflineExtractor(name, module, params, images.shape[1:], info)
    if eval_images is not None:
        extractor.info["eval_accuracy"] = extractor.accuracy(eval_images, eval_labels)
        logging.info("feature extractor eval accuracy %.4f", extractor.info["eval_accuracy"])
    save_feature_extractor(extractor, workdir)
    return extractor


def save_feature_extractor(extractor: OfflineExtractor, path: str) -> None:
    """Writes `params.msgpack` (flax serialization) and `extractor.json` into `path`."""
    tf.io.gfile.makedirs(path)
    with tf.io.gfile.GFile(os.path.join(path, EXTRACTOR_PARAMS), "wb") as f:
        f.write(serialization.to_bytes(extractor.params))
    with tf.io.gfile.GFile(os.path.join(path, EXTRACTOR_CONFIG), "w") as f:
        json.dump(extractor.info, f, indent=2)


def load_feature_extractor(path: str) -> OfflineExtractor:
    """Loads an extractor saved by `train_feature_extractor` from directory `path`."""
    config_file = os.path.join(path, EXTRACTOR_CONFIG)
    if not tf.io.gfile.exists(config_file):
        raise FileNotFoundError(
            f"No feature extractor at {path!r} ({EXTRACTOR_CONFIG} missing); train one with "
            "`python -m evaluation --train_extractor --config ... --workdir ...`."
        )
    with tf.io.gfile.GFile(config_file) as f:
        info = json.load(f)
    module = feature_extractor.FeatureExtractor(
        num_classes=info["num_classes"],
        channels=tuple(info["channels"]),
        feature_dim=info["feature_dim"],
    )
    # Restore into the structure of a fresh init, so a mismatched file fails loudly.
    dummy = jnp.zeros((1, *info["image_shape"]), jnp.float32)
    target = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    with tf.io.gfile.GFile(os.path.join(path, EXTRACTOR_PARAMS), "rb") as f:
        params = serialization.from_bytes(target, f.read())
    return OfflineExtractor(info["name"], module, params, info["image_shape"], info)


def compute_offline_metrics(
    extractor: OfflineExtractor, data_images, sample_images
) -> dict[str, float]:
    """Frechet and kernel distances between data and samples in the extractor's feature space.

    Args:
      extractor: From `load_feature_extractor` or `train_feature_extractor`.
      data_images: uint8 reference images [N, H, W, C].
      sample_images: uint8 samples [M, H, W, C] (see `quantize`).

    Returns:
      `{'fd_<name>': ..., 'kid_<name>': ...}`, computed with `frechet_distance` and
      `kernel_distance` in float64.
    """
    data_features = extractor.features(data_images)
    sample_features = extractor.features(sample_images)
    fd = frechet_distance(
        *activation_statistics(data_features), *activation_statistics(sample_features)
    )
    kid = kernel_distance(data_features, sample_features)
    return {f"fd_{extractor.name}": fd, f"kid_{extractor.name}": kid}


# ----------------------------------------------------------------------------------------------
# Command line: python -m evaluation --train_extractor --config CFG --workdir DIR
# ----------------------------------------------------------------------------------------------


def _labelled_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """Collects uint8 images [N, H, W, C] and labels [N] from an iterable of batch dicts."""
    images, labels = [], []
    for batch in ds:
        image = np.asarray(batch["image"])
        images.append(quantize(image.reshape(-1, *image.shape[-3:])))
        labels.append(np.asarray(batch["label"]).reshape(-1))
    return np.concatenate(images), np.concatenate(labels)


def _train_extractor_from_config(config, workdir: str, steps: int, batch_size: int, seed: int):
    """Loads the labelled train / eval splits with `datasets.get_dataset` and trains."""
    import datasets  # Lazy: the data pipeline is only needed by this command.

    train_ds, eval_ds = datasets.get_dataset(config, evaluation=True)[:2]
    images, labels = _labelled_arrays(train_ds)
    eval_images, eval_labels = _labelled_arrays(eval_ds)
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


def _cli() -> None:
    # Flags are defined here, not at import, so importing this module adds no flags to main.py.
    from absl import app, flags
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
        fl = flags.FLAGS
        if not fl.train_extractor:
            raise app.UsageError("Nothing to do: pass --train_extractor.")
        extractor = _train_extractor_from_config(
            fl.config, fl.workdir, fl.steps, fl.batch_size, fl.seed
        )
        logging.info("saved %s to %s (%s)", extractor.name, fl.workdir, extractor.info)

    app.run(main)


if __name__ == "__main__":
    _cli()
