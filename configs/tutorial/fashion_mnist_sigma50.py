"""Tutorial VE SDE `dx = 50^t dw` on Fashion-MNIST (prior std 17.9); see configs/tutorial."""

from configs import tutorial


def get_config():
    return tutorial.get_tutorial_config(50.0)
