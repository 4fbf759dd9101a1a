"""NCSN (v1) on CelebA with NCSNv2 techniques 1, 2 and 4 only."""

from configs import default_celeba_configs


def get_config():
    config = default_celeba_configs.get_default_configs()
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
    sampling.snr = 0.128
    # model
    model = config.model
    model.name = "ncsn"
    model.scale_by_sigma = False
    model.num_scales = 500
    # Fix: the original has no num_classes, which the NCSN (v1) model reads (one conditional
    # normalisation embedding per noise level); added as a reference, so it follows overrides of
    # model.num_scales.
    model.num_classes = model.get_ref("num_scales")
    model.ema_rate = 0.0
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"
    model.nf = 128
    model.interpolation = "bilinear"
    # optim
    optim = config.optim
    optim.weight_decay = 0
    optim.optimizer = "Adam"
    optim.lr = 1e-3
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.0

    return config
