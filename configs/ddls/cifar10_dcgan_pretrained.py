"""The pretrained PyTorch CIFAR-10 DCGAN (`netG_epoch_*.pth` / `netD_epoch_*.pth`) for DDLS.

The widely used pretrained CIFAR-10 DCGAN is pytorch/examples' DCGAN adapted to 32 px (G ends in
a 1x1 transposed conv, D goes down to 2x2): `model.layout = 'torch_1x1'`, nz = 100,
ngf = ndf = 64. Convert it, then run DDLS on it:

    python -m experiments.convert_gan --config configs/ddls/cifar10_dcgan_pretrained.py \\
      --netG netG_epoch_199.pth --netD netD_epoch_199.pth --workdir W
    python main.py --config configs/ddls/cifar10_dcgan_pretrained.py --workdir W --mode ddls \\
      --config.eval.inception_path=none --config.eval.feature_extractor_path=X

For a DCGAN with the plain pytorch/examples layers (64 px there) set `model.layout = 'torch'`
and `data.image_size`.
"""

from configs.ddls import cifar10_dcgan


def get_config():
    config = cifar10_dcgan.get_config()
    config.model.layout = "torch_1x1"
    config.model.ngf = 64
    config.model.ndf = 64
    return config
