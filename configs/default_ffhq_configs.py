"""Default hyperparameters for FFHQ / CelebA-HQ at 1024x1024 (NCSN++ cont., VE SDE).

The original has no such file: its 1024-px configs (`configs/ve/ffhq_ncsnpp_continuous.py`,
`configs/ve/celebahq_ncsnpp_continuous.py`) are self-contained PyTorch configs. This file holds
the values those configs set, plus the JAX keys they lack (`training.n_jitted_steps`,
`eval.enable_*`, `eval.bpd_dataset`, `model.beta_*`), with the values of the other JAX defaults
(except `n_jitted_steps`, see below). `import torch` and `config.device` are dropped. Keys that
differ between FFHQ and CelebA-HQ (`training.reduce_mean`, `data.dataset`) are set per config.
Fields marked "(project)" are not in the original; they select offline data and local
evaluation assets for this reimplementation.
"""

import ml_collections

from configs import _fast_sampling


def get_default_configs():
    config = ml_collections.ConfigDict()
    # training
    config.training = training = ml_collections.ConfigDict()
    # Global batch size (summed over all devices); must be divisible by the device count.
    config.training.batch_size = 8
    # Number of training steps; the loop runs steps 0..n_iters inclusive, hence the trailing 1.
    training.n_iters = 2400001
    # Steps between kept checkpoints (checkpoint_k with k = step // snapshot_freq).
    training.snapshot_freq = 50000
    # Steps between training-loss log lines.
    training.log_freq = 50
    # Steps between evaluations of the loss on one eval batch (with the EMA params).
    training.eval_freq = 100
    # Steps between preemption checkpoints (only the latest one is kept).
    training.snapshot_freq_for_preemption = 5000
    # Whether to draw training.batch_size samples at each kept snapshot.
    training.snapshot_sampling = True
    # Weight the continuous DSM loss by g(t)^2 (likelihood weighting) instead of sigma(t)^2.
    training.likelihood_weighting = False
    # True: continuous-time DSM loss; False: the discrete SMLD (VE) or DDPM (VP) loss.
    training.continuous = True
    # Train steps fused into one jitted call with lax.scan; every *_freq must be divisible by it.
    # (JAX-only key; 1 = one step per call as in the PyTorch original, and 1024-px activations
    # are large.)
    training.n_jitted_steps = 1
    # True: mean over pixels in the loss; False: 0.5 * sum over pixels (the FFHQ config sets True).
    training.reduce_mean = False
    # (project) Activation dtype of the train and eval-loss steps: 'float32', or 'bfloat16'
    # (parameters, optimizer state and loss stay float32; models/utils.get_model_fn).
    training.compute_dtype = "float32"

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    # Corrector steps per noise level in the PC sampler.
    sampling.n_steps_each = 1
    # Return the noise-free mean of the last predictor step ("denoising" step).
    sampling.noise_removal = True
    # Use the probability-flow ODE in the reverse-diffusion predictor (deterministic).
    sampling.probability_flow = False
    # Signal-to-noise ratio that sets the Langevin corrector step size.
    sampling.snr = 0.15
    # (project) Activation dtype of the network while sampling: 'float32' or 'bfloat16'.
    sampling.compute_dtype = "float32"
    # Fields of the fast and adaptive samplers (steps, dpm_order, ..., reltol): _fast_sampling.py.
    _fast_sampling.add_fast_sampler_fields(sampling)

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    # First checkpoint index k (checkpoint_k) to evaluate.
    evaluate.begin_ckpt = 1
    # Last checkpoint index to evaluate (inclusive); evaluation waits for missing ones.
    evaluate.end_ckpt = 96
    # Global batch size for evaluation losses, bpd and sampling.
    evaluate.batch_size = 1024
    # Draw eval.num_samples samples and compute FID / IS / KID (JAX-only key; the original has no
    # FFHQ / CelebA-HQ statistics file, so set eval.stats_path).
    evaluate.enable_sampling = True
    # Number of samples for FID / IS / KID.
    evaluate.num_samples = 50000
    # Compute the loss over the whole eval split (with the EMA params). (JAX-only key.)
    evaluate.enable_loss = True
    # Compute bits/dim with the probability-flow ODE. (JAX-only key.)
    evaluate.enable_bpd = False
    # Split for bpd: 'test' (5 passes) or 'train' (1 pass); both read the one TFRecord file.
    # (JAX-only key.)
    evaluate.bpd_dataset = "test"
    # (project) Local dir of the TF-Hub Inception module; '' = the TF-Hub URL; 'none' = skip FID/IS.
    evaluate.inception_path = ""
    # (project) Dataset FID statistics file (.npz with pool_3); '' = the original's default path.
    evaluate.stats_path = ""
    # (project) Offline feature extractor directory (evaluation.train_feature_extractor) for
    # fd_<name> / kid_<name> metrics when Inception is unavailable; '' = none.
    evaluate.feature_extractor_path = ""
    # (project) Seconds evaluate() waits for a checkpoint that does not exist yet.
    evaluate.wait_timeout = 3600.0
    # (project) Passes over the test split for bits/dim (the original: 5; the train split: 1).
    evaluate.bpd_num_repeats = 5
    # (project) Stop bits/dim after this many batches; -1 = the whole split (the original).
    evaluate.bpd_max_batches = -1

    # data
    config.data = data = ml_collections.ConfigDict()
    # Dataset name: 'CIFAR10', 'SVHN', 'CELEBA', 'LSUN', 'FFHQ' or 'CelebAHQ'.
    data.dataset = "FFHQ"
    # Side length of the square images in pixels.
    data.image_size = 1024
    # True: data scaled to [-1, 1]; False: data kept in [0, 1].
    data.centered = False
    # Random horizontal flips during training (never at evaluation).
    data.random_flip = True
    # Uniform dequantisation (U[0, 1) + 255 x) / 256 of the training data.
    data.uniform_dequantization = False
    # Number of image channels.
    data.num_channels = 3
    # Path of the TFRecord file (features `shape`, `data`: raw uint8 CHW). Users must set it; the
    # original hard-coded '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'.
    data.tfrecords_path = ""
    # (project) Data source: 'tfds', 'idx', 'cifar_archive', 'image_folder', 'npz' or 'tfrecords'.
    # FFHQ / CelebA-HQ are read from TFRecords, as in the original.
    data.source = "tfrecords"
    # (project) Location of offline data (file or folder) for the non-tfds sources; '' = unused.
    data.path = ""
    # (project) tfds data_dir; '' = the tfds default (~/tensorflow_datasets).
    data.data_dir = ""
    # (project) tfds manual_dir for datasets that need a manual download; '' = the tfds default.
    data.manual_dir = ""

    # model
    config.model = model = ml_collections.ConfigDict()
    # Largest noise scale of the VE SDE / SMLD (about the largest pairwise data distance). A float
    # so that CLI overrides may be fractional (some originals write an int).
    model.sigma_max = 1348.0
    # Number of discretisation steps N (noise levels for discrete training and for sampling).
    model.num_scales = 2000
    # Smallest noise scale of the VE SDE / SMLD.
    model.sigma_min = 0.01
    # beta(0) of the VP / sub-VP SDE (beta_min / N per step in DDPM terms). (JAX-default key; unused
    # by the VE SDE.)
    model.beta_min = 0.1
    # beta(1) of the VP / sub-VP SDE. (JAX-default key; unused by the VE SDE.)
    model.beta_max = 20.0
    # Dropout rate in the residual blocks.
    model.dropout = 0.0
    # Noise-level embedding: 'fourier' (Gaussian Fourier features of log sigma) or 'positional'.
    model.embedding_type = "fourier"

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    # Weight decay (0 = none).
    optim.weight_decay = 0
    # Optimiser; only 'Adam' is supported.
    optim.optimizer = "Adam"
    # Peak learning rate (reached after optim.warmup steps).
    optim.lr = 2e-4
    # Adam beta1 (beta2 is fixed at 0.999).
    optim.beta1 = 0.9
    # Adam epsilon.
    optim.eps = 1e-8
    # Linear learning-rate warm-up steps: lr * min(step / warmup, 1); 0 = no warm-up.
    optim.warmup = 5000
    # Global gradient-norm clipping threshold; negative = no clipping.
    optim.grad_clip = 1.0

    # Random seed for initialisation, training and sampling.
    config.seed = 42

    return config
