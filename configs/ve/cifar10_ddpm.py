"""The original DDPM architecture on CIFAR-10 trained with SMLD (discrete VE; Table 1 VE)."""

from configs import default_cifar10_configs


def get_config():
    config = default_cifar10_configs.get_default_configs()
    # training
    training = config.training
    training.sde = "vesde"
    training.continuous = False

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    # model
    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.conv_size = 3

    return config
