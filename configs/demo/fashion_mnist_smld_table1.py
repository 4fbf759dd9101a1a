"""Table 1 VE model on Fashion-MNIST: discrete SMLD objective, N = 1000, a small DDPM++.

`ve/cifar10_ddpm.py` (the paper's Table 1 VE model) shrunk by `_table1.py`. sigma_max = 25
follows the rule the paper's sigma_max values come from (NCSNv2, Technique 1: the largest
pairwise distance of the training images; 50 for CIFAR-10): Fashion-MNIST's is about 23 in
[0, 1] pixel units. sigma_min = 0.01 as in the paper.

    python main.py --config configs/demo/fashion_mnist_smld_table1.py --workdir runs/t1_ve \
        --mode train
"""

from configs.demo import _table1
from configs.ve import cifar10_ddpm


def get_config():
    config = _table1.shrink_for_fashion_mnist(cifar10_ddpm.get_config())
    config.model.sigma_max = 25.0
    return config
