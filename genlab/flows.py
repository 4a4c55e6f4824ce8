"""Normalizing flows: RealNVP (Dinh et al. 2017, arXiv:1605.08803) with Glow's actnorm and invertible
1x1 convolutions (Kingma and Dhariwal 2018, arXiv:1807.03039).

Seed 003 Q3: if z_s = g_s(z_{s-1}) are invertible maps from a base z_0 ~ q_0 to the data, then
    log q_t(z_t) = log q_0(z_0) - sum_s log |det dg_s / dz_{s-1}|.
Here every layer is written in the other direction, data to base, f_s = g_s^{-1}, returning
(f_s(x), log |det df_s/dx|); since log |det df_s| = -log |det dg_s|, the data's log density is
    log p(x) = log q_0(f(x)) + sum_s log |det df_s|,
which is what `log_prob` adds up, layer by layer.

Layers (each `forward(x) -> (y, log_det)` and `inverse(y) -> x`):
- affine coupling y = b x + (1 - b)(x exp(s(b x)) + t(b x)) with a checkerboard or channel mask b
- actnorm: a per-channel affine map initialised from the first batch
- invertible 1x1 convolution, LU-parameterised so that log |det W| = sum log |s|
- squeeze (space to depth) and the multi-scale split that factors out half the channels
8-bit images are dequantised, y = (x 255 + u) / 256, and passed through a logit. With uniform u,
-log P(x) <= -E_u log p(y) + D log 256; with variational dequantisation (Ho et al. 2019, Flow++,
arXiv:1902.00275) u ~ q(u | x) is learned and -log P(x) <= E_q[-log p(y) + log q(u | x)] + D log 256,
a bound that training tightens. Reported in nats and bits/dim. 2-D flows (coupling layers with MLP
conditioners) draw density heat-maps of the toy sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab import parallel
from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel

LOG_2PI = math.log(2 * math.pi)


def standard_normal_logp(z):
    return -0.5 * (z ** 2 + LOG_2PI).flatten(1).sum(1)


# ---------------------------------------------------------------------------
# Layers


class AffineCoupling(nn.Module):
    """y = b x + (1 - b) (x exp(s) + t), (s, t) = net(b x): log |det| = sum (1 - b) s."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask)  # (1, C, H, W) or (1, D); 1 = passed through unchanged
        self.net = net
        self.scale = nn.Parameter(torch.ones(1, *mask.shape[1:2], *([1] * (mask.dim() - 2))))

    def params(self, xa):
        h = self.net(torch.cat([xa, self.mask.expand(xa.shape[0], *self.mask.shape[1:])], 1))
        s_raw, t = h.chunk(2, dim=1)
        s = self.scale * torch.tanh(s_raw)  # bounded scales keep the flow stable early in training
        return s * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x):
        s, t = self.params(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y):
        s, t = self.params(y * self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * torch.exp(-s))


class ActNorm(nn.Module):
    """y = (x + b) exp(logs) per channel; b, logs from the first batch so that y has zero mean, unit variance."""

    def __init__(self, channels: int, image: bool = True):
        super().__init__()
        shape = (1, channels, 1, 1) if image else (1, channels)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.logs = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros(()))
        self.ready = False  # the buffer's value, known on the host: checking it per step would wait on the device

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.ready = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x):
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        self.bias.copy_(-x.mean(dims, keepdim=True))
        self.logs.copy_(-torch.log(x.std(dims, keepdim=True) + 1e-6))
        parallel.all_reduce_mean_([self.bias.data, self.logs.data])
        self.initialized.fill_(1)
        self.ready = True

    def forward(self, x):
        if self.training and not self.ready:
            self.initialize(x)
        spatial = x[0, 0].numel() if x.dim() == 4 else 1
        return (x + self.bias) * torch.exp(self.logs), self.logs.sum().expand(x.shape[0]) * spatial

    def inverse(self, y):
        return y * torch.exp(-self.logs) - self.bias


class InvConv1x1(nn.Module):
    """y = W x at every pixel, W = P L (U + diag(sign * exp(log_s))): log |det| = H W sum log_s."""

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w0 = torch.linalg.qr(torch.randn(channels, channels, generator=g))[0]  # a random rotation
        P, L, U = torch.linalg.lu(w0)
        s = torch.diagonal(U)
        self.register_buffer("P", P)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower", torch.tril(torch.ones(channels, channels), -1))
        self.L = nn.Parameter(L * self.lower)
        self.U = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self):
        eye = torch.eye(len(self.log_s), device=self.L.device)
        return self.P @ (self.L * self.lower + eye) @ (self.U * self.lower.T + torch.diag(self.sign_s * self.log_s.exp()))

    def forward(self, x):
        return F.conv2d(x, self.weight()[:, :, None, None]), self.log_s.sum().expand(x.shape[0]) * x[0, 0].numel()

    def inverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


