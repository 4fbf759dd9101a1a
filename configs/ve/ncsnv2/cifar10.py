"""NCSNv2 on CIFAR-10 (SMLD, annealed Langevin dynamics sampling)."""

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
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 5
    sampling.snr = 0.176
    # model
    model = config.model
    model.name = "ncsnv2_64"
    model.scale_by_sigma = True
    model.num_scales = 232
    model.ema_rate = 0.999
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
    optim.grad_clip = -1.0

    return config
