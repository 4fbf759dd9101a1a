"""PyTorch DCGAN -> our Flax DCGAN: output parity against a PyTorch fixture, and the CLI.

Fixture `tests/testdata/dcgan_torch/` (scripts/make_dcgan_fixture.py, torch 2.13 CPU): random
`netG` / `netD` state dicts of the pytorch/examples DCGAN at 32 px ('torch') and of its 32-px
CIFAR-10 variant ('torch_1x1'), nz = 100, ngf = ndf = 4, with inputs and PyTorch's outputs.
Measured max |difference| (float32): G eval 1.2e-7 / 2.4e-7, D logit 2.2e-7 / 2.4e-7, G train
mode 4.7e-7 / 1.4e-6 ('torch' / 'torch_1x1'); the tolerance is 1e-5 absolute on O(1) outputs.
"""

import os
import pathlib

import jax
import numpy as np
import pytest

from configs.testing import dcgan_tiny
from experiments import convert_gan, ddls, gan
from models import convert_dcgan, dcgan, pth

DATA = pathlib.Path(__file__).parent / "testdata" / "dcgan_torch"
LAYOUTS = ("torch", "torch_1x1")


def _files(layout):
    return str(DATA / f"{layout}_netG.pth"), str(DATA / f"{layout}_netD.pth")


def _converted(layout):
    g_sd, d_sd = (convert_dcgan.read_state_dict(p) for p in _files(layout))
    generator = dcgan.Generator(image_size=32, num_channels=3, ngf=4, layout=layout)
    discriminator = dcgan.Discriminator(image_size=32, ndf=4, layout=layout)
    g_vars, d_vars = convert_dcgan.from_pytorch_dcgan(g_sd, d_sd, generator, discriminator, 100)
    return generator, discriminator, g_vars, d_vars


@pytest.mark.parametrize("layout", LAYOUTS)
def test_outputs_match_pytorch(layout):
    io = np.load(DATA / f"{layout}_io.npz")
    generator, discriminator, g_vars, d_vars = _converted(layout)
    np.testing.assert_allclose(
        generator.apply(g_vars, io["z"], train=False), io["g_out"], atol=1e-5
    )
    logit = discriminator.apply(d_vars, io["x"], train=False)
    np.testing.assert_allclose(logit, io["d_logit"], atol=1e-5)
    np.testing.assert_allclose(jax.nn.sigmoid(logit), io["d_prob"], atol=1e-5)
    # Train mode: batch statistics, as PyTorch's BatchNorm2d in .train().
    out, _ = generator.apply(g_vars, io["z"], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, io["g_train_out"], atol=1e-5)


def test_layout_is_detected_and_module_prefix_stripped():
    g_sd = convert_dcgan.read_state_dict(_files("torch_1x1")[0])
    assert convert_dcgan.infer_layout(g_sd) == "torch_1x1"
    assert convert_dcgan.infer_layout(convert_dcgan.read_state_dict(_files("torch")[0])) == "torch"
    # Raw pth contents carry num_batches_tracked (int64), dropped by the converter.
    assert pth.read_pth(_files("torch")[0])["main.1.num_batches_tracked"].dtype == np.int64
    # DataParallel prefixes and a state dict nested in a training checkpoint.
    prefixed = {f"module.{k}": v for k, v in g_sd.items()}
    assert set(convert_dcgan.state_dict_from(prefixed)) == set(g_sd)
    assert set(convert_dcgan.state_dict_from({"netG": g_sd, "epoch": 3})) == set(g_sd)
    with pytest.raises(convert_dcgan.ConversionError, match="no DCGAN state dict"):
        convert_dcgan.state_dict_from({"model": g_sd, "ema": g_sd})


