"""NCSN++ on FFHQ 1024x1024, VE SDE, continuous objective (App. H.3).

The original is a PyTorch config (`import torch`, `config.device`) without a JAX default; here it
is built on `default_ffhq_configs`, which holds the values the original sets for training,
sampling, eval, data and optim, plus the JAX keys it lacked.
"""

from configs import default_ffhq_configs


def get_config():
    config = default_ffhq_configs.get_default_configs()
    # training
    training = config.training
    training.sde = "vesde"
    training.continuous = True
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    # data
    data = config.data
    data.dataset = "FFHQ"
    # Users must set this to their TFRecord file; the original hard-coded
    # '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'.
    data.tfrecords_path = ""

    # model
    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = True
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "output_skip"
    model.progressive_input = "input_skip"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.fourier_scale = 16
    model.conv_size = 3

    # optim
    optim = config.optim
    optim.amsgrad = False

    return config
