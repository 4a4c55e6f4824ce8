"""Denoising diffusion probabilistic models (Ho, Jain and Abbeel 2020, arXiv:2006.11239).

What seed 001 (section 7) and seed 004 specify, and where it lives here:
- forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)     eq. 13/17: `q_sample`
- cosine schedule, alpha_t = clip(abar_t / abar_{t-1}, 0.001, 1)          eq. 14: `cosine_alphas`
- posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                   eq. 18: `q_posterior`
- Algorithm 1 (training) with the L1 loss (seed 001) or L2 (seed 004 eq. 8), predicting eps, x0 or v
- Algorithm 2 (ancestral sampling) with x0-hat clamped to [-1, 1]: the network as a denoiser
  (`DDPM.denoiser`) run by `genlab.sampling.sample_ancestral` on the model's T levels, beside DDIM,
  Euler, Heun and DPM-Solver++(2M) on any number of them
- the variational bound (eq. 15) on 8-bit data in bits/dim, with the
  discretised Gaussian decoder of Ho et al.:                             `vlb_terms`

Time steps are 0-based in code: index i stands for the paper's t = i + 1.
The diffusion process is a plain module of buffers; the network is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from genlab import parallel
from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel
from genlab.sampling import VPDenoiser, guided, noise_levels, parse_sampler, repaint, solve
from genlab.unet import UNet


# ---------------------------------------------------------------------------
# Schedules (pure functions)


def cosine_alphas(T: int, s: float = 0.008, min_alpha: float = 0.001) -> torch.Tensor:
    """alpha_t for t = 1..T from the cosine schedule (seed 001 eq. 14), float64."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (abar[1:] / abar[:-1]).clamp(min_alpha, 1.0)


