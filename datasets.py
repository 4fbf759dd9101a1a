"""Input pipeline: training and evaluation datasets from a config, plus the data scalers.

Mirrors `datasets.py` of yang-song/score_sde: the same datasets, splits and preprocessing
(resize ops, random flip, uniform dequantisation), with three additions:

* **Offline sources** (`config.data.source`): besides 'tfds' and the FFHQ / CelebA-HQ
  'tfrecords', data can come from MNIST-style 'idx' files, the CIFAR-10 python or binary
  archive ('cifar_archive'), an 'image_folder' (`<path>/<split>/<class>/*.png|jpg`, or a tar of
  that tree) or an 'npz' file. These load the split into memory as uint8 and iterate with NumPy,
  so they suit datasets of CIFAR / MNIST / SVHN size. The loaders and their iterator live in
  `datasets_offline.py`; this file adds the resize op and the split names.
* **Deterministic order and exact resume.** The offline order is a pure function of
  (`config.seed`, split, epoch): every epoch is a fresh permutation of the split; global batch
  `g` is a slice of it, each host takes its contiguous block of that slice (host i: the i-th
  block, where `jax.make_array_from_process_local_data` places it) and flips and dequantisation
  noise come from a generator seeded by (seed, split, g), so the global batch does not depend on
  the number of hosts.
  `start_step=k` skips the first `k` training *items* (one item = one yielded `[*batch_dims]`
  batch, i.e. `additional_dim` steps when `additional_dim` is set), so a resumed run sees exactly
  the batches of an uninterrupted one. For 'tfds' / 'tfrecords' the tf.data pipeline is seeded
  (file order, shuffle buffer, stateless flips and noise keyed by the example counter,
  `options.deterministic = True`) and `start_step` is a `skip` before decoding; this is exact as
  long as tf.data itself is deterministic (same TF version and input files).
* **One clear error for missing or bad data**: `DatasetNotFoundError` says what was looked
  for, where, and how to get it; a truncated, corrupt or unusable offline file raises one
  `ValueError` naming the file and the fix. Nothing is downloaded unless the environment
  variable `SCORE_SDE_TFDS_DOWNLOAD=1` allows `tfds` to `download_and_prepare`.

Items are dicts of NumPy arrays: `image` float32 in [0, 1] (uniformly dequantised if asked),
shape `[*batch_dims, H, W, C]`, and `label` int32 `[*batch_dims]` (0 for unlabelled datasets).
The scaler to [-1, 1] is applied by the trainer, not here, as in the original. Also as the
original: both datasets use `eval.batch_size` when `evaluation` and `training.batch_size`
otherwise, and random flips (when `data.random_flip`) apply to both unless `evaluation`.
Grayscale MNIST / Fashion-MNIST keep C=1 and are resized 28 -> `data.image_size` by the same
antialiased bilinear resize as CIFAR-10.
"""

import dataclasses
import os
import re

import jax
import numpy as np

import datasets_offline
import utils

# Set to "1" to let get_dataset download and prepare a missing tfds dataset.
TFDS_DOWNLOAD_ENV = "SCORE_SDE_TFDS_DOWNLOAD"
# tf.data shuffle buffer, as the original (reduce it for large images).
SHUFFLE_BUFFER_SIZE = 10000

