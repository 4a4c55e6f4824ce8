"""CycleGAN: unpaired image-to-image translation (Zhu et al. 2017, arXiv:1703.10593; seed 000 Q3).

Two generators G: X -> Y and F: Y -> X play two adversarial games, against D_Y (real y or G(x))
and D_X (real x or F(y)); cycle consistency F(G(x)) ~ x and G(F(y)) ~ y rules out mappings that
fool the discriminators but forget the input. Losses as in the paper:
- least-squares adversarial terms (Mao et al. 2017), the discriminators' halved
- lambda_cyc * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1), lambda_cyc = 10
- optionally identity terms |G(y) - y|_1 + |F(x) - x|_1
ResNet generators (c7s1-w, two stride-2 downs, residual blocks, two ups) and 70x70-style
PatchGAN discriminators with instance norm, scaled down for small images; no image pool.

The domains come from `--dataset` (X) and `--dataset-b` (Y), folders or named sets, unpaired.
A demonstration with a known right answer: `--dataset mnist --transform-b invert --disjoint true`
draws X and Y from disjoint halves of MNIST, Y colour-inverted, so success is a number: the mean
absolute error between G(x) and the true inversion of each test image, against the identity's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel

TRANSFORMS = {"none": None, "invert": lambda x: 255 - x}


def cycle_consistency(x, forward, backward):
    """Mean |backward(forward(x)) - x|: zero exactly when backward inverts forward on x."""
    return (backward(forward(x)) - x).abs().mean()


def lsgan_real(pred):
    return ((pred - 1) ** 2).mean()


def lsgan_fake(pred):
    return (pred ** 2).mean()


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
                                 nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.net(x)


class ResnetGenerator(nn.Module):
    """c7s1-w, d2w, d4w, R4w x n_blocks, u2w, uw, c7s1-C, sigmoid (images in [0, 1])."""

    def __init__(self, channels: int, width: int = 32, n_blocks: int = 4):
        super().__init__()
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU()]
        for k in (1, 2):
            layers += [nn.Conv2d(w * k, w * 2 * k, 3, stride=2, padding=1), nn.InstanceNorm2d(w * 2 * k), nn.ReLU()]
        layers += [ResBlock(4 * w) for _ in range(n_blocks)]
        for k in (4, 2):
            layers += [nn.ConvTranspose2d(w * k, w * k // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w * k // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """Overlapping-patch real/fake scores: 4x4 convs, stride 2 twice then 1, instance norm, LeakyReLU(0.2)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 1, 1), nn.InstanceNorm2d(4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 4, 1, 1),
        )

    def forward(self, x):
        return self.net(x)  # (B, 1, h, w) patch scores


