"""Writes the PyTorch DCGAN fixture of tests/test_convert_dcgan.py (needs torch; not the project's).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python scripts/make_dcgan_fixture.py --out tests/testdata/dcgan_torch

Builds the DCGAN `netG` / `netD` exactly as the PyTorch sources define them (`nn.Sequential`
named `main`, so the state-dict keys are `main.<i>.*`), in two layouts:
  * `torch`: pytorch/examples `dcgan/main.py` (there at 64 px; the same layers at 32 px here:
    one stride-2 layer fewer on each side);
  * `torch_1x1`: the 32-px CIFAR-10 variant behind the widely used pretrained CIFAR-10 DCGAN
    (`netG_epoch_199.pth` / `netD_epoch_199.pth`): G ends in a 1x1 transposed conv at 32x32, D
    goes down to 2x2 and ends in a 2x2 stride-2 conv.
Widths are small (nz = 100 as the originals, ngf = ndf = 4) to keep the files small. Weights
and BN statistics are random (conv std 1 / sqrt(fan), not the DCGAN init), so that every
parameter matters and the outputs stay O(1).

Writes, per layout: `<layout>_netG.pth`, `<layout>_netD.pth` (`torch.save(state_dict)`, the
zip format) and `<layout>_io.npz` with the inputs and eval-mode outputs:
  z [4, 100], x [4, 32, 32, 3] (NHWC, in [-1, 1]), g_out [4, 32, 32, 3] (NHWC),
  d_logit [4] (the output before the final Sigmoid), d_prob [4] (netD(x)),
  g_train_out [4, 32, 32, 3] (train-mode netG(z): BN with batch statistics).
"""

import argparse
import copy
import os

import numpy as np
import torch
from torch import nn

NZ, NC, NGF, NDF, SIZE, BATCH = 100, 3, 4, 4, 32, 4


def generator(layout: str) -> nn.Module:
    g = NGF
    if layout == "torch":  # pytorch/examples dcgan at 32 px (4 -> 8 -> 16 -> 32)
        layers = [
            nn.ConvTranspose2d(NZ, g * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(g * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(g * 4, g * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(g * 2, g, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g),
            nn.ReLU(True),
            nn.ConvTranspose2d(g, NC, 4, 2, 1, bias=False),
            nn.Tanh(),
        ]
    else:  # the 32-px CIFAR-10 variant: 4 -> 8 -> 16 -> 32, then a 1x1 transposed conv
        layers = [
            nn.ConvTranspose2d(NZ, g * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(g * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(g * 8, g * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(g * 4, g * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(g * 2, g, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g),
            nn.ReLU(True),
            nn.ConvTranspose2d(g, NC, kernel_size=1, stride=1, padding=0, bias=False),
            nn.Tanh(),
        ]
    net = nn.Module()
    net.main = nn.Sequential(*layers)
    return net


def discriminator(layout: str) -> nn.Module:
    d = NDF
    layers = [
        nn.Conv2d(NC, d, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(d, d * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(d * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(d * 2, d * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(d * 4),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    if layout == "torch":  # 32 -> 16 -> 8 -> 4, then the 4x4 "valid" conv
        layers += [nn.Conv2d(d * 4, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    else:  # one more stride-2 conv to 2x2, then a 2x2 stride-2 conv
        layers += [
            nn.Conv2d(d * 4, d * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(d * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(d * 8, 1, 2, 2, 0, bias=False),
            nn.Sigmoid(),
        ]
    net = nn.Module()
    net.main = nn.Sequential(*layers)
    return net


def randomize(net: nn.Module, gen: torch.Generator) -> None:
    """Random weights and BN statistics (positive variances), so every entry is exercised."""
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("weight", "bias", "running_mean")):
                # Convs: std 1 / sqrt(fan) keeps activations O(1) (tanh not saturated).
                scale = tensor[0].numel() ** -0.5 if tensor.ndim == 4 else 0.5
                tensor.copy_(scale * torch.randn(tensor.shape, generator=gen))
                if name.endswith("weight") and tensor.ndim == 1:  # BN scale around 1
                    tensor.add_(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/testdata/dcgan_torch")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    for layout in ("torch", "torch_1x1"):
        g, d = generator(layout), discriminator(layout)
        randomize(g, gen)
        randomize(d, gen)
        g.eval()
        d.eval()
        z = torch.randn(BATCH, NZ, generator=gen)
        x = torch.rand(BATCH, NC, SIZE, SIZE, generator=gen) * 2 - 1
        with torch.no_grad():
            g_out = g.main(z[:, :, None, None])
            d_logit = d.main[:-1](x).reshape(-1)
            d_prob = d.main(x).reshape(-1)
            # On a copy: a train-mode pass updates the BN running statistics.
            g_train = copy.deepcopy(g).train()
            g_train_out = g_train.main(z[:, :, None, None])
        nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
        np.savez(
            os.path.join(out, f"{layout}_io.npz"),
            z=z.numpy(),
            x=nhwc(x),
            g_out=nhwc(g_out),
            d_logit=d_logit.numpy(),
            d_prob=d_prob.numpy(),
            g_train_out=nhwc(g_train_out),
        )
        torch.save(g.state_dict(), os.path.join(out, f"{layout}_netG.pth"))
        torch.save(d.state_dict(), os.path.join(out, f"{layout}_netD.pth"))
        print(layout, "G params", sum(p.numel() for p in g.parameters()),
              "D params", sum(p.numel() for p in d.parameters()))  # fmt: skip
    print("torch", torch.__version__, "->", out)


if __name__ == "__main__":
    main()
