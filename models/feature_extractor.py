"""Small CNN classifier whose penultimate layer is the offline feature space for sample metrics.

The paper scores samples with Inception features (FID/IS/KID, see `evaluation.py`). Those weights
cannot be downloaded everywhere, so `experiments.extractor.train_feature_extractor` trains this
network on the labelled training images instead (`save` / `load` keep it in a directory), and
`evaluation.compute_offline_metrics` reports the Frechet and kernel distances of its features as
`fd_<name>` / `kid_<name>`. The numbers are only comparable
between runs that use the same saved extractor; they are not FIDs.

Inputs are NHWC images already scaled to [-1, 1] (as the TF-GAN Inception module expects), with any
number of channels. The last feature map is flattened rather than globally pooled: on 28 px digits
that keeps the layout information and gives ~98% MNIST test accuracy after 300 Adam steps of batch
128 (about 45 s on two CPU cores), where global pooling gave ~89%. The parameters therefore depend
on the image size, which the saved extractor records.
"""

import json
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from flax import serialization
from jax import numpy as jnp

import fileio
from models import conv

# Files of a saved extractor directory.
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "extractor.json"


class FeatureExtractor(nn.Module):
    """Conv blocks (3x3 conv, ReLU, 2x2 average pool) + flatten + dense features + logits.

    Attributes:
      num_classes: Number of output logits.
      channels: Output channels of each conv block; every block but the last halves the resolution.
      feature_dim: Width of the penultimate (feature) layer.
    """

    num_classes: int
    channels: Sequence[int] = (32, 64, 128)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns `(logits [B, num_classes], features [B, feature_dim])` for images `x` [B,H,W,C]."""
        assert x.ndim == 4, f"expected NHWC images, got shape {x.shape}"
        h = x
        for i, ch in enumerate(self.channels):
            h = nn.relu(conv.Conv(ch, (3, 3))(h))
            if i < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        h = h.reshape(h.shape[0], -1)
        # Post-ReLU features, like Inception's pool_3; the logits are a linear read-out of them.
        features = nn.relu(nn.Dense(self.feature_dim)(h))
        logits = nn.Dense(self.num_classes)(features)
        assert features.shape == (x.shape[0], self.feature_dim)
        return logits, features


def scale_uint8(images) -> np.ndarray:
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
            batch = scale_uint8(images[start : start + batch_size])
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


def save(extractor: OfflineExtractor, path: str) -> None:
    """Writes `params.msgpack` (flax serialization) and `extractor.json` into directory `path`."""
    fileio.write_bytes(fileio.join(path, PARAMS_FILE), serialization.to_bytes(extractor.params))
    fileio.write_text_atomic(fileio.join(path, CONFIG_FILE), json.dumps(extractor.info, indent=2))


def load(path: str) -> OfflineExtractor:
    """Loads an extractor saved by `save` from directory `path`.

    Raises:
      FileNotFoundError: `path` holds no `extractor.json` (the message says how to make one).
    """
    if not fileio.exists(fileio.join(path, CONFIG_FILE)):
        raise FileNotFoundError(
            f"No feature extractor at {path!r} ({CONFIG_FILE} missing); train one with "
            "`python -m evaluation --train_extractor --config ... --workdir ...`."
        )
    info = json.loads(fileio.read_text(fileio.join(path, CONFIG_FILE)))
    module = FeatureExtractor(
        num_classes=info["num_classes"],
        channels=tuple(info["channels"]),
        feature_dim=info["feature_dim"],
    )
    # Restore into the structure of a fresh init, so a mismatched file fails loudly.
    dummy = jnp.zeros((1, *info["image_shape"]), jnp.float32)
    target = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    params = serialization.from_bytes(target, fileio.read_bytes(fileio.join(path, PARAMS_FILE)))
    return OfflineExtractor(info["name"], module, params, info["image_shape"], info)
