"""NCSNv2 (128-px network) on LSUN bedroom 128x128 (SMLD, annealed Langevin dynamics)."""

from configs import default_lsun_configs


def get_config():
    config = default_lsun_configs.get_default_configs()
    # training
    training = config.training
    training.batch_size = 128
    training.sde = "vesde"
    # Fix: the original sets `training.continuouse` (typo), which leaves continuous=True from the
    # defaults although NCSNv2 is a discrete SMLD model (as in the other NCSNv2 configs).
    training.continuous = False
    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 3
    sampling.snr = 0.095
    # data
    data = config.data
    data.category = "bedroom"
    data.image_size = 128
    # model
    model = config.model
    model.name = "ncsnv2_128"
    model.scale_by_sigma = True
    model.sigma_max = 190
    model.num_scales = 1086
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"
    model.nf = 128
    model.interpolation = "bilinear"
    # (project) False: the JAX original's NCSNv2. True: a variant matching score_sde_pytorch's
    # NCSNv2 (refine3 width nf, unbiased InstanceNorm++ variance, align_corners upsampling),
    # needed to load its checkpoints.
    model.torch_compat = False
    # No `data.channels`: score_sde_pytorch's NCSNv2 reads it though no config defines it;
    # our models read data.num_channels (set in the defaults).
    # optim
    optim = config.optim
    optim.weight_decay = 0
    optim.optimizer = "Adam"
    optim.lr = 1e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1

    return config
