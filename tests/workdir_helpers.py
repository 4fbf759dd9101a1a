"""A tiny saved score model and an image folder, shared by the command tests
(test_encode.py, test_controllable_generation.py)."""

import jax
import numpy as np
from PIL import Image

import losses
from configs.testing import ddpmpp_tiny
from models import utils as mutils
from training import checkpoints, score_model


def tiny_workdir(tmp_path, attn_resolutions=(), num_images=2):
    """A random-init DDPM++ checkpoint (checkpoints.save_checkpoint) on 8x8 images in
    `tmp_path/w`, and `num_images` random 8x8 PNGs in `tmp_path/images`.

    Returns:
      (config, workdir, image folder).
    """
    config = ddpmpp_tiny.get_config()
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = attn_resolutions
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    state = score_model.init_train_state(config, model, tx, jax.random.key(0))
    manager = checkpoints.checkpoint_manager(str(tmp_path / "w"), config.training.snapshot_freq)
    checkpoints.save_checkpoint(manager, state)
    manager.close()
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(num_images):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return config, str(tmp_path / "w"), str(folder)
