"""Score-based generative models with annealed Langevin dynamics (Song and Ermon 2019, arXiv:1907.05600).

What seed 002 (question 2.5 and section 5) specifies, and where it lives here:
- a geometric ladder sigma_1 > ... > sigma_L:                                `geometric_sigmas`
- ScoreNet: 8 linear layers with Softplus between them, inputs x and sigma,
  output divided by sigma (the NCSNv2 trick of the seed's starter code):      `ScoreNet`
- Algorithm 1, denoising score matching: sigma drawn from the ladder,
  x~ = x + sigma z, lambda = sigma^2, L = lambda/2 |s(x~, sigma) + (x~ - x)/sigma^2|^2,
  averaged over the batch:                                                      `dsm_loss`
- Algorithm 2, annealed Langevin dynamics: x_0 ~ N(0, I), for each sigma_i
  alpha_i = eps sigma_i^2 / sigma_L^2 and T steps
  x_t = x_{t-1} + alpha_i s(x_{t-1}, sigma_i) + sqrt(2 alpha_i) z_t; the trajectory on request:
                                                                     `genlab.sampling.annealed_langevin`
- the score model as a denoiser D(x, sigma) = x + sigma^2 s(x, sigma), so that every sampler of
  genlab.sampling (DDIM, Euler, Heun, DPM-Solver++) runs on it:                 `NCSN.denoiser`
- question 2.5: sampling given x_known on the mask M (1 = observed) with the conditional score
  s(x, sigma) - lambda (x - x_known) * M:                                       `conditional_score`
Images use a noise-conditional U-Net (the diffusion U-Net, conditioned on log sigma) with the same
output scaling. For 2-D data the largest sigma defaults to the largest distance between training
points (Song and Ermon 2020, technique 1), so that Langevin can move samples between the modes;
`--langevin-eps 0` takes their technique 4, the step size that leaves each level's samples with that
level's spread when the data is one point (`langevin_step_size`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from genlab import parallel
from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel
from genlab.sampling import ScoreDenoiser, annealed_langevin, noise_levels, parse_sampler, solve
from genlab.unet import UNet


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, equally spaced in log."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)).float()


def langevin_variance_ratio(eps: float, gamma: float, T: int, sigma_min: float) -> float:
    """Song and Ermon (2020), technique 4: for data at one point, a sample that enters level sigma_i with the
    previous level's spread (gamma sigma_i)^2 leaves its T Langevin steps (step eps sigma_i^2 / sigma_min^2)
    with variance r sigma_i^2. Returns r, the same at every level of a geometric ladder of ratio gamma; it
    is at least 1 (a mix of gamma^2 and the chain's stationary ratio), and 1 is the ideal."""
    a = 1 - eps / sigma_min ** 2  # each step scales x by a and adds 2 alpha of variance
    stationary = 2 * eps / (sigma_min ** 2 * (1 - a ** 2))
    return a ** (2 * T) * (gamma ** 2 - stationary) + stationary


def langevin_step_size(sigmas, T: int) -> float:
    """Technique 4's eps for a geometric ladder and T steps per level: the variance ratio nearest 1."""
    from scipy.optimize import minimize_scalar

    sigmas = [float(s) for s in sigmas]
    gamma, sigma_min = sigmas[0] / sigmas[1], sigmas[-1]
    ratio = lambda log_eps: abs(langevin_variance_ratio(math.exp(log_eps), gamma, T, sigma_min) - 1)  # noqa: E731
    best = minimize_scalar(ratio, bounds=(math.log(sigma_min ** 2) - 30, math.log(sigma_min ** 2)), method="bounded",
                           options={"xatol": 1e-6})
    return float(f"{math.exp(best.x):.3g}")


def dsm_loss(score_fn, x, sigmas):
    """Algorithm 1 for every example of the batch, averaged: lambda(sigma) = sigma^2."""
    idx = parallel.randint(len(sigmas), x.shape[0], x.device)
    sigma = sigmas[idx].view(-1, *([1] * (x.dim() - 1)))
    x_tilde = x + sigma * parallel.randn_like(x)
    s = score_fn(x_tilde, sigmas[idx])
    per_example = (sigma ** 2 / 2 * (s + (x_tilde - x) / sigma ** 2) ** 2).flatten(1).sum(1)
    return per_example.mean()


def conditional_score(score_fn, x_known, mask, lam):
    """Seed 002 Q2.5: s(x, sigma | x_known) = s(x, sigma) - lambda (x - x_known) * M, M = 1 where observed.

    `lam` is a number, or a function of the per-example sigma giving lambda at that level."""

    def score(x, sigma):
        pull = lam(sigma).view(-1, *([1] * (x.dim() - 1))) if callable(lam) else lam
        return score_fn(x, sigma) - pull * (x - x_known) * mask

    return score


class ScoreNet(nn.Module):
    """Seed 002: 8 linear layers with Softplus between them on [x, sigma]; s(x, sigma) = net([x, sigma]) / sigma."""

    def __init__(self, dim: int = 2, hidden: int = 128, n_layers: int = 8):
        super().__init__()
        layers, d = [], dim + 1
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, hidden), nn.Softplus()]
            d = hidden
        self.net = nn.Sequential(*layers, nn.Linear(d, dim))

    def forward(self, x, sigma):
        sigma = sigma.view(-1, 1)
        return self.net(torch.cat([x, sigma], dim=-1)) / sigma


