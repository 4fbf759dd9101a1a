"""Shared settings of the Fashion-MNIST Table 1 models (not a config itself: no get_config).

The paper's Table 1 models are trained with the *discrete* objectives at N = 1000 (App. G):
SMLD for VE (`ve/cifar10_ddpm.py`), DDPM for VP (`vp/ddpm/cifar10.py`), both with the DDPM
network. `configs/demo/fashion_mnist_{smld,ddpm}_table1.py` keep the objectives, N, the SDE
parameters and the samplers, and shrink data, network and schedule to a CPU budget:

* the network is the demo's small DDPM++ (`configs/demo/fashion_mnist_ddpmpp.py`: nf=16,
  ch_mult (1, 2, 2), one res block, attention at 7x7, 317k parameters) with the positional
  (integer-step) embedding of the discrete DDPM++ configs (`vp/cifar10_ddpmpp.py`). The DDPM
  network's GroupNorms have 32 groups, so nf >= 32: its smallest useful version (1.1M
  parameters) measured 3.5 s per step at batch 32 on the shared 2 cores, 4x the DDPM++;
* 5000 steps of batch 32, lr 1e-3 after 100 warm-up steps, EMA 0.995 for both SDEs (the
  demo's). The EMA starts at the initial weights, as in the paper's code, so its rate must fit
  the run: at the paper's VE rate 0.999 the EMA still held 0.999^1000 = 37 % of the random
  initial weights at step 1000, and samples of both models left [0, 1] (98 % of the pixels, for
  the reverse-diffusion SDE sampler as much as for the probability flow). The recorded runs
  used 0.999 for their first 1100 steps and 0.995 after (restarted from the step-1100
  checkpoint; 0.995^1900 leaves 7e-5 of the earlier average).
"""


def shrink_for_fashion_mnist(config):
    """Fashion-MNIST data, the small DDPM++ network and a CPU schedule, in place.

    Args:
      config: `ve/cifar10_ddpm.get_config()` or `vp/ddpm/cifar10.get_config()`.

    Returns:
      The same config, for chaining.
    """
    training = config.training
    training.batch_size = 32
    training.n_iters = 5000
    # One step per jitted call (the fused scan is slow on XLA:CPU).
    training.n_jitted_steps = 1
    training.log_freq = 50
    training.eval_freq = 250
    # Kept checkpoints every 500 steps (checkpoint_k = step 500 k), so a sweep can use any
    # of them (sweep.ckpt); checkpoint_10 is the last.
    training.snapshot_freq = 500
    training.snapshot_freq_for_preemption = 250
    training.snapshot_sampling = False

    evaluate = config.eval
    evaluate.begin_ckpt = 10
    evaluate.end_ckpt = 10
    evaluate.batch_size = 128
    evaluate.num_samples = 256
    # No Inception weights offline: fd_/kid_ in the demo extractor's feature space.
    evaluate.inception_path = "none"

    data = config.data
    data.dataset = "FashionMNIST"
    data.source = "idx"
    data.path = "/usr/share/datasets/fashion-mnist"
    data.image_size = 28
    data.num_channels = 1
    data.random_flip = False

    model = config.model
    # The paper's N = 1000 noise levels (Table 1 models).
    model.num_scales = 1000
    # The demo's DDPM++ (28 -> 14 -> 7), with the discrete configs' positional embedding.
    model.name = "ncsnpp"
    model.nf = 16
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (7,)
    model.dropout = 0.0
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.embedding_type = "positional"
    model.fourier_scale = 16
    model.ema_rate = 0.995

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
