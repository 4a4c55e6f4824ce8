"""Variational autoencoders (Kingma and Welling 2014, arXiv:1312.6114).

What seeds 003 (Q2, Q4), 004, 001 (Q5) and 000 specify, and where it lives here:
- approximate posterior q(z | x) = N(mu(x), diag sigma^2(x)), prior p(z) = N(0, I), 16 latents
- reparameterisation z = mu + sigma * eps, eps ~ N(0, I):                         `reparameterize`
- KL(q || p) = 1/2 sum_i (sigma_i^2 + mu_i^2 - log sigma_i^2 - 1) (seed 003 Q2):   `kl_to_standard_normal`
- the seed 003 encoder/decoder stack (conv, then transposed convs), for any image size:
  the encoder halves the size three times, the decoder doubles it three times and crops
- Gaussian decoder N(mu(z), I): 1/2 the squared error summed over pixels (plus the constant),
  averaged over the batch; Bernoulli decoder for binarised data
- loss = reconstruction + beta * KL, beta warmed up linearly (seed 001 Q5.3)
- the importance-weighted bound of Burda et al. (2016) for the NLL:              `log_weights`, `nll`
  log p(x) >= E[log (1/k) sum_j p(x, z_j) / q(z_j | x)], z_j ~ q(z | x)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab import parallel
from genlab.config import opt
from genlab.family import GenerativeModel

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps: a sample of N(mu, sigma^2) that is differentiable in mu and sigma."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, diag e^logvar) || N(0, I)) per example, summed over latents (seed 003 Q2)."""
    return 0.5 * (logvar.exp() + mu ** 2 - logvar - 1).sum(-1)


def log_normal(z, mu, logvar):
    return -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + LOG_2PI).sum(-1)


# ---------------------------------------------------------------------------
# Encoders and decoders


class ConvEncoder(nn.Module):
    """Seed 003: conv 3x3 to 32, then three stride-2 convs to 64, 128, 256, then a linear layer."""

    def __init__(self, channels: int, size: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),  # 32 -> 16 (28 -> 14)
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),  # 16 -> 8 (14 -> 7)
            nn.Conv2d(128, 256, 3, 2, 1), nn.ReLU(),  # 8 -> 4 (7 -> 4)
            nn.Flatten(),
            nn.Linear(256 * conv_out(size) ** 2, 2 * latent_dim),
        )

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)  # mu, logvar


class ConvDecoder(nn.Module):
    """Seed 003: linear to 128 x s x s, three transposed convs doubling the size, a 3x3 conv; cropped to size."""

    def __init__(self, channels: int, size: int, latent_dim: int):
        super().__init__()
        self.s, self.size = conv_out(size), size
        self.fc = nn.Linear(latent_dim, 128 * self.s ** 2)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(),  # 4 -> 8
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),  # 8 -> 16
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 16 -> 32
            nn.Conv2d(32, channels, 3, 1, 1),
        )

    def forward(self, z):
        h = F.relu(self.fc(z)).view(-1, 128, self.s, self.s)
        out = self.net(h)  # (B, C, 8s, 8s)
        off = (out.shape[-1] - self.size) // 2  # 32 -> 28 for MNIST: drop 2 pixels on each side
        return out[..., off: off + self.size, off: off + self.size]


def conv_out(size: int) -> int:
    """Side after three stride-2, padding-1, 3x3 convolutions (ceil(size / 8))."""
    for _ in range(3):
        size = (size - 1) // 2 + 1
    return size


class MLPEncoder(nn.Module):
    def __init__(self, dim: int, hidden: list[int], latent_dim: int):
        super().__init__()
        layers, d = [nn.Flatten()], dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        self.net = nn.Sequential(*layers, nn.Linear(d, 2 * latent_dim))

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class MLPDecoder(nn.Module):
    def __init__(self, shape, hidden: list[int], latent_dim: int):
        super().__init__()
        layers, d = [], latent_dim
        for h in reversed(hidden):
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        self.shape = tuple(shape)
        self.net = nn.Sequential(*layers, nn.Linear(d, math.prod(shape)))

    def forward(self, z):
        return self.net(z).view(-1, *self.shape)


# ---------------------------------------------------------------------------
# The family