def linear_alphas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_t = 1 - beta_t with beta linear from 1e-4 to 0.02 at T = 1000, rescaled for other T."""
    scale = 1000 / T
    return 1 - torch.linspace(scale * beta_start, min(scale * beta_end, 0.999), T, dtype=torch.float64)


SCHEDULES = {"cosine": cosine_alphas, "linear": linear_alphas}


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] shaped to broadcast against x: (B,) -> (B, 1, 1, ...)."""
    return a[t].view(-1, *([1] * (x.dim() - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) of 8-bit data scaled to [-1, 1] under N(mean, e^{2 log_scale}) integrated over each bin."""
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1 / 255)
    lower = inv_std * (x - mean - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))


# ---------------------------------------------------------------------------
# The diffusion process


class GaussianDiffusion(nn.Module):
    def __init__(self, alphas: torch.Tensor):
        super().__init__()
        alphas = alphas.double()
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1 - alphas
        posterior_var = betas * (1 - abar_prev) / (1 - abar)  # eq. 18, beta~_t
        consts = {
            "alphas": alphas,
            "alpha_bar": abar,
            "snr": abar / (1 - abar),
            "alpha_bar_prev": abar_prev,
            "sqrt_alpha_bar": abar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - abar).sqrt(),
            "posterior_variance": posterior_var,
            # beta~_1 = 0; the decoder at t = 1 uses beta~_2 instead (as in improved-diffusion)
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]])),
            "posterior_coef_x0": abar_prev.sqrt() * betas / (1 - abar),
            "posterior_coef_xt": alphas.sqrt() * (1 - abar_prev) / (1 - abar),
        }
        for name, v in consts.items():
            self.register_buffer(name, v.float(), persistent=False)
        self.T = len(alphas)

    def q_sample(self, x0, t, eps):
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 13)."""
        return extract(self.sqrt_alpha_bar, t, x0) * x0 + extract(self.sqrt_one_minus_alpha_bar, t, x0) * eps

    def q_posterior(self, x0, xt, t):
        """Mean, variance and log variance of q(x_{t-1} | x_t, x_0) (eq. 18)."""
        mean = extract(self.posterior_coef_x0, t, xt) * x0 + extract(self.posterior_coef_xt, t, xt) * xt
        return mean, extract(self.posterior_variance, t, xt), extract(self.posterior_log_variance_clipped, t, xt)

    def predict_x0(self, xt, t, out, objective: str):
        if objective == "eps":  # eq. 19
            return (xt - extract(self.sqrt_one_minus_alpha_bar, t, xt) * out) / extract(self.sqrt_alpha_bar, t, xt)
        if objective == "x0":
            return out
        # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans and Ho 2022)
        return extract(self.sqrt_alpha_bar, t, xt) * xt - extract(self.sqrt_one_minus_alpha_bar, t, xt) * out

    def target(self, x0, eps, t, objective: str):
        if objective == "eps":
            return eps
        if objective == "x0":
            return x0
        return extract(self.sqrt_alpha_bar, t, x0) * eps - extract(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def loss_weight(self, t, objective: str, snr_gamma: float) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556): the weight that turns each objective's squared
        error into min(SNR_t, gamma) || x0_hat - x0 ||^2. An error in eps is sqrt(SNR) times the error it makes
        in x0, one in v sqrt(SNR + 1) times, so the weights are min(SNR, gamma) / SNR, / (SNR + 1) and / 1.
        The easy, nearly clean levels stop dominating the gradient."""
        snr = self.snr[t]
        clipped = snr.clamp(max=snr_gamma)
        if objective == "eps":
            return clipped / snr
        return clipped / (snr + 1) if objective == "v" else clipped

    def training_loss(self, net, x0, loss_type: str = "l1", objective: str = "eps", snr_gamma: float = 0.0):
        """Algorithm 1, per example: t ~ U{1..T}, eps ~ N(0, I), || target - net(x_t, t) ||, weighted by
        Min-SNR-gamma when snr_gamma > 0 (see loss_weight)."""
        t = parallel.randint(self.T, x0.shape[0], x0.device)
        eps = parallel.randn_like(x0)
        xt = self.q_sample(x0, t, eps)
        err = net(xt, t.float()) - self.target(x0, eps, t, objective)
        loss = mean_flat(err.abs() if loss_type == "l1" else err ** 2)
        return loss * self.loss_weight(t, objective, snr_gamma) if snr_gamma else loss

    def p_mean_variance(self, net, xt, t, objective: str = "eps", clip: bool = True):
        x0 = self.predict_x0(xt, t, net(xt, t.float()), objective)
        if clip:
            x0 = x0.clamp(-1, 1)  # Algorithm 2, line 6
        mean, var, logvar = self.q_posterior(x0, xt, t)  # Algorithm 2, lines 7-8
        return {"mean": mean, "variance": var, "log_variance": logvar, "x0": x0}

    @torch.no_grad()
    def vlb_terms(self, net, x0, objective: str = "eps", clip: bool = True, generator=None):
        """The variational bound (eq. 15) per example in bits/dim: prior + sum of KLs + decoder NLL."""
        B = x0.shape[0]
        total = torch.zeros(B, device=x0.device)
        for i in reversed(range(self.T)):
            t = torch.full((B,), i, device=x0.device, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
            xt = self.q_sample(x0, t, noise)
            true_mean, _, true_logvar = self.q_posterior(x0, xt, t)
            out = self.p_mean_variance(net, xt, t, objective, clip)
            if i == 0:
                nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
                total += mean_flat(nll) / math.log(2)
            else:
                total += mean_flat(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])) / math.log(2)
        t_last = torch.full((B,), self.T - 1, device=x0.device, dtype=torch.long)
        prior_mean = extract(self.sqrt_alpha_bar, t_last, x0) * x0
        prior_logvar = torch.log(extract(1 - self.alpha_bar, t_last, x0))
        total += mean_flat(normal_kl(prior_mean, prior_logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / math.log(2)
        return total


# ---------------------------------------------------------------------------
# The family


@dataclass
class Config:
    time_steps: int = opt(50, "diffusion steps T (seed 001: 50)", min=2)
    schedule: str = opt("cosine", "noise schedule (cosine: seed 001 eq. 14)", choices=list(SCHEDULES))
    loss: str = opt("l1", "l1 (seed 001) or l2 (seed 004)", choices=["l1", "l2"])
    objective: str = opt("eps", "what the network predicts", choices=["eps", "x0", "v"])
    snr_gamma: float = opt(0.0, "Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is theirs): each time step's "
                                "loss weighted to min(SNR, gamma) times its error in x0; 0: the plain loss",
                           min=0.0)
    clip_x0: bool = opt(True, "clamp the predicted x0 to [-1, 1] while sampling (Algorithm 2, line 6)")
    dim: int = opt(16, "U-Net base width (seed 001: 16)", min=1)
    dim_mults: list[int] = opt([1, 2, 4, 8], "U-Net width multipliers per resolution (seed 001: 1,2,4,8)", min=1)
    num_res_blocks: int = opt(2, "residual blocks per resolution", min=1)
    attn_levels: int = opt(2, "self-attention in this many lowest-resolution levels", min=0)
    dropout: float = opt(0.0, "dropout in the residual blocks", min=0.0, max=1.0)
    cond: str = opt("none", "conditioning: none, or class (a class embedding beside the time embedding, "
                            "trained with label dropout for classifier-free guidance)", choices=["none", "class"])
    label_dropout: float = opt(0.1, "with cond class: the share of labels replaced by 'no class' in training",
                               min=0.0, max=1.0)
    guidance: float = opt(1.0, "with cond class: the default guidance weight w of sampling, "
                               "(1 + w) eps(x, class) - w eps(x); 0 is the conditional model alone", min=0.0)
    preview: str = opt("", "sampler of the sample grids during training, NAME or NAME:STEPS (e.g. ddim:50; "
                           "empty: ancestral on all T steps)")
    strip_steps: list[int] = opt([], "time steps of the inference strip (empty: seed 004's 200,100,50,20,10,0 "
                                     "when T >= 200, else 100,50,25,10,5,0 percent of T)", min=0)


TRAIN_DEFAULTS = {"batch_size": 32, "lr": 1e-3, "steps": 1000, "ema_decay": 0.995}
DATA_DEFAULTS = {"dataset": "digits"}
DATA_KIND = "image"
IMAGE_SIZE = 32


# steps of every sampler but ancestral when --steps is not given (ancestral takes all T: Algorithm 2)
DEFAULT_STEPS = 50
# RePaint's defaults (Lugmayr et al. 2022): 250 levels, jumps of 10 levels, each stretch denoised 10 times
REPAINT_STEPS, REPAINT_JUMP, REPAINT_RESAMPLINGS = 250, 10, 10


class DDPM(GenerativeModel):
    samplers = ("ancestral", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde")
    # the default noise levels of each sampler: DDPM's and DDIM's own evenly spaced time steps, and for the ODE
    # and SDE solvers Karras et al.'s rho spacing from sigma = 80 (one step must not span sigma_T = 2e4 to 6)
    spacing = {"ancestral": "uniform", "ddim": "uniform", "euler": "karras", "heun": "karras", "dpmpp_2m": "karras",
               "dpmpp_2m_sde": "karras"}

    def __init__(self, shape, time_steps=50, schedule="cosine", loss="l1", objective="eps", clip_x0=True,
                 dim=16, dim_mults=(1, 2, 4, 8), num_res_blocks=2, attn_levels=2, dropout=0.0, num_classes=0,
                 label_dropout=0.1, guidance=1.0, pixels=True, snr_gamma=0.0):
        """`pixels`: the data are images in [0, 1], diffused as 2x - 1 and returned clamped to [0, 1];
        otherwise they are diffused and returned as they are (latent diffusion)."""
        super().__init__()
        self.shape, self.pixels = tuple(shape), pixels
        self.loss_type, self.objective, self.clip_x0, self.snr_gamma = loss, objective, clip_x0, snr_gamma
        self.num_classes, self.label_dropout, self.guidance = num_classes, label_dropout, guidance
        self.net = UNet(shape[0], dim=dim, dim_mults=tuple(dim_mults), num_res_blocks=num_res_blocks,
                        attn_levels=attn_levels, dropout=dropout, num_classes=num_classes)
        self.diffusion = GaussianDiffusion(SCHEDULES[schedule](time_steps))
        # clip_x0 clamps x0 to [-x0_range, x0_range]: [-1, 1] for images; latents have their own range,
        # measured on the training set and kept in the checkpoints
        if pixels:
            self.x0_range = 1.0
        else:
            self.register_buffer("x0_range", torch.ones((), dtype=torch.float64))

    def loss(self, batch):
        x, y = batch[0], batch[1]
        net = self.net
        if self.num_classes:  # classifier-free guidance: some labels become "no class" (class K)
            y = torch.where(parallel.rand_like(y.float()) < self.label_dropout, self.num_classes, y)
            net = lambda xt, t: self.net(xt, t, y)  # noqa: E731
        return {"loss": self.diffusion.training_loss(net, self.to_model(x), self.loss_type, self.objective,
                                                      self.snr_gamma).mean()}

    def to_model(self, x):
        """Data as the diffusion sees it: images in [0, 1] to [-1, 1]; latents unchanged."""
        return x * 2 - 1 if self.pixels else x

    def from_model(self, v):
        """The inverse of to_model, images clamped to [0, 1]."""
        return ((v + 1) / 2).clamp(0, 1) if self.pixels else v

    def class_labels(self, n: int, classes=None) -> torch.Tensor:
        """The class of each of n samples: `classes` (an int or n ints), or 0, 1, ..., K-1, 0, 1, ... by default."""
        if classes is None:
            return torch.arange(n, device=self.device) % self.num_classes
        return torch.as_tensor(classes, device=self.device, dtype=torch.long).expand(n)

    def denoiser(self, classes=None, guidance: float | None = None, n: int = 0) -> VPDenoiser:
        """The network as D(x, sigma) on data in [-1, 1], for the samplers of genlab.sampling.

        A class-conditional model draws n samples of `classes` (see class_labels) with guidance weight
        `guidance` (default: the model's); with n = 0 it is its unconditional model ("no class")."""
        if not self.num_classes and (classes is not None or guidance is not None):
            raise GenlabError("this ddpm is not class-conditional: --class and --guidance need a run trained "
                              "with --cond class")
        net = self.net
        if self.num_classes and n:
            w = self.guidance if guidance is None else guidance
            net = guided(self.net, self.class_labels(n, classes), w, self.num_classes)
        return VPDenoiser(net, self.diffusion.alpha_bar, self.objective, self.clip_x0 and float(self.x0_range))

    def levels(self, sampler: str = "ancestral", steps: int | None = None, spacing: str | None = None,
               denoiser: VPDenoiser | None = None) -> list[float]:
        """The noise levels `sample` runs `sampler` on: `steps` of them (default: all T for ancestral, else
        min(T, 50)) by `spacing` (default: the model's for that sampler), then 0. A number of steps or a
        spacing the model cannot take is refused here, before any sampling."""
        steps = steps or (self.diffusion.T if sampler == "ancestral" else min(self.diffusion.T, DEFAULT_STEPS))
        return noise_levels(denoiser or self.denoiser(), steps, spacing or self.spacing.get(sampler, "uniform"))

    @torch.no_grad()
    def sample(self, n, generator=None, sampler: str = "ancestral", steps: int | None = None, eta: float | None = None,
               spacing: str | None = None, keep=(), progress=None, classes=None, guidance: float | None = None):
        """n images in [0, 1] by one of `samplers` on `steps` noise levels (ancestral on all T is Algorithm 2);
        a class-conditional model draws `classes` (default: every class in turn) with classifier-free guidance.

        With `keep` (time steps in 0..T), also {t: x_t in [0, 1]} for those of them the sampler visits."""
        D = self.denoiser(classes, guidance, n)
        sigmas = self.levels(sampler, steps, spacing, D)
        x = D.prior((n, *self.shape), sigmas[0], generator, self.device)
        x, kept = self.reverse(D, x, sigmas, sampler, eta, generator, keep, progress)
        return (x, kept) if keep else x

    def reverse(self, D: VPDenoiser, x, sigmas, sampler="ancestral", eta=None, generator=None, keep=(), progress=None):
        """Run a sampler from x at sigmas[0]; the result and the kept states x_t, as data (see from_model)."""
        T = self.diffusion.T
        step_of = {D.sigmas[T - t]: t for t in range(1, T + 1)} | {0.0: 0}
        to_image = lambda v, s: self.from_model(v / math.sqrt(1 + s ** 2))  # noqa: E731  x_t = x / sqrt(1 + s^2)
        kept = {}
        if step_of.get(sigmas[0]) in keep:
            kept[step_of[sigmas[0]]] = to_image(x, sigmas[0])

        def callback(i, x):
            if step_of.get(sigmas[i + 1]) in keep:
                kept[step_of[sigmas[i + 1]]] = to_image(x, sigmas[i + 1])
            if progress is not None:
                progress.update(1)

        x = solve(D, sampler, x, sigmas, eta, generator, callback)
        return to_image(x, sigmas[-1]), kept

    @torch.no_grad()
    def inpaint(self, x, m, generator=None, steps: int | None = None, jump_length: int = REPAINT_JUMP,
                resamplings: int = REPAINT_RESAMPLINGS):
        """Fill the missing pixels (m = 1) of images x in [0, 1] by RePaint on `steps` of the model's levels
        (default min(T, 250)); the known pixels are returned exactly as given."""
        D = self.denoiser()
        sigmas = noise_levels(D, steps or min(self.diffusion.T, REPAINT_STEPS), "uniform")
        known = (1 - m).expand_as(x)
        out = repaint(D, x * 2 - 1, known, sigmas, jump_length, resamplings, generator)
        return known * x + m * ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def nll(self, x, generator=None):
        """Upper bound on -log p(x) of 8-bit images x in [0, 1], in nats per example."""
        bpd = self.diffusion.vlb_terms(self.net, x * 2 - 1, self.objective, self.clip_x0, generator)
        return bpd * math.log(2) * x[0].numel()


SAMPLERS = DDPM.samplers


def build(cfg: Config, shape, num_classes=0) -> DDPM:
    if cfg.cond == "class" and num_classes < 2:
        raise GenlabError("--cond class needs a labelled data set (digits, mnist, fashion-mnist, cifar10, "
                          "or a folder with one sub-folder per class)")
    model = DDPM(shape, cfg.time_steps, cfg.schedule, cfg.loss, cfg.objective, cfg.clip_x0, cfg.dim,
                 cfg.dim_mults, cfg.num_res_blocks, cfg.attn_levels, cfg.dropout,
                 num_classes if cfg.cond == "class" else 0, cfg.label_dropout, cfg.guidance, snr_gamma=cfg.snr_gamma)
    model.preview_sampler = parse_sampler(cfg.preview, DDPM.samplers)
    return model


def validate(cfg: Config, data_cfg) -> None:
    parse_sampler(cfg.preview, DDPM.samplers)  # a bad preview sampler stops the run before it starts


def strip_steps(cfg: Config) -> list[int]:
    T = cfg.time_steps
    if cfg.strip_steps:
        return sorted({min(t, T) for t in cfg.strip_steps}, reverse=True)
    if T >= 200:
        return [200, 100, 50, 20, 10, 0]
    return sorted({round(f * T) for f in (1.0, 0.5, 0.25, 0.1, 0.05, 0.0)}, reverse=True)


@torch.no_grad()
def figures(model: DDPM, data, out_dir, cfg: Config, generator: torch.Generator, quick: bool = False) -> list[str]:
    """Seed 001's forward and backward processes at 0/25/50/75/99% of T and seed 004's inference strip.

    8 images in the processes and 4 in the strip; half as many with `quick` (the end of a short run)."""
    from genlab.viz import image_table

    device = model.device
    T = model.diffusion.T
    fracs = [0.0, 0.25, 0.5, 0.75, 0.99]
    ts = [int(f * T) for f in fracs]
    x0 = data.floats("train")[: 4 if quick else 8].to(device) * 2 - 1
    # Forward: x_t ~ q(x_t | x_0) at each fraction, from the first training images.
    cols = []
    for t in ts:
        if t == 0:
            cols.append(x0)
        else:
            tt = torch.full((len(x0),), t - 1, device=device, dtype=torch.long)
            cols.append(model.diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=generator, device=device)))
    to01 = lambda v: ((v + 1) / 2).clamp(0, 1)  # noqa: E731
    rows = [torch.stack([to01(c[i]) for c in cols]) for i in range(len(x0))]
    titles = [f"{int(f * 100)}%: t={t}" for f, t in zip(fracs, ts)]
    paths = [f"{out_dir}/forward.png", f"{out_dir}/backward.png", f"{out_dir}/strip.png"]
    image_table(paths[0], rows, titles, title="forward process q(x_t | x_0)")
    # Backward: Algorithm 2 from the last forward state, shown at the same fractions.
    D = model.denoiser()
    sigmas = [D.sigmas[T - t] for t in range(ts[-1], 0, -1)] + [0.0]
    _, kept = model.reverse(D, cols[-1] * math.sqrt(1 + sigmas[0] ** 2), sigmas, generator=generator, keep=ts)
    order = sorted(ts, reverse=True)
    rows = [torch.stack([kept[t][i] for t in order]) for i in range(len(x0))]
    image_table(paths[1], rows, [f"t={t}" for t in order], title="backward process p(x_{t-1} | x_t)")
    # Inference strip (seed 004): x_t along one sampling run from pure noise.
    steps = strip_steps(cfg)
    k = 2 if quick else 4
    _, kept = model.sample(k, generator=generator, keep=steps)
    rows = [torch.stack([kept[t][i] for t in steps]) for i in range(k)]
    image_table(paths[2], rows, [f"t={t}" for t in steps], title="inference x_t")
    paths.append(inpaint_figure(model, data, f"{out_dir}/inpaint.png", generator, quick))
    if model.num_classes:
        paths.append(class_figure(model, data, f"{out_dir}/classes.png", generator, 2 if quick else 8))
    return paths


def class_figure(model: DDPM, data, path, generator, per_class: int = 8) -> str:
    """One row of samples per class, at the model's default guidance."""
    from genlab.viz import image_table

    K = model.num_classes
    y = torch.arange(K, device=model.device).repeat_interleave(per_class)
    x = model.sample(len(y), generator, classes=y).view(K, per_class, *model.shape)
    names = data.classes or [str(k) for k in range(K)]
    image_table(path, list(x), [""] * per_class, row_titles=[str(c) for c in names],
                title=f"samples of each class, guidance w = {model.guidance:g}")
    return path


def inpaint_figure(model: DDPM, data, path, generator, quick: bool = False, completions: int = 3) -> str:
    """RePaint on test images with a centred box of half the side: masked input, completions, truth.

    4 images on min(T, 100) levels with 5 resamplings (460 network calls at T >= 100); with `quick`,
    2 images on min(T, 10) levels without resampling."""
    from genlab.viz import image_table

    x = data.floats("test")[: 2 if quick else 4].to(model.device)
    H, W = model.shape[-2:]
    m = torch.zeros(1, 1, H, W, device=model.device)
    m[..., H // 4: H // 4 + H // 2, W // 4: W // 4 + W // 2] = 1
    steps, resamplings = (min(model.diffusion.T, 10), 1) if quick else (min(model.diffusion.T, 100), 5)
    k = len(x)
    done = model.inpaint(x.repeat(completions, 1, 1, 1), m, generator, steps, jump_length=min(10, steps),
                         resamplings=resamplings).view(completions, k, *x.shape[1:])  # one batch for all
    rows = [torch.stack([x[i] * (1 - m[0]) + 0.5 * m[0], *done[:, i], x[i]]) for i in range(k)]
    image_table(path, rows, ["masked", *(f"RePaint {k + 1}" for k in range(completions)), "truth"],
                title=f"RePaint: {steps} levels, jumps of {min(10, steps)}, {resamplings} resamplings")
    return path