# Canonical dataset names, keyed by the lower-case name without '_' / '-'.
_CANONICAL = {
    "cifar10": "CIFAR10",
    "svhn": "SVHN",
    "celeba": "CELEBA",
    "lsun": "LSUN",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "ffhq": "FFHQ",
    "celebahq": "CelebAHQ",
}
# (train split, eval split) as in the original; FFHQ / CelebA-HQ evaluate on the train split.
_SPLITS = {
    "CIFAR10": ("train", "test"),
    "SVHN": ("train", "test"),
    "CELEBA": ("train", "validation"),
    "LSUN": ("train", "validation"),
    "MNIST": ("train", "test"),
    "FashionMNIST": ("train", "test"),
    "FFHQ": ("train", "train"),
    "CelebAHQ": ("train", "train"),
}
# Folder / key names accepted for the eval split of the offline sources, in order of preference.
_EVAL_SPLIT_ALIASES = ("test", "validation", "val", "valid")
# Defined with the offline loaders, which raise it too; the same class under the paper's name.
DatasetNotFoundError = datasets_offline.DatasetNotFoundError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What get_dataset built; replaces the original's tfds builder.

    Attributes:
      name: canonical dataset name ('CIFAR10', 'MNIST', ...).
      source: `config.data.source`.
      image_shape: (H, W, C) of the yielded images.
      num_train: examples in the train split (all hosts), or None when unknown (tfrecords).
      num_eval: examples in the eval split, or None when unknown.
      train_split: name of the train split.
      eval_split: name of the eval split.
      location: where the data was read from.
    """

    name: str
    source: str
    image_shape: tuple[int, int, int]
    num_train: int | None
    num_eval: int | None
    train_split: str
    eval_split: str
    location: str


def image_shape(config) -> tuple[int, int, int]:
    """`(H, W, C)` of one model-side image of `config.data`."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def get_data_scaler(config):
    """Data normalizer: [0, 1] -> [-1, 1] if `config.data.centered`, else the identity."""
    if config.data.centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config):
    """Inverse of `get_data_scaler`."""
    if config.data.centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


def canonical_dataset_name(name: str) -> str:
    """Maps e.g. 'cifar10', 'FASHION_MNIST', 'fashion-mnist' to the canonical name."""
    key = re.sub(r"[_\-\s]", "", name).lower()
    if key not in _CANONICAL:
        raise NotImplementedError(
            f"Dataset {name!r} not supported; choose one of {sorted(_CANONICAL.values())}."
        )
    return _CANONICAL[key]


# --------------------------------------------------------------------------------------------
# TensorFlow image ops (rank 3 HWC or rank 4 NHWC tensors), as the original.
# --------------------------------------------------------------------------------------------


def _tf():
    """TensorFlow, imported lazily with its GPUs hidden (`utils.hide_gpus_from_tf`)."""
    return utils.hide_gpus_from_tf()