@dataclass
class Config:
    arch: str = opt("conv", "encoder/decoder: the seed 003 conv stack or an MLP", choices=["conv", "mlp"])
    latent_dim: int = opt(16, "latent dimensions (seed 003: 16)", min=1)
    hidden: list[int] = opt([512, 512], "MLP hidden layer widths (arch=mlp)", min=1)
    decoder: str = opt("gaussian", "p(x|z): N(mu, I) (seed 003) or Bernoulli (binarised data)",
                       choices=["gaussian", "bernoulli"])
    beta: float = opt(1.0, "weight of the KL term", min=0.0)
    beta_warmup: int = opt(0, "steps over which beta rises linearly from 0", min=0)
    iw_samples: int = opt(100, "importance samples k for the NLL bound (genlab eval --k overrides)", min=1)
    traverse_dims: list[int] = opt([0, 1], "the latent dimensions (i, j) of the traversal grid (seed 004)", min=0)
    traverse_range: float = opt(2.0, "the traversal grid spans [-r, r] in both dimensions", min=0.0)


TRAIN_DEFAULTS = {"batch_size": 128, "lr": 1e-3, "epochs": 20, "steps": 0, "grad_clip": 0.0, "eval_every": 500,
                  "final_eval_n": 500}
DATA_DEFAULTS = {"dataset": "digits"}
DATA_KIND = "image"
IMAGE_SIZE = 32


