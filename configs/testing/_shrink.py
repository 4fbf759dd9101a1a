"""Shared shrinking for the tiny test configs (not a config itself: it has no get_config)."""


def shrink(config, *, nf=16):
    """Shrinks a full CIFAR-10 experiment config in place to a seconds-long CPU run.

    Only values change; the key tree stays that of the full config, so CLI overrides and code
    paths carry over. Models without ch_mult / num_res_blocks / attn_resolutions (NCSNv2) keep
    their key set.

    Args:
      config: a config from `configs/{ve,vp,subvp}/...get_config()` on the CIFAR-10 defaults.
      nf: base channel count (DDPM needs a multiple of 32: its GroupNorms use 32 groups).

    Returns:
      The same config, for chaining.
    """
    training = config.training
    # 4 images per step; steps 0..6 with every frequency a divisor of 6, so one run logs,
    # evaluates, writes a preemption checkpoint and two kept checkpoints (checkpoint_1, _2).
    training.batch_size = 4
    training.n_iters = 6
    training.snapshot_freq = 3
    training.log_freq = 1
    training.eval_freq = 2
    training.snapshot_freq_for_preemption = 2
    # One step per jitted call, so every frequency above is divisible by it.
    training.n_jitted_steps = 1

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 2
    evaluate.batch_size = 4
    evaluate.num_samples = 8

    data = config.data
    data.image_size = 16
    # Placeholder: tests build their own arrays; point data.path at an .npz file (uint8 NHWC
    # arrays) to run main.py with this config.
    data.source = "npz"

    model = config.model
    # N noise levels / time steps for discrete training and for sampling: 10 for VE; 25 for
    # VP / sub-VP, whose DDPM tables need beta_max / N < 1 (20 / 25 = 0.8).
    model.num_scales = 10 if config.training.sde == "vesde" else 25
    model.nf = nf
    if "ch_mult" in model:
        # Two resolutions (16 and 8), one block each, attention at 8x8.
        model.ch_mult = (1, 2)
        model.num_res_blocks = 1
        model.attn_resolutions = (8,)
    return config
