"""DCGAN on CIFAR-10 (32x32x3) for DDLS, sized for a CPU run.

Data: the default `data.source='tfds'` is the paper's CIFAR-10 pipeline. Offline, read the
JPEG tree `<split>/<class>/*.jpg` (a folder or a tar of it, decoded without extracting):

    python main.py --config configs/ddls/cifar10_dcgan.py --workdir W --mode train \\
      --config.data.source=image_folder \\
      --config.data.path=/path/to/CIFAR-10-images_jpeg.tar.gz

Network: ngf = ndf = 32 (G 373k, D 168k parameters; the DCGAN paper's 64 costs ~4x more).
Measured 0.35 s per step (batch 64, 2.85 steps/s) on 2 CPU cores shared with other jobs
(load ~6); 3000 steps take about 18 minutes, less on an idle machine. Reading the JPEG tar
takes ~15 s before the first step.
"""

from configs import ddls


def get_config():
    config = ddls.get_dcgan_config()
    config.model.ngf = 32
    config.model.ndf = 32
    config.training.n_iters = 3000
    return config
