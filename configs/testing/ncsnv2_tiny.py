"""Tiny NCSNv2 (ncsnv2_64; VE, discrete SMLD objective, annealed Langevin dynamics).

`ve/ncsnv2/cifar10` shrunk for tests and smoke runs: nf=16, 16x16 images, batch 4, N=10 noise
levels, 6 steps. NCSNv2 has no ch_mult / num_res_blocks / attention keys. Same key tree as the
full config.
"""

from configs.testing import _shrink
from configs.ve.ncsnv2 import cifar10


def get_config():
    return _shrink.shrink(cifar10.get_config())
