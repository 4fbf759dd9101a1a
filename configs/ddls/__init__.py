"""DDLS experiments (Che et al. 2020, arXiv:2003.06060): a DCGAN plus latent Langevin sampling.

`get_dcgan_config()` holds the shared fields; `cifar10_dcgan.py` and `fashion_mnist_dcgan.py`
override the data, widths and schedule. Train with `--mode train` (main.py hands
model.name='dcgan' to experiments.gan.train), then sample with `--mode ddls`
(experiments.ddls.run_ddls).
"""

import ml_collections


def get_dcgan_config():
    config = ml_collections.ConfigDict()
    # Random seed for initialisation, training batches and DDLS chains.
    config.seed = 42

    config.training = training = ml_collections.ConfigDict()
    # Global batch size (real images per step); must be divisible by the device count.
    training.batch_size = 64
    # Number of GAN steps (one D update then one G update each).
    training.n_iters = 4000
    # Steps between d_loss / g_loss / steps_per_sec log lines (metrics.jsonl).
    training.log_freq = 50
    # Steps between kept checkpoints; a fixed-latent sample grid is written at each.
    training.snapshot_freq = 1000
    # Steps between preemption checkpoints (only the latest one is kept).
    training.snapshot_freq_for_preemption = 250

    config.data = data = ml_collections.ConfigDict()
    # Dataset name (datasets.canonical_dataset_name).
    data.dataset = "CIFAR10"
    # Where the images come from: tfds, idx, cifar_archive, image_folder or npz.
    data.source = "tfds"
    # File / folder / tar for the offline sources; '' for tfds.
    data.path = ""
    # tfds data_dir ('' = the tfds default).
    data.data_dir = ""
    # tfds manual_dir ('' = the tfds default).
    data.manual_dir = ""
    # Height = width of the images (28 or 32 for the DCGAN).
    data.image_size = 32
    # Image channels (3 for CIFAR-10, 1 for (Fashion-)MNIST).
    data.num_channels = 3
    # Random horizontal flips of the training images.
    data.random_flip = True
    # Scale images to [-1, 1], the range of the generator's tanh output.
    data.centered = True
    # Uniform dequantisation of the training images (off for GANs).
    data.uniform_dequantization = False

    config.model = model = ml_collections.ConfigDict()
    # Network family; 'dcgan' routes `--mode train` to experiments.gan.train.
    model.name = "dcgan"
    # Latent dimension (z ~ N(0, I)); 100 in Radford et al. 2015.
    model.z_dim = 100
    # Generator width of the last hidden layer (doubles at each lower resolution).
    model.ngf = 64
    # Discriminator width of the first layer (doubles at each lower resolution).
    model.ndf = 64
    # Layer layout (models/dcgan.py): 'flax' (ours), 'torch' (pytorch/examples DCGAN) or
    # 'torch_1x1' (its 32-px CIFAR-10 variant); the torch ones load PyTorch netG / netD files.
    model.layout = "flax"

    config.optim = optim = ml_collections.ConfigDict()
    # Adam learning rate of both networks (Radford et al. 2015: 2e-4).
    optim.lr = 2e-4
    # Adam beta1 (Radford et al. 2015: 0.5).
    optim.beta1 = 0.5

    config.eval = evaluate = ml_collections.ConfigDict()
    # Batch size of the reference images for the metrics.
    evaluate.batch_size = 256
    # Local dir of the TF-Hub Inception module; '' = the TF-Hub URL; 'none' = skip FID/IS/KID.
    evaluate.inception_path = ""
    # Dataset FID statistics (.npz with pool_3); '' = assets/stats/<dataset>_stats.npz.
    evaluate.stats_path = ""
    # Offline feature extractor dir (python -m evaluation --train_extractor); '' = none.
    evaluate.feature_extractor_path = ""

    config.ddls = ddls = ml_collections.ConfigDict()
    # Langevin step size eps of the first step: z <- z - eps/2 grad E(z) + sqrt(eps) n.
    ddls.step_size = 0.01
    # Number of Langevin steps of every chain.
    ddls.n_steps = 300
    # Factor the step size is multiplied by every decay_every steps (1.0 = constant).
    ddls.decay = 0.5
    # Steps between step-size decays (0 = never).
    ddls.decay_every = 100
    # Steps (0 = the plain GAN sample) at which images are scored and grids written.
    ddls.record_steps = (0, 10, 30, 60, 100, 200, 300)
    # Number of chains (= samples per metric evaluation).
    ddls.num_samples = 1000
    # Chains run together on the device.
    ddls.batch_size = 500
    return config
