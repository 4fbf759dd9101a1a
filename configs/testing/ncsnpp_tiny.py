"""Tiny NCSN++ (VE SDE, continuous, Fourier embedding, FIR, residual progressive input).

`ve/cifar10_ncsnpp_continuous` shrunk for tests and smoke runs: nf=16, ch_mult=(1, 2), one res
block, 16x16 images, batch 4, N=10, 6 steps. Same key tree as the full config.
"""

from configs.testing import _shrink
from configs.ve import cifar10_ncsnpp_continuous


def get_config():
    return _shrink.shrink(cifar10_ncsnpp_continuous.get_config())
