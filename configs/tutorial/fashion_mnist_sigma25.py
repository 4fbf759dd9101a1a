"""Tutorial VE SDE `dx = 25^t dw` on Fashion-MNIST (prior std 9.85); see configs/tutorial."""

from configs import tutorial


def get_config():
    return tutorial.get_tutorial_config(25.0)
