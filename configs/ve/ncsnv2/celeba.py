"""NCSNv2 on CelebA 64x64 (SMLD, annealed Langevin dynamics sampling)."""

from configs import default_celeba_configs


def get_config():
    config = default_celeba_configs.get_default_configs()
    # training
    training = config.training
    training.sde = "vesde"
    training.continuous = False
    # Fix: the original defines unused locals here (step_size=0.0000033, n_steps_each=5,
    # ckpt_id=210000, final_only=True, noise_removal=False), left over from the NCSNv2 codebase;
    # dropped. Note sampling.noise_removal stays True (the default), as in the original.
    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "none"
    sampling.corrector = "ald"
    sampling.n_steps_each = 5
    sampling.snr = 0.128
    # model
    model = config.model
    model.name = "ncsnv2_64"
    model.scale_by_sigma = True
    model.num_scales = 500
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
