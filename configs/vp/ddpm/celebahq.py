"""DDPM on CelebA-HQ 256x256, reproducing Ho et al. 2020 (discrete VP).

(The original docstring says "bedrooms"; it is CelebA-HQ.)
"""

from configs import default_lsun_configs


def get_config():
    config = default_lsun_configs.get_default_configs()

    # training
    training = config.training
    training.sde = "vpsde"
    training.continuous = False
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "ancestral_sampling"
    sampling.corrector = "none"

    # data
    data = config.data
    data.dataset = "CelebAHQ"
    data.centered = True
    # Users must set this to their TFRecord file; the original hard-coded
    # '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'.
    data.tfrecords_path = ""
    # (project) FFHQ / CelebA-HQ are read from TFRecords, as in the original.
    data.source = "tfrecords"
    data.image_size = 256

    # model
    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = False
    model.num_scales = 1000
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 4, 4)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True

    # optim
    optim = config.optim
    optim.lr = 2e-5

    return config
