"""Tiny DDPM (VP SDE, discrete DDPM objective, ancestral sampling).

`vp/ddpm/cifar10` shrunk for tests and smoke runs: nf=32 (the DDPM blocks use GroupNorm with 32
groups, so nf must be a multiple of 32), ch_mult=(1, 2), one res block, 16x16 images, batch 4,
N=25 (VP: beta_max / N < 1), 6 steps. Same key tree as the full config.
"""

from configs.testing import _shrink
from configs.vp.ddpm import cifar10


def get_config():
    return _shrink.shrink(cifar10.get_config(), nf=32)
