"""Table 1 VP model on Fashion-MNIST: discrete DDPM objective, N = 1000, a small DDPM++.

`vp/ddpm/cifar10.py` (the paper's Table 1 VP model) shrunk by `_table1.py`; beta_min = 0.1,
beta_max = 20 as in the paper (DDPM's betas 1e-4 .. 0.02 at N = 1000).

    python main.py --config configs/demo/fashion_mnist_ddpm_table1.py --workdir runs/t1_vp \
        --mode train
"""

from configs.demo import _table1
from configs.vp.ddpm import cifar10


def get_config():
    return _table1.shrink_for_fashion_mnist(cifar10.get_config())