def init_normal(module: nn.Module) -> None:
    """The paper's initialisation: conv weights from N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass
class Config:
    dataset_b: str = opt("", "domain Y (--dataset is X); empty: the same data set as X")
    transform_b: str = opt("none", "applied to every image of Y; invert gives a known right answer",
                           choices=list(TRANSFORMS))
    disjoint: bool = opt(False, "when X and Y come from one data set, draw them from disjoint halves (unpaired)")
    width: int = opt(32, "base width of generators and discriminators", min=1)
    n_blocks: int = opt(4, "residual blocks in each generator", min=0)
    cycle_weight: float = opt(10.0, "lambda of the cycle-consistency loss", min=0.0)
    identity_weight: float = opt(0.0, "weight of the identity loss (the paper: 0.5 x lambda for photos)", min=0.0)


TRAIN_DEFAULTS = {"batch_size": 16, "lr": 2e-4, "betas": [0.5, 0.999], "steps": 2000, "grad_clip": 0.0}
DATA_DEFAULTS = {"dataset": "mnist"}
DATA_KIND = "image"
IMAGE_SIZE = 32


class CycleGAN(GenerativeModel):
    def __init__(self, shape, width=32, n_blocks=4, cycle_weight=10.0, identity_weight=0.0, known_mapping=False):
        super().__init__()
        if shape[-1] % 4 or shape[-2] % 4:
            raise GenlabError(f"cyclegan needs image sides divisible by 4, got {shape[-2]}x{shape[-1]}")
        C = shape[0]
        self.shape, self.cycle_weight, self.identity_weight = tuple(shape), cycle_weight, identity_weight
        self.known_mapping = known_mapping
        self.G, self.F = ResnetGenerator(C, width, n_blocks), ResnetGenerator(C, width, n_blocks)  # X->Y, Y->X
        self.D_X, self.D_Y = PatchDiscriminator(C, width), PatchDiscriminator(C, width)
        init_normal(self)

    def optimizer_groups(self):
        return {"g": list(self.G.parameters()) + list(self.F.parameters()),
                "d": list(self.D_X.parameters()) + list(self.D_Y.parameters())}

    def g_loss(self, batch):
        x, y = batch
        fake_y, fake_x = self.G(x), self.F(y)
        adv = lsgan_real(self.D_Y(fake_y)) + lsgan_real(self.D_X(fake_x))
        cyc = (self.F(fake_y) - x).abs().mean() + (self.G(fake_x) - y).abs().mean()
        loss = adv + self.cycle_weight * cyc
        out = {"adv": adv, "cycle": cyc}
        if self.identity_weight > 0:
            idt = (self.G(y) - y).abs().mean() + (self.F(x) - x).abs().mean()
            loss = loss + self.identity_weight * idt
            out["identity"] = idt
        return {"loss": loss, **out}

    def d_loss(self, batch):
        x, y = batch
        with torch.no_grad():
            fake_y, fake_x = self.G(x), self.F(y)
        d_y = 0.5 * (lsgan_real(self.D_Y(y)) + lsgan_fake(self.D_Y(fake_y)))
        d_x = 0.5 * (lsgan_real(self.D_X(x)) + lsgan_fake(self.D_X(fake_x)))
        return {"loss": d_x + d_y, "d_x": d_x, "d_y": d_y}

    def train_step(self, batch, ctx):
        x, _, y = batch
        g = ctx.minimize("g", self.g_loss, (x, y))
        d = ctx.minimize("d", self.d_loss, (x, y))
        return {"loss_g": g.pop("loss"), "loss_d": d.pop("loss"), **g, **d}

    @torch.no_grad()
    def eval_step(self, batch):
        x, _, y = batch
        out = {k: v for k, v in self.g_loss((x, y)).items() if k != "loss"}
        if self.known_mapping:  # test pairs are aligned: y is the true translation of x
            out["mae_G"] = (self.G(x) - y).abs().mean()
            out["mae_F"] = (self.F(y) - x).abs().mean()
            out["mae_identity"] = (x - y).abs().mean()
        return out

    @torch.no_grad()
    def translate(self, x, direction: str = "xy"):
        return self.G(x) if direction == "xy" else self.F(x)

    def sample(self, n, generator=None, **_):
        raise GenlabError("cyclegan translates images rather than sampling them: see the run's figures, "
                          "or genlab.load(RUN).translate(x)")

    @torch.no_grad()
    def preview(self, n, generator, data, **_):
        """Rows of x, G(x), F(G(x)) for test images of X."""
        x = data.floats("test")[: max(1, n // 3)].to(self.device)
        fake = self.G(x)
        return torch.stack([x, fake, self.F(fake)], 1).flatten(0, 1)


def prepare(data, cfg):
    """Add domain Y to the loaded domain X: another data set or the same, optionally disjoint and transformed."""
    from genlab.data import load_dataset

    mc = cfg.model
    same = mc.dataset_b in ("", cfg.data.dataset)
    if mc.disjoint and not same:
        raise GenlabError("--disjoint splits one data set in two; it needs --dataset-b empty or equal to --dataset")
    if same:
        train_b, test_b = data.train, data.test
    else:
        b = load_dataset(mc.dataset_b, cfg.data.data_dir, data.shape[-1], data.shape[0], cfg.data.download)
        if b.kind != "image" or b.shape != data.shape:
            raise GenlabError(f"domain Y ({mc.dataset_b}) gives shape {b.shape}, domain X {data.shape}")
        train_b, test_b = b.train, b.test
    if mc.disjoint:
        half = len(data.train) // 2
        data.train, train_b = data.train[:half], train_b[half:]
        data.train_labels = data.train_labels[:half] if data.train_labels is not None else None
    transform = TRANSFORMS[mc.transform_b]
    if transform is not None:
        train_b, test_b = transform(train_b), transform(test_b)
    data.train_b, data.test_b = train_b, test_b
    return data


def build(cfg: Config, shape, num_classes=0) -> CycleGAN:
    known = cfg.transform_b != "none" and cfg.dataset_b == ""
    return CycleGAN(shape, cfg.width, cfg.n_blocks, cfg.cycle_weight, cfg.identity_weight, known)


@torch.no_grad()
def figures(model: CycleGAN, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    """Translations of 10 test images each way: x, G(x), F(G(x)) and y, F(y), G(F(y))."""
    from genlab.viz import save_grid

    x = data.floats("test")[:10].to(model.device)
    y = (data.test_b[10:20].float() / 255).to(model.device)
    paths = [f"{out_dir}/translate_xy.png", f"{out_dir}/translate_yx.png"]
    gx, fy = model.G(x), model.F(y)
    save_grid(paths[0], torch.stack([x, gx, model.F(gx)], 1).flatten(0, 1), nrow=3)
    save_grid(paths[1], torch.stack([y, fy, model.G(fy)], 1).flatten(0, 1), nrow=3)
    return paths