class ScoreUNet(nn.Module):
    """A noise-conditional U-Net: s(x, sigma) = unet(x, c(sigma)) / sigma, c maps the ladder onto [0, 1000]."""

    def __init__(self, channels: int, sigma_max: float, sigma_min: float, dim: int, dim_mults, attn_levels: int,
                 num_res_blocks: int = 1):
        super().__init__()
        self.unet = UNet(channels, dim=dim, dim_mults=tuple(dim_mults), num_res_blocks=num_res_blocks,
                         attn_levels=attn_levels)
        self.log_min, self.log_range = math.log(sigma_min), math.log(sigma_max) - math.log(sigma_min)

    def forward(self, x, sigma):
        c = 1000 * (torch.log(sigma) - self.log_min) / self.log_range
        return self.unet(x, c) / sigma.view(-1, *([1] * (x.dim() - 1)))


@dataclass
class Config:
    sigma_max: float = opt(0.0, "largest noise level (0: the largest distance between training points for "
                                "2-D data, 1 for images)", min=0.0)
    sigma_min: float = opt(0.01, "smallest noise level (seed 002: 0.01)", min=0.0)
    num_sigmas: int = opt(20, "noise levels L (seed 002: 10 from 0.3; from the data's extent, 20 keep its "
                              "spacing where the noise is small; images: 10 from 1)", min=2)
    langevin_steps: int = opt(100, "Langevin steps T per noise level (seed 002: 100)", min=1)
    langevin_eps: float = opt(2e-5, "Langevin step-size parameter eps (seed 002: 2e-5; 0: Song and Ermon 2020's "
                                    "technique 4 for the ladder and the steps per level)", min=0.0)
    hidden: int = opt(128, "ScoreNet width (2-D data)", min=1)
    dim: int = opt(16, "U-Net base width (images)", min=1)
    dim_mults: list[int] = opt([1, 2, 2], "U-Net width multipliers (images)", min=1)
    num_res_blocks: int = opt(1, "U-Net residual blocks per resolution (images)", min=1)
    attn_levels: int = opt(1, "U-Net self-attention in this many lowest levels (images)", min=0)
    preview: str = opt("", "sampler of the sample grids during training, NAME or NAME:STEPS (e.g. heun:25; "
                           "empty: annealed Langevin)")
    inpaint_lambda: float = opt(0.0, "lambda of the conditional score for inpainting (0: 20 for 2-D data, "
                                     "5 for images)", min=0.0)


TRAIN_DEFAULTS = {"batch_size": 1024, "lr": 3e-3, "steps": 10000, "grad_clip": 0.0, "ema_decay": 0.999}
# images: a U-Net small enough for a CPU; each sample grid costs L x T = 1000 network evaluations
TRAIN_DEFAULTS_BY_KIND = {"image": {"batch_size": 64, "lr": 1e-3, "steps": 4000, "grad_clip": 1.0,
                                    "warmup_steps": 200, "sample_every": 2000, "n_samples": 36}}
MODEL_DEFAULTS_BY_KIND = {"image": {"num_sigmas": 10}}  # L = 10 from sigma 1 to 0.01 (Song and Ermon 2019)
DATA_DEFAULTS = {"dataset": "text:CS446"}
DATA_KIND = "any"
IMAGE_SIZE = 32


# levels of the denoiser samplers when --steps is not given
DEFAULT_STEPS = 50