def squeeze(x):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block becomes four channels."""
    B, C, H, W = x.shape
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)


def unsqueeze(x):
    B, C, H, W = x.shape
    return x.view(B, C // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3).reshape(B, C // 4, 2 * H, 2 * W)


def checkerboard_mask(channels: int, h: int, w: int, parity: int) -> torch.Tensor:
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return ((ij + parity) % 2).float().expand(1, channels, h, w).clone()


def channel_mask(channels: int, h: int, w: int, parity: int) -> torch.Tensor:
    m = torch.zeros(1, channels, h, w)
    half = channels // 2
    if parity == 0:
        m[:, :half] = 1
    else:
        m[:, half:] = 1
    return m


class ConvNet(nn.Module):
    """The coupling conditioner for images: conv, residual blocks, conv (zero-initialised: the layer starts as the identity)."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.GroupNorm(min(8, hidden), hidden), nn.ReLU(),
                                                  nn.Conv2d(hidden, hidden, 3, padding=1),
                                                  nn.GroupNorm(min(8, hidden), hidden), nn.ReLU(),
                                                  nn.Conv2d(hidden, hidden, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class MLPNet(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, d_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return self.net(x)


class Dequantiser(nn.Module):
    """q(u | x) on (0, 1)^D: u = sigmoid(mu(x) + exp(log_s(x)) eps), eps ~ N(0, I).

    log q(u | x) = log N(eps) - sum log_s - sum log sigmoid'(a), a = mu + exp(log_s) eps, since
    du/deps = exp(log_s) sigmoid'(a) elementwise; sigmoid'(a) = sigmoid(a) sigmoid(-a).
    """

    def __init__(self, channels: int, hidden: int, blocks: int):
        super().__init__()
        self.net = ConvNet(channels, 2 * channels, hidden, blocks)

    def params(self, x):
        mu, log_s = self.net(2 * x - 1).chunk(2, dim=1)
        return mu, 3 * torch.tanh(log_s / 3)  # scales within (e^-3, e^3)

    @staticmethod
    def density(eps, a, log_s):
        """log q(u | x) = log N(eps) - sum log |du/deps| at a = mu + exp(log_s) eps."""
        return standard_normal_logp(eps) - (log_s + F.logsigmoid(a) + F.logsigmoid(-a)).flatten(1).sum(1)

    def forward(self, x, eps):
        """(u, log q(u | x)) for the standard normal draws eps."""
        mu, log_s = self.params(x)
        a = mu + log_s.exp() * eps
        return torch.sigmoid(a), self.density(eps, a, log_s)

    def log_q(self, x, u):
        """log q(u | x) of given u, by inverting the map."""
        mu, log_s = self.params(x)
        a = torch.log(u) - torch.log1p(-u)
        return self.density((a - mu) / log_s.exp(), a, log_s)


# ---------------------------------------------------------------------------
# Flows


class MultiScaleFlow(nn.Module):
    """RealNVP's multi-scale architecture with Glow steps.

    At each scale: `checkerboard` checkerboard couplings; then, but at the last scale, a squeeze;
    `steps` Glow steps (actnorm, 1x1 conv, channel coupling); and, but at the last scale, half the
    channels leave as latents. checkerboard = 0 gives Glow's architecture. Sides must halve evenly.
    """

    def __init__(self, shape, scales: int = 2, steps: int = 3, hidden: int = 64, blocks: int = 2,
                 checkerboard: int = 3):
        super().__init__()
        C, H, W = shape
        self.stages = nn.ModuleList()  # per scale: the layers before the split
        self.split_shapes = []
        seed = 0
        for scale in range(scales):
            last = scale == scales - 1
            layers = [AffineCoupling(checkerboard_mask(C, H, W, k % 2), ConvNet(2 * C, 2 * C, hidden, blocks))
                      for k in range(checkerboard)]
            if not last:
                if H % 2 or W % 2:
                    raise GenlabError(f"{scales} scales need image sides divisible by {2 ** (scales - 1)}; got {H}x{W}")
                layers.append(Squeeze())
                C, H, W = 4 * C, H // 2, W // 2
            for k in range(steps if C >= 2 else 0):
                seed += 1
                layers += [ActNorm(C), InvConv1x1(C, seed),
                           AffineCoupling(channel_mask(C, H, W, k % 2), ConvNet(2 * C, 2 * C, hidden, blocks))]
            if last:
                layers.append(ActNorm(C))
            else:
                self.split_shapes.append((C // 2, H, W))
                C = C - C // 2
            if not any(isinstance(m, AffineCoupling) for m in layers):
                raise GenlabError("a flow scale without coupling layers: raise checkerboard_steps or coupling_steps")
            self.stages.append(nn.ModuleList(layers))
        self.final_shape = (C, H, W)

    def forward(self, x):
        """x -> (list of latents, log |det|)."""
        log_det = torch.zeros(x.shape[0], device=x.device)
        zs = []
        for i, stage in enumerate(self.stages):
            for layer in stage:
                x, ld = layer(x)
                log_det = log_det + ld
            if i < len(self.stages) - 1:
                c = self.split_shapes[i][0]
                zs.append(x[:, :c])
                x = x[:, c:]
        zs.append(x)
        return zs, log_det

    def inverse(self, zs):
        x = zs[-1]
        for i in reversed(range(len(self.stages))):
            if i < len(self.stages) - 1:
                x = torch.cat([zs[i], x], 1)
            for layer in reversed(self.stages[i]):
                x = layer.inverse(x)
        return x

    def latent_shapes(self):
        return self.split_shapes + [self.final_shape]


class Squeeze(nn.Module):
    def forward(self, x):
        return squeeze(x), torch.zeros(x.shape[0], device=x.device)

    def inverse(self, y):
        return unsqueeze(y)


class CouplingFlow2d(nn.Module):
    """Alternating affine couplings with MLP conditioners and actnorm, for 2-D points."""

    def __init__(self, dim: int = 2, layers: int = 8, hidden: int = 128):
        super().__init__()
        mods = []
        for k in range(layers):
            mask = torch.zeros(1, dim)
            mask[0, k % dim] = 1
            mods += [ActNorm(dim, image=False), AffineCoupling(mask, MLPNet(2 * dim, 2 * dim, hidden))]
        self.layers = nn.ModuleList(mods)

    def forward(self, x):
        log_det = torch.zeros(x.shape[0], device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return [x], log_det

    def inverse(self, zs):
        x = zs[0]
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        return x

    def latent_shapes(self):
        return [(self.layers[0].bias.shape[1],)]


# ---------------------------------------------------------------------------
# The family


@dataclass
class Config:
    scales: int = opt(2, "image flows: scales (each but the last squeezes and factors out half)", min=1)
    coupling_steps: int = opt(3, "image flows: Glow steps (actnorm, 1x1 conv, channel coupling) per scale", min=0)
    checkerboard_steps: int = opt(3, "image flows: checkerboard couplings per scale (0: Glow's architecture)", min=0)
    hidden: int = opt(64, "width of the coupling networks", min=1)
    blocks: int = opt(2, "image flows: residual blocks per coupling network", min=0)
    layers_2d: int = opt(8, "2-D flows: coupling layers", min=1)
    logit_alpha: float = opt(1e-3, "images: y -> logit(alpha + (1 - 2 alpha) y) before the flow", min=0.0, max=0.49)
    dequantise: str = opt("uniform", "images: u ~ U(0, 1), or a learned q(u | x) (Flow++'s variational "
                                     "dequantisation)", choices=["uniform", "variational"])


TRAIN_DEFAULTS = {"batch_size": 256, "lr": 1e-3, "steps": 5000, "grad_clip": 100.0, "warmup_steps": 200,
                  "final_eval_n": 0}
TRAIN_DEFAULTS_BY_KIND = {"image": {"batch_size": 64, "steps": 10000}}
DATA_DEFAULTS = {"dataset": "moons"}
DATA_KIND = "any"
IMAGE_SIZE = 32


class Flow(GenerativeModel):
    def __init__(self, shape, scales=2, steps=3, hidden=64, blocks=2, layers_2d=8, logit_alpha=1e-3, checkerboard=3,
                 dequantise="uniform"):
        super().__init__()
        self.shape, self.alpha = tuple(shape), logit_alpha
        self.image = len(shape) == 3
        self.flow = MultiScaleFlow(shape, scales, steps, hidden, blocks, checkerboard) if self.image else \
            CouplingFlow2d(shape[0], layers_2d, hidden)
        self.dequantiser = Dequantiser(shape[0], hidden, 1) if self.image and dequantise == "variational" else None

    def dequantisation_noise(self, x, generator=None):
        """The noise `dequantise` takes: uniform u itself, or the standard normal eps of q(u | x)."""
        if generator is None:
            return parallel.rand_like(x) if self.dequantiser is None else parallel.randn_like(x)
        draw = torch.rand if self.dequantiser is None else torch.randn
        return draw(x.shape, generator=generator, device=x.device)

    def dequantise(self, x, noise):
        """(u in (0, 1)^D, log q(u | x)): log q = 0 for uniform dequantisation."""
        if self.dequantiser is None:
            return noise, torch.zeros(x.shape[0], device=x.device)
        return self.dequantiser(x, noise)

    def preprocess(self, x, noise):
        """8-bit images in [0, 1] -> dequantised y = (255 x + u) / 256 -> logit space.

        Returns (v, log |dv/dy| - log q(u | x)).
        """
        u, log_q = self.dequantise(x, noise)
        v, log_det = self.logit(x * 255 / 256 + u / 256)
        return v, log_det - log_q

    def logit(self, y):
        """v = logit(alpha + (1 - 2 alpha) y) and log |det dv/dy|."""
        p = self.alpha + (1 - 2 * self.alpha) * y
        v = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return v, log_det

    def postprocess(self, v):
        return ((torch.sigmoid(v) - self.alpha) / (1 - 2 * self.alpha)).clamp(0, 1)

    def log_prob(self, x, noise=None):
        """log density of 2-D points; for images log p(y) - log q(u | x) of the dequantised y in [0, 1]^D,
        whose expectation bounds log P(x) + D log 256 from below."""
        log_det = torch.zeros(x.shape[0], device=x.device)
        if self.image:
            x, log_det = self.preprocess(x, self.dequantisation_noise(x) if noise is None else noise)
        zs, ld = self.flow(x)
        return sum(standard_normal_logp(z) for z in zs) + ld + log_det

    def loss(self, batch):
        x = batch[0]
        nll = -self.log_prob(x)
        if self.image:
            nll = nll + math.prod(self.shape) * math.log(256)  # nats of the discrete image
            return {"loss": nll.mean() / math.prod(self.shape), "bpd": nll.mean() / (math.prod(self.shape) * math.log(2))}
        return {"loss": nll.mean()}

    @torch.no_grad()
    def nll(self, x, generator=None):
        """-log P(x) in nats: for images the dequantisation bound on the 8-bit image (one draw of u)."""
        noise = self.dequantisation_noise(x, generator) if self.image else None
        out = -self.log_prob(x, noise)
        return out + math.prod(self.shape) * math.log(256) if self.image else out

    @torch.no_grad()
    def sample(self, n, generator=None, temperature: float = 1.0, **_):
        zs = [temperature * torch.randn(n, *s, generator=generator, device=self.device) for s in self.flow.latent_shapes()]
        x = self.flow.inverse(zs)
        return self.postprocess(x) if self.image else x


def build(cfg: Config, shape, num_classes=0) -> Flow:
    return Flow(shape, cfg.scales, cfg.coupling_steps, cfg.hidden, cfg.blocks, cfg.layers_2d, cfg.logit_alpha,
                cfg.checkerboard_steps, cfg.dequantise)


@torch.no_grad()
def figures(model: Flow, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    if model.image:
        from genlab.viz import save_grid

        paths = [f"{out_dir}/samples.png", f"{out_dir}/samples_t07.png"]
        save_grid(paths[0], model.sample(100, generator=generator), nrow=10)
        save_grid(paths[1], model.sample(100, generator=generator, temperature=0.7), nrow=10)
        return paths
    return [density_figure(model, data, f"{out_dir}/density.png", generator)]


def density_figure(model, data, path, generator, n: int = 200):
    """The training points, the model's density exp(log p) on a grid, and samples, over the same area."""
    import matplotlib.pyplot as plt

    from genlab.viz import _savefig

    pts = data.train
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = 0.15 * (hi - lo)
    xs = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), n)
    ys = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), n)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1).to(model.device)
    logp = torch.cat([model.log_prob(chunk) for chunk in grid.split(10000)]).view(n, n).cpu()
    samples = model.sample(5000, generator=generator).cpu()
    extent = [float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), layout="constrained")
    axes[0].hist2d(pts[:, 0].numpy(), pts[:, 1].numpy(), bins=n // 2, range=[extent[:2], extent[2:]], cmap="viridis")
    axes[0].set_title(f"data: {data.name}")
    axes[1].imshow(logp.exp().numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
    axes[1].set_title("model density p(x)")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4)
    axes[2].set_xlim(extent[:2])
    axes[2].set_ylim(extent[2:])
    axes[2].set_title("5000 samples")
    _savefig(fig, path)
    return path