def crop_resize(image, resolution):
    """Centre-square crop, bicubic antialiased resize to `resolution`, cast to uint8."""
    tf = _tf()
    h, w = tf.shape(image)[-3], tf.shape(image)[-2]
    crop = tf.minimum(h, w)
    image = image[..., (h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2, :]
    image = tf.image.resize(
        image, (resolution, resolution), antialias=True, method=tf.image.ResizeMethod.BICUBIC
    )
    # Departs from the original's tf.cast, which wraps bicubic overshoot around (256.3 -> 0,
    # -3 -> 253); saturate_cast clamps instead and is equal for in-range values.
    return tf.saturate_cast(image, tf.uint8)


def resize_small(image, resolution):
    """Antialiased bilinear resize so that the shorter side equals `resolution`."""
    tf = _tf()
    h = tf.cast(tf.shape(image)[-3], tf.float64)
    w = tf.cast(tf.shape(image)[-2], tf.float64)
    ratio = resolution / tf.minimum(h, w)
    # The original reads the static shape; the dynamic one also serves images of varying size.
    size = tf.cast(tf.round(tf.stack([h * ratio, w * ratio])), tf.int32)
    return tf.image.resize(image, size, antialias=True)


def central_crop(image, size):
    """Crops the central `size` x `size` square."""
    tf = _tf()
    top = (tf.shape(image)[-3] - size) // 2
    left = (tf.shape(image)[-2] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _get_resize_op(name: str, image_size: int):
    """Returns the original's `resize_op` for a dataset: uint8 tensor -> float32 in [0, 1]."""
    tf = _tf()

    def to_float(img):
        return tf.image.convert_image_dtype(img, tf.float32)

    if name == "CELEBA":
        return lambda img: resize_small(central_crop(to_float(img), 140), image_size)
    if name == "LSUN" and image_size == 128:
        return lambda img: central_crop(resize_small(to_float(img), image_size), image_size)
    if name == "LSUN":
        return lambda img: to_float(crop_resize(img, image_size))
    if name in ("FFHQ", "CelebAHQ"):
        # The original does not resize these (the tfrecords hold the target resolution); we only
        # resize when the stored size differs, instead of failing later on a shape mismatch.
        def resize_if_needed(img):
            img = to_float(img)
            same = tf.reduce_all(tf.shape(img)[-3:-1] == image_size)
            return tf.cond(
                same,
                lambda: img,
                lambda: tf.image.resize(img, [image_size, image_size], antialias=True),
            )

        return resize_if_needed
    # CIFAR10, SVHN, and the grayscale MNIST / FashionMNIST (28 -> image_size by the same
    # antialiased bilinear resize; the original has no MNIST). Identity when sizes agree.
    return lambda img: tf.image.resize(to_float(img), [image_size, image_size], antialias=True)


def _numpy_preprocess(name: str, image_size: int):
    """The resize op on NumPy batches: uint8 [N, h, w, C] -> float32 [N, S, S, C] in [0, 1]."""
    scale = np.float32(1.0 / 255.0)  # what tf.image.convert_image_dtype multiplies by

    def preprocess(x):
        # Fast path: tf.image.resize to the same size is the identity (bit-exact).
        if name not in ("CELEBA", "LSUN") and x.shape[1] == x.shape[2] == image_size:
            return x.astype(np.float32) * scale
        return np.array(_get_resize_op(name, image_size)(x), np.float32)

    return preprocess


# --------------------------------------------------------------------------------------------
# Iteration
# --------------------------------------------------------------------------------------------


def _seed(*values: int) -> int:
    """A 63-bit seed derived from non-negative ints (for tf stateless ops)."""
    state = np.random.SeedSequence([v % 2**32 for v in values]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class TFDataset:
    """Iterable of NumPy dicts over a tf.data pipeline (kept in `.tf_dataset`)."""

    def __init__(self, tf_dataset):
        self.tf_dataset = tf_dataset

    def __iter__(self):
        return self.tf_dataset.as_numpy_iterator()


def _tf_pipeline(ds, decode, spec: datasets_offline.BatchSpec, split_id: int, start_step: int):
    """The original's repeat -> shuffle -> map -> batch -> prefetch, seeded per host.

    Args:
      ds: tf.data.Dataset of raw examples, already sharded for this host.
      decode: raw example -> (uint8 HWC image, int label) tensors.
      spec: batching / randomness settings.
      split_id: 0 for train, 1 for eval (different shuffles and noise).
      start_step: items to skip (train only).

    Returns:
      A TFDataset.
    """
    tf = _tf()
    host_seed = _seed(spec.seed, spec.process_index, split_id)
    resize_op = _get_resize_op(spec.name, spec.image_size)

    def preprocess(i, example):
        image, label = decode(example)
        img = resize_op(image)
        # Stateless randomness keyed by the example counter: reproducible, and exact after skip.
        if spec.random_flip:
            img = tf.image.stateless_random_flip_left_right(img, tf.stack([host_seed, 2 * i]))
        if spec.uniform_dequantization:
            noise = tf.random.stateless_uniform(tf.shape(img), tf.stack([host_seed, 2 * i + 1]))
            img = (noise + img * 255.0) / 256.0
        img = tf.ensure_shape(img, [spec.image_size, spec.image_size, spec.num_channels])
        return {"image": img, "label": tf.cast(label, tf.int32)}

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    options.threading.private_threadpool_size = 48
    options.threading.max_intra_op_parallelism = 1
    ds = ds.repeat(spec.num_epochs).shuffle(SHUFFLE_BUFFER_SIZE, seed=host_seed % 2**31)
    ds = ds.enumerate()
    if start_step:
        ds = ds.skip(start_step * int(np.prod(spec.batch_dims)))  # cheap: before decoding
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    for size in reversed(spec.batch_dims):
        ds = ds.batch(size, drop_remainder=True)
    return TFDataset(ds.prefetch(tf.data.AUTOTUNE).with_options(options))


def _tfds_name(name: str, config) -> str:
    names = {
        "CIFAR10": "cifar10",
        "SVHN": "svhn_cropped",
        "CELEBA": "celeb_a",
        "MNIST": "mnist",
        "FashionMNIST": "fashion_mnist",
    }
    if name == "LSUN":
        return f"lsun/{config.data.category}"
    if name not in names:
        raise ValueError(f"{name} is not in tfds; use --config.data.source=tfrecords.")
    return names[name]


def _num_examples(builder, split: str) -> int | None:
    try:
        return builder.info.splits[split].num_examples
    except KeyError:  # e.g. under tfds.testing.mock_data
        return None


def _get_tfds(name, config, spec, train_spec_start):
    """Train / eval TFDatasets from a prepared tfds builder (downloads only when allowed)."""
    tf = _tf()  # first: TensorFlow starts with its GPUs hidden and its notices filtered
    import tensorflow_datasets as tfds  # lazy: heavy, and only this source needs it

    tfds_name = _tfds_name(name, config)
    data_dir = config.data.get("data_dir", "") or None
    manual_dir = config.data.get("manual_dir", "") or None
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if os.environ.get(TFDS_DOWNLOAD_ENV) != "1":
            raise datasets_offline.not_found(
                f"Prepared tfds dataset {tfds_name!r}",
                builder.data_dir,
                f"Prepare it with `tfds build {tfds_name} --data_dir=<dir>` (manual downloads go "
                f"to --manual_dir), then set --config.data.data_dir=<dir>; or set "
                f"{TFDS_DOWNLOAD_ENV}=1 to let get_dataset download and prepare it.",
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    image_feature = builder.info.features["image"]
    has_label = "label" in builder.info.features

    def decode(example):
        image = image_feature.decode_example(example["image"])
        label = example["label"] if has_label else tf.constant(0, tf.int64)
        return image, label

    def make(split, split_id, start):
        read_config = tfds.ReadConfig(shuffle_seed=spec.seed % 2**31)
        ds = builder.as_dataset(
            split=split,
            shuffle_files=True,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        ds = ds.shard(spec.process_count, spec.process_index)
        return _tf_pipeline(ds, decode, spec, split_id, start)

    train_split, eval_split = _SPLITS[name]
    info = DatasetInfo(
        name=name,
        source="tfds",
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=_num_examples(builder, train_split),
        num_eval=_num_examples(builder, eval_split),
        train_split=train_split,
        eval_split=eval_split,
        location=str(builder.data_dir),
    )
    return make(train_split, 0, train_spec_start), make(eval_split, 1, 0), info


def _get_tfrecords(name, config, spec, start_step):
    """FFHQ / CelebA-HQ tfrecords (features `shape` and CHW uint8 `data`); train = eval."""
    tf = _tf()
    pattern = config.data.get("tfrecords_path", "") or config.data.get("path", "")
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not files:
        raise datasets_offline.not_found(
            "TFRecord file(s)",
            repr(pattern) + " (config.data.tfrecords_path)",
            "Make them with the StyleGAN / progressive-GAN dataset_tool (e.g. "
            "ffhq-r08.tfrecords for 256x256) and set --config.data.tfrecords_path=<file>.",
        )

    def decode(record):
        sample = tf.io.parse_single_example(
            record,
            features={
                "shape": tf.io.FixedLenFeature([3], tf.int64),
                "data": tf.io.FixedLenFeature([], tf.string),
            },
        )
        data = tf.reshape(tf.io.decode_raw(sample["data"], tf.uint8), sample["shape"])
        return tf.transpose(data, (1, 2, 0)), tf.constant(0, tf.int64)  # CHW -> HWC; no labels

    def make(split_id, start):
        ds = tf.data.TFRecordDataset(files).shard(spec.process_count, spec.process_index)
        return _tf_pipeline(ds, decode, spec, split_id, start)

    info = DatasetInfo(
        name=name,
        source="tfrecords",
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=None,
        num_eval=None,
        train_split="train",
        eval_split="train",
        location=", ".join(files),
    )
    return make(0, start_step), make(1, 0), info


def _get_offline(name, source, config, spec, start_step):
    """Train / eval ArrayDatasets from local files."""
    splits = datasets_offline.load_offline(source, config.data.get("path", ""), spec.num_channels)
    train_split, eval_split = _SPLITS[name]
    if eval_split != "train":
        eval_split = next((s for s in _EVAL_SPLIT_ALIASES if s in splits), None)
    if train_split not in splits or eval_split is None:
        raise datasets_offline.not_found(
            f"Splits 'train' and one of {_EVAL_SPLIT_ALIASES}",
            f"{config.data.path} (found {sorted(splits)})",
            "Check the layout.",
        )
    for split in (train_split, eval_split):
        channels = splits[split][0].shape[-1]
        if channels != spec.num_channels:
            raise ValueError(
                f"{config.data.path} ({split}) has {channels} channels but "
                f"config.data.num_channels={spec.num_channels}."
            )
    preprocess = _numpy_preprocess(name, spec.image_size)
    train_ds = datasets_offline.ArrayDataset(
        *splits[train_split], spec, split_id=0, start_step=start_step, preprocess=preprocess
    )
    eval_ds = datasets_offline.ArrayDataset(
        *splits[eval_split], spec, split_id=1, preprocess=preprocess
    )
    info = DatasetInfo(
        name=name,
        source=source,
        image_shape=(spec.image_size, spec.image_size, spec.num_channels),
        num_train=len(splits[train_split][0]),
        num_eval=len(splits[eval_split][0]),
        train_split=train_split,
        eval_split=eval_split,
        location=str(config.data.path),
    )
    return train_ds, eval_ds, info


def get_dataset(
    config,
    additional_dim=None,
    uniform_dequantization=False,
    evaluation=False,
    start_step=0,
    num_epochs=None,
):
    """Creates the training and evaluation datasets.

    Args:
      config: the experiment ConfigDict (`data.*`, `training.batch_size`, `eval.batch_size`,
        `seed`).
      additional_dim: if set, items get a leading dimension of this size (the number of train
        steps jitted together).
      uniform_dequantization: add U[0, 1)/256 noise: `(u + 255 x) / 256`.
      evaluation: if True, use `eval.batch_size`, no random flips and one epoch by default.
      start_step: items of the train dataset to skip (one item = one yielded batch), for an
        exact resume. The eval dataset always starts at its beginning.
      num_epochs: passes over each split per iterator; None = forever when training and one
        pass when `evaluation` (as the original). Each pass drops its incomplete last batch.

    Returns:
      (train_ds, eval_ds, info): iterables of {'image': float32 [*batch_dims, H, W, C],
      'label': int32 [*batch_dims]} with batch_dims = [additional_dim, per_host_batch] or
      [per_host_batch], and a DatasetInfo.

    Raises:
      DatasetNotFoundError: the data is not on disk.
      ValueError: the batch size is not divisible by the number of hosts, or the data does not
        match the config.
    """
    name = canonical_dataset_name(config.data.dataset)
    source = config.data.get("source", "tfds")
    # As the original, both datasets use eval.batch_size in evaluation and training.batch_size
    # otherwise (the periodic eval loss during training uses a training-sized batch).
    batch_size = config.eval.batch_size if evaluation else config.training.batch_size
    process_count, process_index = jax.process_count(), jax.process_index()
    if batch_size % process_count != 0:
        raise ValueError(
            f"Batch size {batch_size} must be divisible by the number of hosts ({process_count})."
        )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    per_host_batch = batch_size // process_count
    spec = datasets_offline.BatchSpec(
        name=name,
        image_size=config.data.image_size,
        num_channels=config.data.num_channels,
        batch_size=batch_size,
        batch_dims=(additional_dim, per_host_batch) if additional_dim else (per_host_batch,),
        process_index=process_index,
        process_count=process_count,
        seed=config.seed,
        random_flip=bool(config.data.random_flip and not evaluation),
        uniform_dequantization=uniform_dequantization,
        num_epochs=num_epochs if num_epochs is not None else (1 if evaluation else None),
    )
    if source == "tfds":
        return _get_tfds(name, config, spec, start_step)
    if source == "tfrecords":
        return _get_tfrecords(name, config, spec, start_step)
    if source in datasets_offline.LOADERS:
        return _get_offline(name, source, config, spec, start_step)
    raise ValueError(
        f"Unknown data.source {source!r}; choose tfds, tfrecords or one of {sorted(datasets_offline.LOADERS)}."
    )