class NCSN(GenerativeModel):
    samplers = ("langevin", "ancestral", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde")
    spacing = "geometric"  # the default levels of the denoiser samplers: the ladder's log spacing, any number
    def __init__(self, shape, sigma_max, sigma_min=0.01, num_sigmas=10, langevin_steps=100, langevin_eps=2e-5,
                 hidden=128, dim=16, dim_mults=(1, 2, 2), attn_levels=1, inpaint_lambda=0.0, num_res_blocks=1):
        super().__init__()
        self.shape = tuple(shape)
        self.T, self.eps = langevin_steps, langevin_eps
        self.register_buffer("sigmas", geometric_sigmas(sigma_max, sigma_min, num_sigmas))
        if len(shape) == 1:
            self.net = ScoreNet(shape[0], hidden)
        else:
            self.net = ScoreUNet(shape[0], sigma_max, sigma_min, dim, dim_mults, attn_levels, num_res_blocks)
        self.inpaint_lambda = inpaint_lambda or (20.0 if len(shape) == 1 else 5.0)

    def score(self, x, sigma):
        return self.net(x, sigma)

    @contextlib.contextmanager
    def quick(self, steps: int = 5):
        """A few Langevin steps per noise level instead of T: the end of a smoke run, not a result."""
        saved, self.T = self.T, min(self.T, steps)
        try:
            yield f"{self.T} Langevin steps per noise level instead of {saved}"
        finally:
            self.T = saved

    def loss(self, batch):
        x = batch[0]
        return {"loss": dsm_loss(self.score, x, self.sigmas)}

    def initial(self, n, generator=None):
        return torch.randn(n, *self.shape, generator=generator, device=self.device)  # Algorithm 2, line 1

    def denoiser(self) -> ScoreDenoiser:
        """D = x + sigma^2 s(x, sigma), for images clamped to their range [0, 1]."""
        return ScoreDenoiser(self.score, self.sigmas, clip=None if len(self.shape) == 1 else (0.0, 1.0))

    def levels(self, sampler: str = "langevin", steps: int | None = None, spacing: str | None = None,
               denoiser: ScoreDenoiser | None = None) -> list[float]:
        """The noise levels a denoiser sampler runs on (`steps`, default 50, by `spacing`, default the model's),
        then 0; for langevin the model's own ladder. Checked before any sampling."""
        if sampler == "langevin":
            return [float(s) for s in self.sigmas]
        return noise_levels(denoiser or self.denoiser(), steps or DEFAULT_STEPS, spacing or self.spacing)

    @torch.no_grad()
    def sample(self, n, generator=None, sampler: str = "langevin", steps: int | None = None, eta: float | None = None,
               spacing: str | None = None, return_traj: bool = False, progress=None):
        """n samples by annealed Langevin dynamics (`steps` per noise level, default T; the trajectory on
        request), or by a denoiser sampler on `steps` levels (default 50) from sigma_max to sigma_min, then 0."""
        if sampler == "langevin":
            if spacing or eta is not None:
                raise GenlabError("annealed Langevin runs on the model's own ladder: --spacing and --eta do not apply")
            out = annealed_langevin(self.score, self.initial(n, generator), self.sigmas, self.eps, steps or self.T,
                                    generator, return_traj)
        else:
            if return_traj:
                raise GenlabError("the trajectory is kept by the langevin sampler only")
            D = self.denoiser()
            sigmas = self.levels(sampler, steps, spacing, D)
            callback = None if progress is None else (lambda i, x: progress.update(1))
            out = solve(D, sampler, D.prior((n, *self.shape), sigmas[0], generator, self.device), sigmas, eta,
                        generator, callback)
        if len(self.shape) == 1:
            return out
        return (out[0].clamp(0, 1), out[1]) if return_traj else out.clamp(0, 1)

    def inpaint_pull(self, lam: float):
        """lambda at each noise level: the given one, capped at 1 / alpha_i so that a Langevin step never moves a
        known entry past its value (alpha_i lambda <= 1; beyond 2 the pull diverges). Seed 002's ladder
        (alpha_1 = 0.2, lambda = 5) is at the cap; a ladder from sigma_1 = 16 reaches alpha_1 = 21."""
        sigma_min = float(self.sigmas[-1])
        return lambda sigma: (sigma_min ** 2 / (self.eps * sigma ** 2)).clamp(max=lam)

    @torch.no_grad()
    def inpaint(self, x, m, generator=None, lam: float | None = None, paste: bool = True):
        """Fill the missing entries (m = 1) given the rest, by annealed Langevin with the conditional score.

        The known entries are pulled to their values with strength lambda (`inpaint_pull`); with `paste` they
        are finally copied in exactly, as inpainting results are usually shown.
        """
        known = 1 - m
        score = conditional_score(self.score, x, known, self.inpaint_pull(lam or self.inpaint_lambda))
        out = annealed_langevin(score, self.initial(len(x), generator), self.sigmas, self.eps, self.T, generator)
        if paste:
            out = known * x + m * out
        return out.clamp(0, 1) if len(self.shape) > 1 else out


SAMPLERS = NCSN.samplers


def max_pairwise_distance(points: torch.Tensor, n: int = 2000) -> float:
    sub = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:n]]
    return float(torch.cdist(sub, sub).max())


