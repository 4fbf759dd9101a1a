"""DCGAN on Fashion-MNIST (28x28x1) for DDLS, sized for a CPU run.

Data: Fashion-MNIST idx files (as configs/demo/fashion_mnist_ddpmpp.py), e.g. Debian's
`dataset-fashion-mnist` package in /usr/share/datasets/fashion-mnist.

Network: ngf = ndf = 32 (G 350k, D 37k parameters), 7x7 base and two up-samplings.
Measured 0.19 s per step (batch 64, 5.1 steps/s) on 2 CPU cores shared with other jobs
(load ~7); 4000 steps take about 13 minutes there and ~10 on an idle machine.
"""

from configs import ddls


def get_config():
    config = ddls.get_dcgan_config()
    data = config.data
    data.dataset = "FashionMNIST"
    data.source = "idx"
    data.path = "/usr/share/datasets/fashion-mnist"
    data.image_size = 28
    data.num_channels = 1
    data.random_flip = False
    data.centered = True
    config.model.ngf = 32
    config.model.ndf = 32
    config.training.n_iters = 4000
    return config