def test_mismatches_are_refused_with_the_path():
    g_sd, d_sd = (convert_dcgan.read_state_dict(p) for p in _files("torch"))
    generator = dcgan.Generator(image_size=32, num_channels=3, ngf=8, layout="torch")
    discriminator = dcgan.Discriminator(image_size=32, ndf=4, layout="torch")
    with pytest.raises(
        convert_dcgan.ConversionError,
        match=r"main\.0\.weight \(100, 16, 4, 4\) -> \(100, 256\) .* params/main_0/kernel \(100, 512\)",
    ):
        convert_dcgan.from_pytorch_dcgan(g_sd, d_sd, generator, discriminator, 100)
    generator = generator.clone(ngf=4)
    with pytest.raises(convert_dcgan.ConversionError, match="has a bias"):
        convert_dcgan.from_pytorch_dcgan(
            {**g_sd, "main.0.bias": np.zeros(16, np.float32)}, d_sd, generator, discriminator, 100
        )
    with pytest.raises(convert_dcgan.ConversionError, match="lacks"):
        del_key = {k: v for k, v in d_sd.items() if k != "main.3.running_var"}
        convert_dcgan.from_pytorch_dcgan(g_sd, del_key, generator, discriminator, 100)
    with pytest.raises(convert_dcgan.ConversionError, match="not 'flax'"):
        flax_g = dcgan.Generator(image_size=32, ngf=4)
        convert_dcgan.from_pytorch_dcgan(g_sd, d_sd, flax_g, discriminator, 100)
    with pytest.raises(ValueError, match="starts from 4x4"):
        dcgan.Generator(image_size=28, layout="torch").init(
            jax.random.key(0), np.zeros((1, 100), np.float32)
        )


def _pretrained_tiny_config(layout):
    config = dcgan_tiny.get_config()
    config.data.image_size = 32
    config.model.z_dim, config.model.ngf, config.model.ndf = 100, 4, 4
    config.model.layout = layout
    return config


def test_cli_writes_a_gan_checkpoint_that_ddls_restores(tmp_path):
    """convert -> experiments.gan.restore_gan (what --mode ddls calls) -> d(G(z)) of the torch
    networks; a second conversion into the same workdir and a wrong layout are refused."""
    config = _pretrained_tiny_config("torch_1x1")
    workdir = str(tmp_path / "w")
    convert_gan.convert(config, workdir, *_files("torch_1x1"))
    assert os.path.exists(os.path.join(workdir, "config.json"))
    state = gan.restore_gan(config, workdir)
    assert int(state.step) == 0
    generator, discriminator, g_vars, d_vars = _converted("torch_1x1")
    io = np.load(DATA / "torch_1x1_io.npz")
    np.testing.assert_allclose(gan.generate(generator, state, io["z"]), io["g_out"], atol=1e-5)
    logit_fn = ddls.get_logit_fn(generator, discriminator, state)
    expected = discriminator.apply(
        d_vars, generator.apply(g_vars, io["z"], train=False), train=False
    )
    np.testing.assert_allclose(logit_fn(io["z"]), expected, atol=1e-5)
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        convert_gan.convert(config, workdir, *_files("torch_1x1"))
    with pytest.raises(convert_dcgan.ConversionError, match="model.layout=torch_1x1"):
        convert_gan.convert(
            _pretrained_tiny_config("torch"), str(tmp_path / "v"), *_files("torch_1x1")
        )


def test_default_layout_keeps_its_parameter_names():
    """The 'flax' layout (the default) is unchanged: auto-named layers, biases, same init."""
    g = dcgan.Generator(image_size=16, num_channels=3, ngf=8)
    variables = g.init(jax.random.key(0), np.zeros((1, 16), np.float32), train=False)
    assert sorted(variables["params"]) == [
        "BatchNorm_0", "BatchNorm_1", "ConvTranspose_0", "ConvTranspose_1", "Dense_0"
    ]  # fmt: skip
    assert "bias" in variables["params"]["Dense_0"]
    explicit = g.clone(layout="flax").init(jax.random.key(0), np.zeros((1, 16), np.float32))
    jax.tree.map(np.testing.assert_array_equal, variables, explicit)