def prepare(data, cfg):
    """Resolve sigma_max = 0: the largest distance between training points (2-D) or 1 (images); and
    langevin_eps = 0: technique 4's step for the ladder (both written into the run's config)."""
    m = cfg.model
    if m.sigma_max == 0:
        m.sigma_max = round(max_pairwise_distance(data.train), 3) if data.kind == "points" else 1.0
    if m.sigma_max <= m.sigma_min:
        raise GenlabError(f"sigma_max ({m.sigma_max}) must exceed sigma_min ({m.sigma_min})")
    if m.langevin_eps == 0:
        m.langevin_eps = langevin_step_size(geometric_sigmas(m.sigma_max, m.sigma_min, m.num_sigmas),
                                            m.langevin_steps)
    return data


def validate(cfg: Config, data_cfg) -> None:
    if cfg.sigma_min <= 0:
        raise GenlabError("sigma_min must be positive")
    parse_sampler(cfg.preview, NCSN.samplers)


def build(cfg: Config, shape, num_classes=0) -> NCSN:
    if cfg.sigma_max == 0 or cfg.langevin_eps == 0:
        raise GenlabError("sigma_max or langevin_eps is unresolved (0); it is set when training starts")
    model = NCSN(shape, cfg.sigma_max, cfg.sigma_min, cfg.num_sigmas, cfg.langevin_steps, cfg.langevin_eps,
                 cfg.hidden, cfg.dim, cfg.dim_mults, cfg.attn_levels, cfg.inpaint_lambda, cfg.num_res_blocks)
    model.preview_sampler = parse_sampler(cfg.preview, NCSN.samplers)
    return model


# ---------------------------------------------------------------------------
# Measuring 2-D samples and the figures


def mode_coverage(samples: torch.Tensor, data, radius: float) -> dict[str, float]:
    """How well 2-D samples cover labelled training points (e.g. the characters of text:STRING).

    near: fraction of samples within `radius` of a training point; each sample near the data is given
    the label of its nearest training point, and share_error is the largest gap between a label's share
    of those samples and its share of the training points.
    """
    train = data.train
    d, idx = [], []
    for chunk in samples.split(500):
        dist = torch.cdist(chunk.float(), train)
        v, i = dist.min(1)
        d.append(v)
        idx.append(i)
    d, idx = torch.cat(d), torch.cat(idx)
    near = d <= radius
    out = {"near": near.float().mean().item()}
    if data.train_labels is not None and near.any():
        k = int(data.train_labels.max()) + 1
        got = torch.bincount(data.train_labels[idx[near]], minlength=k).float() / near.sum()
        want = torch.bincount(data.train_labels, minlength=k).float() / len(train)
        out["share_error"] = (got - want).abs().max().item()
        for c in range(k):
            name = data.classes[c] if data.classes else str(c)
            out[f"share_{c}_{name}"] = got[c].item()
    return out


def final_metrics(model: NCSN, data, cfg: Config, generator) -> dict[str, float]:
    """For 2-D data: mode_coverage of 1000 samples, 'near' meaning within 2% of the data's extent."""
    if data.kind != "points":
        return {}
    extent = float((data.train.max(0).values - data.train.min(0).values).max())
    return mode_coverage(model.sample(1000, generator=generator), data, radius=0.02 * extent)


@torch.no_grad()
def figures(model: NCSN, data, out_dir, cfg: Config, generator: torch.Generator, quick: bool = False) -> list[str]:
    if data.kind == "points":
        return points_figures(model, data, out_dir, generator)
    return image_figures(model, data, out_dir, generator, n=16 if quick else 64)


def _limits(points):
    lo, hi = points.min(0).values, points.max(0).values
    pad = 0.1 * (hi - lo).max()
    return (float(lo[0] - pad), float(hi[0] + pad)), (float(lo[1] - pad), float(hi[1] + pad))


