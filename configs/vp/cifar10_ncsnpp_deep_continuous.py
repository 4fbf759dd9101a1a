"""NCSN++ deep (8 res blocks) on CIFAR-10, VP SDE, continuous objective."""

from configs import default_cifar10_configs


def get_config():
    config = default_cifar10_configs.get_default_configs()
    # training
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.n_iters = 950001
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    # data
    data = config.data
    data.centered = True

    # model
    model = config.model
    model.name = "ncsnpp"
    model.fourier_scale = 16
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 8
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.embedding_type = "positional"
    model.init_scale = 0.0
    model.conv_size = 3

    return config
