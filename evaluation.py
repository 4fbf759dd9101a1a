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

Offline path (no Inception weights needed): `compute_offline_metrics` takes a features function
(the small CNN of `models/feature_extractor.py`, trained on labelled training images by
`experiments/extractor.py`) and reports the Frechet and kernel distances of the features as
`fd_<name>` / `kid_<name>`. Those are not FIDs and are only comparable between runs that use the
same saved extractor. This module takes images and features; it never builds a network or reads
a dataset.

TensorFlow only runs the Inception network and TF-GAN's estimators. `get_inception_model` hides
the GPUs from it first (`utils.hide_gpus_from_tf`), as the original `main.py` does, so that
TensorFlow does not take accelerator memory that JAX needs; on a GPU host the Inception network
therefore runs on the CPU, as in the original.

Train an extractor from the command line (`experiments/extractor.py`):

    python -m evaluation --train_extractor --config configs/... --workdir DIR [--steps 500]
"""

import contextlib
import functools
import importlib
import importlib.util
import os
import pathlib
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
from absl import logging

import fileio
import utils

with utils.filtered_native_stderr():  # TensorFlow's start-up notices (CUDA probes, oneDNN)
    import tensorflow as tf
    import tensorflow_hub as tfhub

INCEPTION_TFHUB = "https://tfhub.dev/tensorflow/tfgan/eval/inception/1"
INCEPTION_V3 = "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/4"
INCEPTION_OUTPUT = "logits"
INCEPTION_FINAL_POOL = "pool_3"
INCEPTION_DEFAULT_IMAGE_SIZE = 299

# Where the original looks for dataset statistics, relative to the working directory.
STATS_DIR = os.path.join("assets", "stats")
_REPO_ROOT = pathlib.Path(__file__).resolve().parent


@contextlib.contextmanager
def _stand_in_packages(names_and_paths):
    """Temporarily registers empty packages (skipping their `__init__`), then restores
    `sys.modules` exactly: importing through them leaves nothing global behind."""
    before = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "tensorflow_gan"}
    for name, path in names_and_paths:
        stand_in = types.ModuleType(name)
        stand_in.__path__ = [str(path)]
        sys.modules[name] = stand_in
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "tensorflow_gan"]:
            del sys.modules[k]
        sys.modules.update(before)


@functools.cache
def tfgan_eval() -> types.ModuleType:
    """Returns TF-GAN's `eval` package (FID / IS / KID and `run_classifier_fn`).

    `import tensorflow_gan` fails on TF >= 2.16 because its `__init__` imports the estimator code,
    which needs the removed `tf.estimator`. The `eval` subpackage itself only needs TF, TFP and
    TF-Hub, so it is imported under stand-in parent packages that skip those `__init__` files;
    `sys.modules` is restored afterwards, so other code sees the installed package unchanged.
    """
    if "tensorflow_gan" in sys.modules and hasattr(sys.modules["tensorflow_gan"], "eval"):
        return sys.modules["tensorflow_gan"].eval  # imported normally (TF < 2.16)
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec("tensorflow_gan")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow_gan is not installed; it provides the FID/IS/KID estimators.")
    package_dir = pathlib.Path(list(spec.submodule_search_locations)[0])
    parents = (("tensorflow_gan", package_dir), ("tensorflow_gan.python", package_dir / "python"))
    with _stand_in_packages(parents):
        return importlib.import_module("tensorflow_gan.python.eval")


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
    utils.hide_gpus_from_tf()
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
    return tfgan_eval().run_classifier_fn(
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


def default_stats_filename(config) -> str | None:
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
        filename = default_stats_filename(config)
        if filename is None:
            # The original raises here too (FFHQ, CelebAHQ, ...).
            raise ValueError(
                f"No default FID statistics file for dataset {config.data.dataset!r}; set "
                "config.eval.stats_path to an .npz file with `pool_3` activations."
            )
        candidates = [os.path.join(STATS_DIR, filename), str(_REPO_ROOT / STATS_DIR / filename)]
        candidates = list(dict.fromkeys(candidates))
    for path in candidates:
        if fileio.exists(path):
            stats = fileio.load_npz(path)
            if INCEPTION_FINAL_POOL not in stats:
                raise KeyError(f"{path} has no {INCEPTION_FINAL_POOL!r} array ({sorted(stats)}).")
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
    fid = tfgan_eval().frechet_classifier_distance_from_activations(
        tf.convert_to_tensor(data_pools, tf.float64), tf.convert_to_tensor(sample_pools, tf.float64)
    )
    return float(fid)


def compute_inception_score(logits) -> float:
    """Inception score exp(E_x KL(p(y|x) || p(y))) of logits [N, C] as one split (TF-GAN)."""
    score = tfgan_eval().classifier_score_from_logits(tf.convert_to_tensor(logits, tf.float64))
    return float(score)


def compute_kid(data_pools, sample_pools) -> float:
    """Kernel Inception distance of two activation sets [N, F] (TF-GAN's estimator).

    The unbiased MMD^2 with kernel k(x, y) = (x.y / F + 1)^3, averaged over blocks of at most
    1024 rows of each set (see `kernel_distance`). The original feeds float32 activations and
    TF-GAN then computes in float32; we compute in float64, which changes only rounding.
    """
    kid = tfgan_eval().kernel_classifier_distance_from_activations(
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
# Offline feature space (models/feature_extractor.py, trained by experiments/extractor.py)
# ----------------------------------------------------------------------------------------------


def compute_offline_metrics(
    features_fn: Callable[[np.ndarray], np.ndarray], data_images, sample_images, name: str
) -> dict[str, float]:
    """Frechet and kernel distances between data and samples in an offline feature space.

    Args:
      features_fn: uint8 images [N, H, W, C] -> features [N, F], e.g. the `features` method of
        `models.feature_extractor.load(path)`.
      data_images: uint8 reference images [N, H, W, C].
      sample_images: uint8 samples [M, H, W, C] (see `quantize`).
      name: metric suffix (`fd_<name>`, `kid_<name>`).

    Returns:
      `{'fd_<name>': ..., 'kid_<name>': ...}`, computed with `frechet_distance` and
      `kernel_distance` in float64.
    """
    data_features = features_fn(data_images)
    sample_features = features_fn(sample_images)
    fd = frechet_distance(
        *activation_statistics(data_features), *activation_statistics(sample_features)
    )
    kid = kernel_distance(data_features, sample_features)
    return {f"fd_{name}": fd, f"kid_{name}": kid}


if __name__ == "__main__":
    # The command line `python -m evaluation --train_extractor ...` lives with the experiments.
    from experiments import extractor

    extractor.cli()