def points_figures(model, data, out_dir, generator):
    """Seed 002, 5.4: the score field, 1000 samples at steps 0, 200, ..., 800 and final, two trajectories."""
    import matplotlib.pyplot as plt

    from genlab.viz import _savefig

    train = data.train
    (x0, x1), (y0, y1) = _limits(train)
    aspect = (x1 - x0) / (y1 - y0)
    paths = [f"{out_dir}/score_field.png", f"{out_dir}/langevin_steps.png", f"{out_dir}/samples.png",
             f"{out_dir}/trajectories.png"]
    # (a) the score field at the smallest and the largest noise level, over the training points
    fig, axes = plt.subplots(2, 1, figsize=(min(16, 3 * aspect + 2), 7), layout="constrained")
    gx, gy = torch.meshgrid(torch.linspace(x0, x1, int(20 * min(aspect, 3))), torch.linspace(y0, y1, 20), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1).to(model.device)
    for ax, i in zip(axes, (-1, 0)):
        sigma = model.sigmas[i]
        s = model.score(grid, sigma.expand(len(grid))).cpu()
        s = s / s.norm(dim=1, keepdim=True).clamp(min=1e-8) * s.norm(dim=1, keepdim=True).clamp(min=1e-8).log1p()
        ax.scatter(train[:3000, 0], train[:3000, 1], s=1, alpha=0.3, color="gray")
        ax.quiver(grid[:, 0].cpu(), grid[:, 1].cpu(), s[:, 0], s[:, 1], angles="xy", color="C0", width=0.002)
        ax.set_aspect("equal")
        ax.set_title(f"score s(x, sigma = {float(sigma):.3g}) (arrow length: log(1 + |s|))")
    _savefig(fig, paths[0])
    # (b) 1000 samples along one annealed Langevin run
    final, traj = model.sample(1000, generator=generator, return_traj=True)
    steps = list(range(0, len(traj), 200))[:5]
    panels = [(f"step {k}", traj[k]) for k in steps] + [(f"final (step {len(traj)})", final)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(16, 2.2 * aspect + 1), 2.4 * len(panels)),
                             layout="constrained")
    for ax, (title, pts) in zip(axes, panels):
        pts = pts.cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color="C3")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    _savefig(fig, paths[1])
    fig, ax = plt.subplots(figsize=(min(16, 2.5 * aspect + 1), 3), layout="constrained")
    ax.scatter(final[:, 0].cpu(), final[:, 1].cpu(), s=2, color="C3")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_title("1000 samples")
    _savefig(fig, paths[2])
    # (c) trajectories of two samples through the smaller half of the noise levels (the larger half
    # roams far beyond the data), coloured by step
    from matplotlib.collections import LineCollection

    L = len(model.sigmas)
    start = (L // 2) * model.T
    fig, ax = plt.subplots(figsize=(min(16, 2.5 * aspect + 1), 3.5), layout="constrained")
    ax.scatter(final[:, 0].cpu(), final[:, 1].cpu(), s=2, color="C3", alpha=0.3)
    for k, marker in ((0, "o"), (1, "s")):
        path = traj[start:, k].cpu().numpy()
        segments = np.stack([path[:-1], path[1:]], 1)
        lines = LineCollection(segments, cmap="viridis", linewidths=0.7)
        lines.set_array(start + np.arange(len(segments)))
        ax.add_collection(lines)
        ax.plot(*path[-1], marker, color="black", markersize=5)
    fig.colorbar(lines, ax=ax, label="Langevin step")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_title(f"two trajectories, sigma <= {float(model.sigmas[L // 2]):.2g} "
                 f"(steps {start}-{len(traj)}, ending in black)")
    _savefig(fig, paths[3])
    return paths


def image_figures(model, data, out_dir, generator, n: int = 64):
    """n samples, one sample per noise level along a run, and inpainting of test images."""
    from genlab.inpaint_gan import box_masks
    from genlab.viz import image_table, inpaint_table, save_grid

    paths = [f"{out_dir}/samples.png", f"{out_dir}/langevin_levels.png", f"{out_dir}/inpaint.png"]
    final, traj = model.sample(n, generator=generator, return_traj=True)
    save_grid(paths[0], final, nrow=8 if n >= 64 else 4)
    T = model.T
    levels = torch.stack([traj[(i + 1) * T - 1, :8] for i in range(len(model.sigmas))], 1)  # (8, L, C, H, W)
    image_table(paths[1], list(levels.clamp(0, 1)), [f"sigma {float(s):.2g}" for s in model.sigmas],
                title=f"one sample after the {T} Langevin steps of each noise level")
    x = data.floats("test")[: 9 if n >= 64 else 4].to(model.device)
    m = box_masks(torch.rand(len(x), 4, generator=generator, device=model.device), model.shape[-1])
    done = model.inpaint(x, m, generator)
    inpaint_table(paths[2], x, m, done, title="conditional score, annealed Langevin", per_row=3 if n >= 64 else 2)
    return paths