class VAE(GenerativeModel):
    def __init__(self, shape, arch="conv", latent_dim=16, hidden=(512, 512), decoder="gaussian", beta=1.0,
                 beta_warmup=0, iw_samples=100):
        super().__init__()
        self.shape, self.latent_dim, self.decoder_type = tuple(shape), latent_dim, decoder
        self.beta, self.beta_warmup, self.iw_samples = beta, beta_warmup, iw_samples
        if arch == "conv":
            self.encoder = ConvEncoder(shape[0], shape[-1], latent_dim)
            self.decoder = ConvDecoder(shape[0], shape[-1], latent_dim)
        else:
            self.encoder = MLPEncoder(math.prod(shape), list(hidden), latent_dim)
            self.decoder = MLPDecoder(shape, list(hidden), latent_dim)
        # optimizer steps taken, for the beta warm-up; a float buffer so checkpoints and EMA carry it
        self.register_buffer("updates", torch.zeros(()))

    def encode(self, x):
        mu, logvar = self.encoder(x)
        return mu, logvar

    def log_px(self, x, out):
        """log p(x | z) per example, summed over pixels; `out` is the decoder's mean or logits."""
        if self.decoder_type == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        return -0.5 * ((x - out) ** 2 + LOG_2PI).flatten(1).sum(1)

    def mean(self, out):
        """The decoder's mean image in [0, 1]."""
        return torch.sigmoid(out) if self.decoder_type == "bernoulli" else out.clamp(0, 1)

    def current_beta(self):
        """beta, risen linearly from 0 over beta_warmup updates (a device tensor then: reading it would wait on the device)."""
        if self.beta_warmup == 0:
            return self.beta
        return self.beta * (self.updates / self.beta_warmup).clamp(max=1.0)

    def terms(self, x):
        """Single-sample negative ELBO and its parts, per example."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, parallel.randn_like(mu))
        out = self.decoder(z)
        recon = -self.log_px(x, out)
        kl = kl_to_standard_normal(mu, logvar)
        terms = {"recon": recon, "kl": kl}
        if self.decoder_type == "gaussian":
            terms["sse"] = ((x - out) ** 2).flatten(1).sum(1)  # seed 003's "MSE summed over features"
        return terms

    def loss(self, batch):
        x, _ = batch
        t = {k: v.mean() for k, v in self.terms(x).items()}
        t["nelbo"] = t["recon"] + t["kl"]
        t["loss"] = t["recon"] + self.current_beta() * t["kl"]
        return t

    def train_step(self, batch, ctx):
        logs = ctx.minimize("main", self.loss, batch)
        self.updates += 1
        logs["beta"] = self.current_beta()
        return logs

    @torch.no_grad()
    def eval_step(self, batch):
        out = self.loss(batch)
        return {k: v for k, v in out.items() if k != "loss"}

    @torch.no_grad()
    def sample(self, n, generator=None, **_):
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x):
        mu, _ = self.encode(x)
        return self.mean(self.decoder(mu))

    @torch.no_grad()
    def log_weights(self, x, k: int, generator=None, chunk: int = 0):
        """log w_j = log p(x | z_j) + log p(z_j) - log q(z_j | x), z_j ~ q(z | x): shape (B, k)."""
        mu, logvar = self.encode(x)
        B = x.shape[0]
        chunk = chunk or max(1, 50_000 // (B * max(1, math.prod(self.shape) // 64)))
        out = []
        for start in range(0, k, chunk):
            kk = min(chunk, k - start)
            eps = torch.randn(B, kk, self.latent_dim, generator=generator, device=x.device)
            z = reparameterize(mu[:, None], logvar[:, None], eps)  # (B, kk, L)
            dec = self.decoder(z.reshape(B * kk, -1))
            xk = x[:, None].expand(B, kk, *x.shape[1:]).reshape(B * kk, *x.shape[1:])
            log_px = self.log_px(xk, dec).view(B, kk)
            out.append(log_px + log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                       - log_normal(z, mu[:, None], logvar[:, None]))
        return torch.cat(out, 1)

    @torch.no_grad()
    def nll(self, x, generator=None, k: int | None = None):
        """-log p(x) by the importance-weighted bound with k samples, nats per example.

        Bernoulli: of the binary image. Gaussian: of the 8-bit image, the density on [0, 1]^D
        plus D log 256 (uniform dequantisation), so bits/dim compare with the other families.
        """
        k = k or self.iw_samples
        lw = self.log_weights(x, k, generator)
        nll = -(torch.logsumexp(lw, 1) - math.log(k))
        if self.decoder_type == "gaussian":
            nll = nll + math.prod(self.shape) * math.log(256)
        return nll


def build(cfg: Config, shape, num_classes=0) -> VAE:
    return VAE(shape, cfg.arch, cfg.latent_dim, cfg.hidden, cfg.decoder, cfg.beta, cfg.beta_warmup, cfg.iw_samples)


def validate(cfg, data_cfg) -> None:
    from genlab.errors import GenlabError

    if cfg.decoder == "bernoulli" and not data_cfg.binarize:
        raise GenlabError("the Bernoulli decoder models binary images: add --binarize true")
    if len(cfg.traverse_dims) != 2 or max(cfg.traverse_dims) >= cfg.latent_dim:
        raise GenlabError(f"traverse_dims must be two latent indices below latent_dim={cfg.latent_dim}")


@torch.no_grad()
def figure_images(model: VAE, x: torch.Tensor, cfg: Config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The four S7 figures as image batches of 100 (each shown as a 10 x 10 grid); x: >= 100 test images."""
    device = model.device
    out = {"samples": model.sample(100, generator=generator)}  # 100 samples from the prior
    # 50 real / reconstruction pairs: each row holds five pairs, real on the left
    real = x[:50]
    out["reconstructions"] = torch.stack([real, model.reconstruct(real)], 1).flatten(0, 1)
    # interpolations of length 10 between the posterior means of 10 pairs of test images (rows)
    mu, _ = model.encode(x[:20])
    w = torch.linspace(0, 1, 10, device=device)[None, :, None]
    z = (1 - w) * mu[:10, None] + w * mu[10:20, None]  # (10 pairs, 10 steps, L)
    out["interpolations"] = model.mean(model.decoder(z.flatten(0, 1)))
    # latent traversal (seed 004 plot_latents): z_i down the rows, z_j across the columns, the rest 0
    i, j = cfg.traverse_dims
    vals = torch.linspace(-cfg.traverse_range, cfg.traverse_range, 10, device=device)
    z = torch.zeros(10, 10, model.latent_dim, device=device)
    z[:, :, i] = vals[:, None]
    z[:, :, j] = vals[None, :]
    out["traversal"] = model.mean(model.decoder(z.flatten(0, 1)))
    return out


def figures(model: VAE, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    """Seed 003's samples, reconstructions and interpolations, and seed 004's latent traversal grid."""
    from genlab.viz import save_grid

    paths = []
    for name, images in figure_images(model, data.floats("test")[:100].to(model.device), cfg, generator).items():
        paths.append(f"{out_dir}/{name}.png")
        save_grid(paths[-1], images, nrow=10)
    return paths
