"""The score-SDE tutorial's VE SDE `dx = sigma^t dw` on Fashion-MNIST, sized for a CPU run.

`get_tutorial_config(sigma)` is the shared part of `fashion_mnist_sigma25.py` and
`fashion_mnist_sigma50.py`: the demo's small NCSN++ (nf=16, ch_mult=(1, 2, 2), one res block,
attention at 7x7) with the continuous VE conditioning (Gaussian Fourier features of log std(t),
output divided by std(t) as the tutorial's ScoreNet), data in [0, 1] as the tutorial, the
continuous DSM loss summed over pixels (the tutorial's `loss_fn`), and Euler-Maruyama sampling
from t = 1 to 1e-3 (`sampling eps` of `training.score_model.sde_from_config`).
"""

from configs.demo import fashion_mnist_ddpmpp


def get_tutorial_config(sigma: float):
    config = fashion_mnist_ddpmpp.get_config()
    training = config.training
    # `sde_lib.TutorialVESDE(model.sigma, model.num_scales)`.
    training.sde = "tutorialvesde"
    training.continuous = True
    # Sum of the squared error over pixels, mean over the batch (the tutorial's loss).
    training.reduce_mean = False
    # 0.3 s (idle) to 0.8 s (shared) per step of batch 32 on 2 CPU cores: 2000 steps take
    # 10 to 28 minutes.
    training.n_iters = 2000
    training.snapshot_freq = 2000
    training.snapshot_freq_for_preemption = 500
    training.eval_freq = 500

    model = config.model
    # Base of the diffusion coefficient g(t) = sigma^t (the tutorial uses 25).
    model.sigma = float(sigma)
    # Euler-Maruyama steps of the default sampler (the tutorial's num_steps = 500).
    model.num_scales = 500
    # Continuous VE conditioning: Fourier features of log std(t), output / std(t).
    model.embedding_type = "fourier"
    model.fourier_scale = 16
    model.scale_by_sigma = True
    # A short run: the EMA must forget its initial params (0.995^2000 = 4e-5; 0.999 keeps 14 %).
    model.ema_rate = 0.995

    # Pixels in [0, 1] (transforms.ToTensor() in the tutorial).
    config.data.centered = False
    # Bits/dim is not what these runs are for; samples and fd/kid are.
    config.eval.enable_bpd = False
    return config
