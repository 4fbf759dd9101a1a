"""Small CNN classifier whose penultimate layer is the offline feature space for sample metrics.

The paper scores samples with Inception features (FID/IS/KID, see `evaluation.py`). Those weights
cannot be downloaded everywhere, so `evaluation.train_feature_extractor` trains this network on the
labelled training images instead, and `evaluation.compute_offline_metrics` reports the Frechet and
kernel distances of its features as `fd_<name>` / `kid_<name>`. The numbers are only comparable
between runs that use the same saved extractor; they are not FIDs.

Inputs are NHWC images already scaled to [-1, 1] (as the TF-GAN Inception module expects), with any
number of channels. The last feature map is flattened rather than globally pooled: on 28 px digits
that keeps the layout information and gives ~98% MNIST test accuracy after 300 Adam steps of batch
128 (about 45 s on two CPU cores), where global pooling gave ~89%. The parameters therefore depend
on the image size, which the saved extractor records.
"""

from collections.abc import Sequence

import jax
from flax import linen as nn


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
            h = nn.relu(nn.Conv(ch, (3, 3))(h))
            if i < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        h = h.reshape(h.shape[0], -1)
        # Post-ReLU features, like Inception's pool_3; the logits are a linear read-out of them.
        features = nn.relu(nn.Dense(self.feature_dim)(h))
        logits = nn.Dense(self.num_classes)(features)
        assert features.shape == (x.shape[0], self.feature_dim)
        return logits, features
