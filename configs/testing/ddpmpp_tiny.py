"""Tiny DDPM++ (VP SDE, continuous, positional embedding, no FIR).

`vp/cifar10_ddpmpp_continuous` shrunk for tests and smoke runs: nf=16, ch_mult=(1, 2), one res
block, 16x16 images, batch 4, N=25 (VP: beta_max / N < 1), 6 steps. Same key tree as the full config.
"""

from configs.testing import _shrink
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
    return _shrink.shrink(cifar10_ddpmpp_continuous.get_config())
