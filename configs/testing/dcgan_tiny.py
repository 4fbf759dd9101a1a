"""Tiny DCGAN for tests and smoke runs: 8x8x3 images, ngf = ndf = 8, z_dim 16, batch 8, 4 steps.

`ddls/cifar10_dcgan` shrunk (same key tree); DDLS runs 6 steps on 16 chains. Point data.path
at an .npz (uint8 NHWC x_train / x_test) to run main.py with it.
"""

from configs.ddls import cifar10_dcgan


def get_config():
    config = cifar10_dcgan.get_config()
    training = config.training
    # 8 images per step (divisible by the 8 simulated test devices); checkpoints at 2 and 4.
    training.batch_size = 8
    training.n_iters = 4
    training.log_freq = 1
    training.snapshot_freq = 2
    training.snapshot_freq_for_preemption = 2

    config.data.image_size = 8
    # Placeholder: tests build their own arrays.
    config.data.source = "npz"

    model = config.model
    model.z_dim = 16
    model.ngf = 8
    model.ndf = 8

    config.eval.batch_size = 8
    # No Inception offline; tests set eval.feature_extractor_path or patch the metrics.
    config.eval.inception_path = "none"

    ddls = config.ddls
    ddls.n_steps = 6
    ddls.decay_every = 2
    ddls.record_steps = (0, 3, 6)
    ddls.num_samples = 16
    ddls.batch_size = 8
    return config
