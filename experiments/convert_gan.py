"""A pretrained PyTorch DCGAN (`netG` / `netD` state dicts) -> a GAN checkpoint for `--mode ddls`.

    python -m experiments.convert_gan --config configs/ddls/cifar10_dcgan_pretrained.py \\
        --netG netG_epoch_199.pth --netD netD_epoch_199.pth --workdir W
    python main.py --config configs/ddls/cifar10_dcgan_pretrained.py --workdir W --mode ddls

The files are read without torch (`models/pth.py`), mapped by `models/convert_dcgan.py` onto the
DCGAN of `config.model.layout` ('torch' or 'torch_1x1'; the layout the files have is detected
and a mismatch refused), and written as `experiments.gan.GANState` at step 0 in
`W/checkpoints` with fresh Adam moments: `--mode ddls` restores it like a trained one, and
`--mode train` on W would fine-tune it from there. An existing checkpoint is never overwritten.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags, logging
from ml_collections import config_flags

import fileio
import utils
from experiments import gan
from models import convert_dcgan
from training import checkpoints


def convert(config, workdir: str, netG: str, netD: str) -> gan.GANState:
    """Converts the two files and saves them as step 0 of `workdir`; returns the state.

    Raises:
      ConversionError: the files do not fit the config's DCGAN (layout, widths, z_dim).
      FileExistsError: `workdir` already holds a checkpoint.
    """
    g_sd, d_sd = convert_dcgan.read_state_dict(netG), convert_dcgan.read_state_dict(netD)
    found, layout = convert_dcgan.infer_layout(g_sd), config.model.get("layout", "flax")
    if found != layout:
        raise convert_dcgan.ConversionError(
            f"{netG} has the {found!r} DCGAN layout but config.model.layout is {layout!r}: "
            f"set --config.model.layout={found}"
        )
    generator, discriminator, tx, _ = gan.build(config)
    g_vars, d_vars = convert_dcgan.from_pytorch_dcgan(
        g_sd, d_sd, generator, discriminator, config.model.z_dim
    )
    state = gan.GANState(
        step=jnp.asarray(0, jnp.int32),
        g_params=g_vars["params"],
        g_batch_stats=g_vars["batch_stats"],
        d_params=d_vars["params"],
        d_batch_stats=d_vars["batch_stats"],
        g_opt_state=tx.init(g_vars["params"]),
        d_opt_state=tx.init(d_vars["params"]),
    )
    manager = checkpoints.checkpoint_manager(workdir, config.training.snapshot_freq)
    existing = checkpoints.saved_steps(manager)
    if existing:
        manager.close()
        raise FileExistsError(
            f"{checkpoints.checkpoint_dir(workdir)} already has checkpoints {existing}; "
            "convert into an empty workdir"
        )
    checkpoints.save_checkpoint(manager, jax.device_get(state))
    manager.close()
    utils.write_config(config, workdir)
    logging.info(
        "Converted %s (G %d) and %s (D %d parameters) into %s, step 0.",
        netG,
        convert_dcgan.count(state.g_params),
        netD,
        convert_dcgan.count(state.d_params),
        checkpoints.checkpoint_dir(workdir),
    )
    return state


def main(argv):
    del argv
    f = flags.FLAGS
    convert(f.config, fileio.absolute(f.workdir), f.netG, f.netD)


def define_flags():
    """Defines the command's flags (only when it runs, so importing this module adds none)."""
    config_flags.DEFINE_config_file("config", None, "DCGAN configuration.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Work directory; writes <workdir>/checkpoints.")
    flags.DEFINE_string("netG", None, "PyTorch generator state dict (.pth).")
    flags.DEFINE_string("netD", None, "PyTorch discriminator state dict (.pth).")
    flags.mark_flags_as_required(["config", "workdir", "netG", "netD"])


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
