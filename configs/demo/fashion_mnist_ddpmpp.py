"""Offline demo: a small DDPM++ (VP SDE, continuous) on Fashion-MNIST, trained on CPU.

Data: Fashion-MNIST idx files, e.g. Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`). Built on the CIFAR-10 defaults so that every field of the
paper's configs exists; the changes are the data (28x28x1), a smaller network (nf=32,
ch_mult=(1, 2, 2), one res block, attention at 7x7) and a short schedule (warm-up 100, lr 1e-3,
EMA 0.999) so that a few minutes of CPU training gives recognisable samples.
"""

from configs.vp import cifar10_ddpmpp_continuous


def get_config():
    config = cifar10_ddpmpp_continuous.get_config()
    training = config.training
    training.batch_size = 64
    training.n_iters = 3000
    training.n_jitted_steps = 10
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    training.snapshot_sampling = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    evaluate = config.eval
    evaluate.begin_ckpt = 3
    evaluate.end_ckpt = 3
    evaluate.batch_size = 256
    evaluate.enable_sampling = True
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.num_samples = 1024
    # No Inception weights offline: report fd_/kid_ in a classifier's feature space instead.
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
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (7,)
    model.dropout = 0.0
    model.ema_rate = 0.999

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
