"""GAN inpainting (seed 001, question 4.1; Pathak et al. 2016, "Context Encoders").

With a binary mask m (1 = missing pixel):
- the completion x' = (1 - m) * x + m * g(x * (1 - m), m): the U-Net g sees the image with the
  hole zeroed and the mask, never the missing pixels                                 (4.1.a)
- the masked squared error  l_mse = sum(m * (x' - x)^2) / sum(m): only missing pixels count,
  averaged over them so the weight does not depend on the hole's size              (4.1.b)
- the GAN objective: D learns real x from completions x'; g also minimises BCE(D(x'), 1)  (4.1.c)
Masks are random boxes or free-form strokes (Yu et al. 2019), drawn afresh for every batch.
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
from genlab.gan import bce_fake, bce_real
from genlab.unet import norm


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.LeakyReLU(0.2),
                         nn.Conv2d(c_out, c_out, 3, padding=1), norm(c_out), nn.LeakyReLU(0.2))


class InpaintUNet(nn.Module):
    """g(x * (1 - m), m) -> an image in (0, 1): a plain U-Net over the masked image and the mask."""

    def __init__(self, channels: int, width: int = 32, depth: int = 3):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.inc = conv_block(channels + 1, widths[0])
        self.downs = nn.ModuleList(nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1) for i in range(depth))
        self.down_blocks = nn.ModuleList(conv_block(widths[i], widths[i + 1]) for i in range(depth))
        self.up_blocks = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x_masked, m):
        h = self.inc(torch.cat([x_masked, m], 1))
        skips = []
        for down, block in zip(self.downs, self.down_blocks):
            skips.append(h)
            h = block(down(h))
        for block in self.up_blocks:
            skip = skips.pop()
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return torch.sigmoid(self.out(h))


class Discriminator(nn.Module):
    """Stride-2 convs with LeakyReLU down to at most 4x4, then one logit: real image or completion."""

    def __init__(self, channels: int, size: int, width: int = 32):
        super().__init__()
        layers, c, s = [], channels, size
        while s > 4:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c, s, width = width, (s + 1) // 2, width * 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * s * s, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


# ---------------------------------------------------------------------------
# Masks (1 = missing)


def box_masks(u: torch.Tensor, size: int, lo: float = 0.25, hi: float = 0.5) -> torch.Tensor:
    """One rectangle per row of u (B, 4) ~ U[0, 1): sides in [lo, hi] x size, anywhere inside the image."""
    h = (lo + (hi - lo) * u[:, 0]) * size
    w = (lo + (hi - lo) * u[:, 1]) * size
    top, left = u[:, 2] * (size - h), u[:, 3] * (size - w)
    r = torch.arange(size, device=u.device).float() + 0.5
    rows = (r[None] >= top[:, None]) & (r[None] < (top + h)[:, None])  # (B, size)
    cols = (r[None] >= left[:, None]) & (r[None] < (left + w)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None]  # (B, 1, size, size)


def stroke_masks(u: torch.Tensor, size: int, strokes: int = 3, vertices: int = 4) -> torch.Tensor:
    """Free-form masks: each image gets `strokes` polylines of `vertices` random points, 1/8 of the side thick.

    u: (B, strokes * vertices * 2) ~ U[0, 1), the vertex coordinates.
    """
    B = u.shape[0]
    pts = u.view(B, strokes, vertices, 2) * size  # (B, S, V, 2)
    a, b = pts[:, :, :-1], pts[:, :, 1:]  # segment ends (B, S, V-1, 2)
    r = torch.arange(size, device=u.device).float() + 0.5
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).view(1, 1, 1, -1, 2)  # (1, 1, 1, HW, 2)
    ab = (b - a)[..., None, :]
    t = (((grid - a[..., None, :]) * ab).sum(-1) / (ab ** 2).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    dist = (grid - (a[..., None, :] + t[..., None] * ab)).norm(dim=-1)  # (B, S, V-1, HW)
    hit = (dist < size / 16).flatten(1, 2).any(1)  # (B, HW)
    return hit.float().view(B, 1, size, size)


@dataclass
class Config:
    width: int = opt(32, "U-Net base width", min=1)
    depth: int = opt(3, "U-Net down-sampling steps", min=1)
    mask: str = opt("mixed", "training masks: box, free-form strokes, or half of each", choices=["box", "free", "mixed"])
    adv_weight: float = opt(0.01, "weight of the adversarial term in the generator's loss", min=0.0)


TRAIN_DEFAULTS = {"batch_size": 64, "lr": 2e-4, "epochs": 5, "steps": 0, "betas": [0.5, 0.999], "grad_clip": 0.0}
DATA_DEFAULTS = {"dataset": "mnist"}
DATA_KIND = "image"
IMAGE_SIZE = 32


class InpaintGAN(GenerativeModel):
    ema_target = "generator"

    def __init__(self, shape, width=32, depth=3, mask="mixed", adv_weight=0.01):
        super().__init__()
        self.shape, self.mask_type, self.adv_weight = tuple(shape), mask, adv_weight
        self.generator = InpaintUNet(shape[0], width, depth)
        self.discriminator = Discriminator(shape[0], shape[-1])

    def optimizer_groups(self):
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def complete(self, x, m):
        """x' = (1 - m) x + m g(x (1 - m), m) (4.1.a)."""
        return (1 - m) * x + m * self.generator(x * (1 - m), m)

    def masks(self, x, generator=None):
        """Random training masks for the batch x: boxes, strokes, or each with probability 1/2."""
        B, size = x.shape[0], self.shape[-1]
        n = 1 + 4 + 24  # choice, box, strokes
        if generator is None:
            u = parallel.rand_like(x.new_empty(B, n))
        else:
            u = torch.rand(B, n, generator=generator, device=x.device)
        box, free = box_masks(u[:, 1:5], size), stroke_masks(u[:, 5:], size)
        if self.mask_type == "box":
            return box
        if self.mask_type == "free":
            return free
        return torch.where(u[:, :1, None, None] < 0.5, box, free)

    @staticmethod
    def masked_mse(x_completed, x, m):
        """Squared error over the missing pixels only, averaged over them (4.1.b)."""
        return ((m * (x_completed - x)) ** 2).sum() / (m.sum() * x.shape[1]).clamp(min=1)

    def d_loss(self, batch):
        x, m = batch
        with torch.no_grad():  # no graph for a backward that never runs
            x_fake = self.complete(x, m)
        real, fake = self.discriminator(x), self.discriminator(x_fake)
        return {"loss": bce_real(real) + bce_fake(fake), "d_real": torch.sigmoid(real).mean(),
                "d_fake": torch.sigmoid(fake).mean()}

    def g_loss(self, batch):
        x, m = batch
        xc = self.complete(x, m)
        mse, adv = self.masked_mse(xc, x, m), bce_real(self.discriminator(xc))
        return {"loss": mse + self.adv_weight * adv, "mse": mse, "adv": adv}

    def train_step(self, batch, ctx):
        x = batch[0]
        m = self.masks(x)
        d = ctx.minimize("d", self.d_loss, (x, m))
        g = ctx.minimize("g", self.g_loss, (x, m))
        return {"loss_d": d["loss"], "loss_g": g["loss"], "mse": g["mse"], "adv": g["adv"],
                "d_real": d["d_real"], "d_fake": d["d_fake"]}

    @torch.no_grad()
    def eval_step(self, batch):
        x = batch[0]
        m = self.masks(x)
        g, d = self.g_loss((x, m)), self.d_loss((x, m))
        return {"mse": g["mse"], "adv": g["adv"], "loss_d": d["loss"], "d_real": d["d_real"], "d_fake": d["d_fake"]}

    def sample(self, n, generator=None, **_):
        raise GenlabError("inpaint-gan completes images rather than sampling them: use genlab inpaint RUN --image FILE")

    @torch.no_grad()
    def inpaint(self, x, m, generator=None):
        return self.complete(x, m)

    @torch.no_grad()
    def preview(self, n, generator, data, **_):
        """Rows of (masked input, completion, original) for test images."""
        k = max(1, n // 3)
        x = data.floats("test")[:k].to(self.device)
        m = self.masks(x, generator)
        shown = x * (1 - m) + m * 0.5  # the hole in grey
        return torch.stack([shown, self.complete(x, m), x], 1).flatten(0, 1)


def build(cfg: Config, shape, num_classes=0) -> InpaintGAN:
    return InpaintGAN(shape, cfg.width, cfg.depth, cfg.mask, cfg.adv_weight)


@torch.no_grad()
def figures(model: InpaintGAN, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    """Completions of test images, with box masks and with free-form masks (masked, completed, original)."""
    from genlab.viz import inpaint_table

    paths = []
    x = data.floats("test")[:18].to(model.device)
    for kind in ("box", "free"):
        u = torch.rand(len(x), 29, generator=generator, device=model.device)
        m = box_masks(u[:, 1:5], model.shape[-1]) if kind == "box" else stroke_masks(u[:, 5:], model.shape[-1])
        paths.append(f"{out_dir}/inpaint_{kind}.png")
        inpaint_table(paths[-1], x, m, model.complete(x, m), title=f"{kind} masks")
    return paths
