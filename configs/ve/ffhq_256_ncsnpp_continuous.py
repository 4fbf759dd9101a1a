"""NCSN++ on FFHQ 256x256, VE SDE, continuous objective.

(The original docstring says "Church"; it is FFHQ.)
"""

from configs import default_lsun_configs


def get_config():
    config = default_lsun_configs.get_default_configs()
    # training
    training = config.training
    training.sde = "vesde"
    training.continuous = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    # data
    data = config.data
    data.dataset = "FFHQ"
    data.image_size = 256
    # Users must set this to their TFRecord file; the original hard-coded
    # '/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords'.
    data.tfrecords_path = ""
    # (project) FFHQ / CelebA-HQ are read from TFRecords, as in the original.
    data.source = "tfrecords"

    # model
    model = config.model
    model.name = "ncsnpp"
    model.sigma_max = 348
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
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

    return config
