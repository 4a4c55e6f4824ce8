"""Generative adversarial networks (Goodfellow et al. 2014, arXiv:1406.2661).

What seed 002 (section 1 and question 4) specifies, and where it lives here:
- DNet (Table 1) and GNet (Table 2) for 28x28 MNIST, layers defined in table order
  in `__init__`, kaiming-uniform weights and zero biases (question 4.3)
- the discriminator loss  BCE(D(x), 1) + BCE(D(G(z)), 0)                    `d_loss`
- the non-saturating generator loss BCE(D(G(z)), 1), both with logits       `g_loss`
- the starter's training: z ~ U(-1, 1)^64, Adam lr 2e-4 (beta1 0.5 here), batch 256, one D step then
  one G step on the same z, a sample grid each epoch; good digits after ~30 epochs
A DCGAN (Radford et al. 2016) pair serves 32x32 and 64x64 colour images. Reported per
step: both losses, mean D(x) and mean D(G(z)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab import parallel
from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel


def bce_real(logits):
    """BCE-with-logits against the label 1: -log sigmoid(logits), averaged."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def bce_fake(logits):
    """BCE-with-logits against the label 0: -log(1 - sigmoid(logits)), averaged."""
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


class DNet(nn.Module):
    """Seed 002, Table 1: the discriminator for 28x28 MNIST. Returns a logit per image."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1)  # 1
        self.relu1 = nn.ReLU()  # 2
        self.pool1 = nn.MaxPool2d(2, 2)  # 3: 28 -> 14
        self.conv2 = nn.Conv2d(2, 4, kernel_size=3, stride=1, padding=1)  # 4
        self.relu2 = nn.ReLU()  # 5
        self.pool2 = nn.MaxPool2d(2, 2)  # 6: 14 -> 7
        self.conv3 = nn.Conv2d(4, 8, kernel_size=3, stride=1, padding=0)  # 7: 7 -> 5
        self.relu3 = nn.ReLU()  # 8
        self.fc = nn.Linear(8 * 5 * 5, 1)  # 9 (remark 1: flattened from layer 8)
        kaiming_init(self)

    def forward(self, x):
        h = self.pool1(self.relu1(self.conv1(x)))
        h = self.pool2(self.relu2(self.conv2(h)))
        h = self.relu3(self.conv3(h))  # (B, 8, 5, 5)
        return self.fc(h.flatten(1))  # (B, 1)


class GNet(nn.Module):
    """Seed 002, Table 2: the generator, z (B, zdim) -> images (B, 1, 28, 28) in (0, 1)."""

    def __init__(self, zdim: int = 64):
        super().__init__()
        self.fc = nn.Linear(zdim, 1568)  # 1
        self.lrelu1 = nn.LeakyReLU(0.2)  # 2
        self.up1 = nn.Upsample(scale_factor=2)  # 3 (remark 2: from (32, 7, 7))
        self.conv1 = nn.Conv2d(32, 16, kernel_size=3, stride=1, padding=1)  # 4
        self.lrelu2 = nn.LeakyReLU(0.2)  # 5
        self.up2 = nn.Upsample(scale_factor=2)  # 6
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, stride=1, padding=1)  # 7
        self.lrelu3 = nn.LeakyReLU(0.2)  # 8
        self.conv3 = nn.Conv2d(8, 1, kernel_size=3, stride=1, padding=1)  # 9
        self.sigmoid = nn.Sigmoid()  # 10
        kaiming_init(self)

    def forward(self, z):
        h = self.lrelu1(self.fc(z)).view(-1, 32, 7, 7)
        h = self.lrelu2(self.conv1(self.up1(h)))  # (B, 16, 14, 14)
        h = self.lrelu3(self.conv2(self.up2(h)))  # (B, 8, 28, 28)
        return self.sigmoid(self.conv3(h))


def kaiming_init(module: nn.Module) -> None:
    """Question 4.3: kaiming-uniform weights and zero biases for every layer that has them."""
    for layer in module.children():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DCGenerator(nn.Module):
    """DCGAN: z -> 4x4 -> ... -> size x size by stride-2 transposed convs, BatchNorm, ReLU; sigmoid out."""

    def __init__(self, zdim: int, channels: int, size: int, width: int = 64):
        super().__init__()
        n_up = {32: 3, 64: 4}[size]
        c = width * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(zdim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class DCDiscriminator(nn.Module):
    """DCGAN: stride-2 convs with BatchNorm and LeakyReLU(0.2) down to 4x4, then a 4x4 conv to one logit."""

    def __init__(self, channels: int, size: int, width: int = 64):
        super().__init__()
        n_down = {32: 3, 64: 4}[size]
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x):
        return self.net(x).flatten(1)  # (B, 1)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass
class Config:
    arch: str = opt("seed", "seed: DNet/GNet of seed 002 (28x28 grey); dcgan: 32x32 or 64x64", choices=["seed", "dcgan"])
    latent_dim: int = opt(64, "dimension of z (seed 002: 64)", min=1)
    prior: str = opt("uniform", "z ~ U(-1, 1) (seed 002) or N(0, I)", choices=["uniform", "normal"])
    width: int = opt(64, "DCGAN base width", min=1)


# Adam beta1 = 0.5 (Radford et al.) rather than the starter's 0.9: with 0.9 this tiny discriminator lets
# training drift after ~15 epochs (sparse strokes by epoch 29); with 0.5 the grids stay digit-like to epoch 30.
TRAIN_DEFAULTS = {"batch_size": 256, "lr": 2e-4, "epochs": 30, "steps": 0, "grad_clip": 0.0, "betas": [0.5, 0.999],
                  "sample_each_epoch": True, "channels_last": True}
DATA_DEFAULTS = {"dataset": "mnist"}
DATA_KIND = "image"
IMAGE_SIZE = 32


class GAN(GenerativeModel):
    ema_target = "generator"

    def __init__(self, shape, arch="seed", latent_dim=64, prior="uniform", width=64):
        super().__init__()
        self.shape, self.latent_dim, self.prior = tuple(shape), latent_dim, prior
        if arch == "seed":
            self.discriminator, self.generator = DNet(), GNet(latent_dim)
        else:
            self.discriminator = DCDiscriminator(shape[0], shape[-1], width)
            self.generator = DCGenerator(latent_dim, shape[0], shape[-1], width)

    def optimizer_groups(self):
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def draw_z(self, n: int, generator=None):
        if self.prior == "uniform":
            return 2 * torch.rand(n, self.latent_dim, generator=generator, device=self.device) - 1
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def batch_z(self, x):
        """z for a training batch: noise that shards with the batch under torchrun."""
        ref = x.new_empty(len(x), self.latent_dim)
        return 2 * parallel.rand_like(ref) - 1 if self.prior == "uniform" else parallel.randn_like(ref)

    def d_loss(self, batch):
        x, z = batch
        with torch.no_grad():  # no graph for a backward that never runs
            x_fake = self.generator(z)
        real, fake = self.discriminator(x), self.discriminator(x_fake)
        return {"loss": bce_real(real) + bce_fake(fake), "d_real": torch.sigmoid(real).mean(),
                "d_fake": torch.sigmoid(fake).mean()}

    def g_loss(self, batch):
        _, z = batch
        return {"loss": bce_real(self.discriminator(self.generator(z)))}  # non-saturating

    def train_step(self, batch, ctx):
        x = batch[0]
        z = self.batch_z(x)  # one z for both steps, as the seed's starter code
        d = ctx.minimize("d", self.d_loss, (x, z))
        g = ctx.minimize("g", self.g_loss, (x, z))
        return {"loss_d": d["loss"], "loss_g": g["loss"], "d_real": d["d_real"], "d_fake": d["d_fake"]}

    @torch.no_grad()
    def eval_step(self, batch):
        x = batch[0]
        z = self.batch_z(x)
        d = self.d_loss((x, z))
        return {"loss_d": d["loss"], "loss_g": self.g_loss((x, z))["loss"], "d_real": d["d_real"], "d_fake": d["d_fake"]}

    @torch.no_grad()
    def sample(self, n, generator=None, **_):
        return self.generator(self.draw_z(n, generator))


def build(cfg: Config, shape, num_classes=0) -> GAN:
    check_shape(cfg, shape)
    return GAN(shape, cfg.arch, cfg.latent_dim, cfg.prior, cfg.width)


def validate(cfg: Config, data_cfg) -> None:
    if cfg.arch == "seed" and (data_cfg.image_size not in (0, 28) or data_cfg.channels not in (0, 1)):
        raise GenlabError("the seed 002 DNet/GNet take 28x28 grey images; use --arch dcgan for other sizes")
    if cfg.arch == "dcgan" and data_cfg.image_size not in (0, 32, 64):
        raise GenlabError("the DCGAN takes 32x32 or 64x64 images (--image-size 32 or 64)")


def check_shape(cfg: Config, shape) -> None:
    if cfg.arch == "seed" and tuple(shape) != (1, 28, 28):
        raise GenlabError(f"the seed 002 DNet/GNet take 1x28x28 images, this data set gives {tuple(shape)}; "
                          f"use MNIST or Fashion-MNIST, or --arch dcgan")
    if cfg.arch == "dcgan" and shape[-1] not in (32, 64):
        raise GenlabError(f"the DCGAN takes 32x32 or 64x64 images, this data set gives {shape[-1]}x{shape[-1]}")


def figures(model, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    """A 10 x 10 grid of samples next to 100 real test images."""
    from genlab.viz import samples_beside_data

    return samples_beside_data(model, data, out_dir, generator)
