"""Offline demo: a small DDPM++ (VP SDE, continuous) on Fashion-MNIST, trained on CPU.

Data: Fashion-MNIST idx files, e.g. Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`). Built on the CIFAR-10 defaults so that every field of the
paper's configs exists; the changes are the data (28x28x1), a smaller network (nf=16,
ch_mult=(1, 2, 2), one res block, attention at 7x7, 317k parameters) and a short schedule
(1500 steps of batch 32, warm-up 100, lr 1e-3, EMA 0.995) so that the whole `make demo` (train,
sample, bits/dim, offline FD/KID) fits in about 15 minutes on 2 CPU cores.
"""

from configs.vp import cifar10_ddpmpp_continuous


def get_config():
    config = cifar10_ddpmpp_continuous.get_config()
    training = config.training
    # ~0.27 s per step on 2 CPU cores: 1500 steps take about 7 minutes.
    training.batch_size = 32
    training.n_iters = 1500
    training.n_jitted_steps = 1
    training.log_freq = 50
    training.eval_freq = 250
    training.snapshot_freq = 1500
    training.snapshot_freq_for_preemption = 250
    # Samples come from the evaluation step instead (saves a minute of CPU).
    training.snapshot_sampling = False

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 1
    # Also the bits/dim batch: 64 test images keep the likelihood ODE to a few minutes.
    evaluate.batch_size = 64
    evaluate.enable_loss = True
    evaluate.enable_sampling = True
    evaluate.num_samples = 256
    # Bits/dim on one batch of the (dequantised) test split, one pass.
    evaluate.enable_bpd = True
    evaluate.bpd_num_repeats = 1
    evaluate.bpd_max_batches = 1
    # No Inception weights offline: fd_/kid_ in a classifier's feature space instead
    # (`make demo` trains it and passes --config.eval.feature_extractor_path).
    evaluate.inception_path = "none"

    data = config.data
    data.dataset = "FashionMNIST"
    data.source = "idx"
    data.path = "/usr/share/datasets/fashion-mnist"
    data.image_size = 28
    data.num_channels = 1
    data.random_flip = False
    data.centered = True

    model = config.model
    # A continuous-time model: N only sets the number of sampling steps (250 Euler-Maruyama).
    model.num_scales = 250
    model.nf = 16
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (7,)
    model.dropout = 0.0
    model.ema_rate = 0.995

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
