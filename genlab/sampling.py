"""Samplers for every model that denoises: functions of a denoiser and a sequence of noise levels.

Every sampler here works in one parametrisation (Karras et al. 2022, arXiv:2206.00364): a noisy
image is x = x0 + sigma n with n ~ N(0, I), and a model is a *denoiser* D(x, sigma) ~ E[x0 | x].
Both diffusion families fit it:
- a variance-preserving DDPM sees x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, which is x / sqrt(1 + sigma^2)
  for sigma = sqrt((1 - abar) / abar); its eps-prediction gives D = x - sigma eps      (`VPDenoiser`)
- a score model s(x, sigma) ~ grad log p_sigma(x) gives D = x + sigma^2 s (Tweedie)   (`ScoreDenoiser`)
and the score of any denoiser is s = (D - x) / sigma^2 (`Denoiser.score`).

Samplers take the starting point x (at sigmas[0]) and the levels sigmas[0] > ... > sigmas[-1] >= 0, with
one network evaluation (NFE) per level except where noted:
- `sample_ddim`: DDIM (Song, Meng and Ermon 2021, eq. 12) with eta; eta = 0 is deterministic and is the
  Euler step below, eta = 1 on all of a DDPM's levels is its Algorithm 2 (ancestral sampling) exactly.
- `sample_euler`, `sample_heun`: the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma by Euler
  (first order) and Heun (second order, 2 NFE per step, Euler for the step to sigma = 0; Karras et al.
  Algorithm 1 without churn).
- `sample_dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095): multistep, data prediction,
  second order in lambda = -log sigma; first order for the first step and the step to sigma = 0.
- `sample_dpmpp_2m_sde`: the same multistep solver on the reverse SDE (Lu et al. 2022, section 5), with
  eta the stochastic share: eta = 0 is `sample_dpmpp_2m`, and its first step at eta = 1 is ancestral.
- `annealed_langevin`: annealed Langevin dynamics (Song and Ermon 2019; seed 002 Algorithm 2) on a
  score, T steps at each level of a ladder.
- `repaint`: inpainting with an unconditional denoiser by RePaint (Lugmayr et al. 2022), on the
  schedule of `repaint_schedule`.
A class-conditional network becomes a guided one by `guided` (classifier-free guidance) before it is
wrapped as a denoiser. Noise-level sequences are separate functions: `discrete_sigmas` (some of the model's own levels:
uniform, leading or trailing spacing), `karras_sigmas` (rho spacing) and `geometric_sigmas`.
Levels are host floats, so a sampling loop never reads from the device.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

import torch

from genlab.errors import GenlabError


# ---------------------------------------------------------------------------
# Denoisers


class Denoiser:
    """D(x, sigma) -> x0_hat for x = x0 + sigma n; `sigmas` are the model's own levels, descending.

    `discrete` says the network was trained at those levels only (a DDPM's T steps); otherwise any
    sigma between the largest and the smallest is a level it knows (a noise-conditional score model).
    """

    sigmas: list[float]
    discrete: bool = False

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        raise NotImplementedError

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie's formula read backwards)."""
        return (self(x, sigma) - x) / sigma ** 2

    def prior(self, shape, sigma: float, generator=None, device=None) -> torch.Tensor:
        """A starting point at level sigma: N(0, sigma^2 I), the marginal when sigma dwarfs the data."""
        return sigma * torch.randn(shape, generator=generator, device=device)

    @property
    def sigma_max(self) -> float:
        return self.sigmas[0]

    @property
    def sigma_min(self) -> float:
        return self.sigmas[-1]


SIGMA_MAX = 80.0  # where the continuous spacings of a DDPM start


class VPDenoiser(Denoiser):
    """A variance-preserving DDPM network net(x_t, t) predicting eps, x0 or v, seen as a denoiser.

    `alpha_bar[i]` is abar at the paper's t = i + 1; sigma maps to the (fractional) time step by linear
    interpolation of log sigma between the model's levels, exact at the levels themselves. With `clip`
    the prediction of x0 is clamped to [-1, 1] (Algorithm 2, line 6), or to [-clip, clip] when it is a number
    (the range of a latent diffusion's training latents).
    """

    discrete = True

    def __init__(self, net: Callable, alpha_bar: torch.Tensor, objective: str = "eps", clip: bool | float = True):
        abar = alpha_bar.detach().double().cpu()
        self.net, self.objective = net, objective
        self.clip = 1.0 if clip is True else float(clip)  # 0: no clamp
        self.sigmas = ((1 - abar) / abar).sqrt().flip(0).tolist()  # sigma_T first
        self._log_sigmas = [math.log(s) for s in reversed(self.sigmas)]  # ascending, index i is t = i + 1

    def sigma_to_t(self, sigma: float) -> float:
        """The 0-based time step of a level: exact at the model's levels, interpolated in log sigma between them."""
        logs, ls = self._log_sigmas, math.log(sigma)
        if ls <= logs[0]:
            return 0.0
        if ls >= logs[-1]:
            return float(len(logs) - 1)
        hi = bisect.bisect_left(logs, ls)
        if logs[hi] == ls:
            return float(hi)
        return hi - 1 + (ls - logs[hi - 1]) / (logs[hi] - logs[hi - 1])

    @property
    def sigma_max(self) -> float:
        """The largest level of the continuous spacings (karras, geometric): sigma_T, at most 80.

        Beyond sigma = 80 the noisy data is the prior to within a percent (Karras et al. start there), while a
        schedule clipped at its end reaches far higher (cosine at T = 1000: sigma_T = 2e4, then 642)."""
        return min(self.sigmas[0], SIGMA_MAX)

    def prior(self, shape, sigma: float, generator=None, device=None) -> torch.Tensor:
        """x_T ~ N(0, I) of Algorithm 2, in this parametrisation: sqrt(1 + sigma^2) N(0, I)."""
        return math.sqrt(1 + sigma ** 2) * torch.randn(shape, generator=generator, device=device)

    def __call__(self, x, sigma):
        abar = 1 / (1 + sigma ** 2)
        c_in = math.sqrt(abar)  # x_t = c_in x
        t = torch.full((x.shape[0],), self.sigma_to_t(sigma), device=x.device)
        out = self.net(x * c_in, t)
        if self.objective == "eps":
            x0 = x - sigma * out  # (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        elif self.objective == "x0":
            x0 = out
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0 = abar * x - math.sqrt(1 - abar) * out
        return x0.clamp(-self.clip, self.clip) if self.clip else x0


class ScoreDenoiser(Denoiser):
    """A noise-conditional score model s(x, sigma) as a denoiser: D = x + sigma^2 s(x, sigma).

    With `clip` = (lo, hi), D is clamped to the data's range, the counterpart of Algorithm 2's clamp of a
    DDPM's x0 (images in [0, 1]): at sigma = 16 an error of 0.01 in the network's sigma s becomes 0.16 in D.
    Its score is the network's own (no round trip through D, no clamp), as Langevin uses it."""

    def __init__(self, score_fn: Callable, sigmas: torch.Tensor, clip: tuple[float, float] | None = None):
        self.score_fn = score_fn
        self.sigmas = [float(s) for s in sigmas]
        self.clip = clip

    def score(self, x, sigma):
        return self.score_fn(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype))

    def __call__(self, x, sigma):
        x0 = x + sigma ** 2 * self.score(x, sigma)
        return x0 if self.clip is None else x0.clamp(*self.clip)


def guided(net: Callable, y: torch.Tensor, w: float, null: int) -> Callable:
    """Classifier-free guidance (Ho and Salimans 2022): net(x, c) = (1 + w) net(x, c, y) - w net(x, c, null).

    The conditional and unconditional predictions come from one batched call; w = 0 is the conditional
    model alone. The combination is linear in the network's output, so it is the same whether the network
    predicts eps, x0 or v."""

    def guided_net(x, c):
        if w == 0:
            return net(x, c, y)
        out = net(torch.cat([x, x]), torch.cat([c, c]), torch.cat([y, torch.full_like(y, null)]))
        cond, uncond = out.chunk(2)
        return cond + w * (cond - uncond)

    return guided_net


# ---------------------------------------------------------------------------
# Noise levels. Each returns a descending list of floats ending in 0 (the data), n + 1 entries for n steps.

SPACINGS = ("uniform", "leading", "trailing", "karras", "geometric")


def discrete_sigmas(levels: list[float], n: int, spacing: str = "uniform") -> list[float]:
    """n of the model's own levels (descending, `levels[0]` the largest), then 0.

    With the levels indexed by time step t = 0..T-1 (t = T-1 the noisiest), the chosen steps are
    - uniform: round(linspace(T-1, 0, n)), both ends included (DDIM's default);
    - leading: 0, T//n, 2 T//n, ..., the largest level often skipped (Stable Diffusion's DDIM);
    - trailing: round(T - k T/n) - 1 for k = 0..n-1, the noisiest level included and the least noisy
      skipped (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed").
    """
    T = len(levels)
    if not 1 <= n <= T:
        raise GenlabError(f"--steps must be between 1 and {T} (the model's noise levels) with {spacing} spacing, "
                          f"got {n}; karras or geometric spacing takes any number")
    if spacing == "uniform":
        ts = [round((T - 1) * (1 - k / (n - 1))) for k in range(n)] if n > 1 else [T - 1]
    elif spacing == "leading":
        ts = [k * (T // n) for k in reversed(range(n))]
    elif spacing == "trailing":
        ts = [round(T - k * T / n) - 1 for k in range(n)]
    else:
        raise GenlabError(f"unknown discrete spacing '{spacing}' (uniform, leading, trailing)")
    ts = list(dict.fromkeys(ts))  # descending and distinct
    return [levels[T - 1 - t] for t in ts] + [0.0]


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) eq. 5: n levels evenly spaced in sigma^(1/rho), then 0 (rho = 7 their choice)."""
    if n == 1:
        return [sigma_max, 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + k / (n - 1) * (b - a)) ** rho for k in range(n)] + [0.0]


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> list[float]:
    """n levels evenly spaced in log sigma (an NCSN's ladder when n = L), then 0."""
    if n == 1:
        return [sigma_max, 0.0]
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(hi + k / (n - 1) * (lo - hi)) for k in range(n)] + [0.0]


def noise_levels(denoiser: Denoiser, n: int, spacing: str) -> list[float]:
    """n steps of `spacing` over the denoiser's range (discrete spacings pick its own levels)."""
    if spacing == "karras":
        return karras_sigmas(denoiser.sigma_max, denoiser.sigma_min, n)
    if spacing == "geometric":
        return geometric_sigmas(denoiser.sigma_max, denoiser.sigma_min, n)
    if spacing in ("uniform", "leading", "trailing"):
        return discrete_sigmas(denoiser.sigmas, n, spacing)
    raise GenlabError(f"unknown spacing '{spacing}' (available: {', '.join(SPACINGS)})")


# ---------------------------------------------------------------------------
# Samplers. `callback(i, x)` is called with the state x at sigmas[i + 1] after step i.


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, eta: float = 0.0, generator=None, callback=None):
    """DDIM with stochasticity eta: from x0_hat, go to sigma_down deterministically, then add sigma_up noise.

    sigma_up^2 = eta^2 sigma'^2 (sigma^2 - sigma'^2) / sigma^2 and sigma_down^2 = sigma'^2 - sigma_up^2 is
    DDIM's eq. 16 variance in this parametrisation; eta = 1 gives the posterior q(x_{t-1} | x_t, x0_hat).
    """
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, s)
        if s_next == 0:
            x = x0
        else:
            s_up = min(s_next, eta * math.sqrt(max(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2, 0.0)))
            s_down = math.sqrt(s_next ** 2 - s_up ** 2)
            x = x0 + (s_down / s) * (x - x0)
            if s_up > 0:
                x = x + s_up * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback(i, x)
    return x


def sample_ancestral(denoiser, x, sigmas, generator=None, callback=None):
    """Ancestral sampling: each step draws from q(x_{sigma'} | x_sigma, x0_hat) (DDIM with eta = 1).

    On a DDPM's own T levels this is Algorithm 2 of Ho et al. (seed 001) with the reverse variance beta~_t."""
    return sample_ddim(denoiser, x, sigmas, 1.0, generator, callback)


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, callback=None):
    """Euler steps of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, s)) / s
        x = x + (s_next - s) * d
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, callback=None):
    """Heun's method (trapezoidal rule) on the probability-flow ODE; an Euler step to sigma = 0."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, s)) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, s_next)) / s_next
            x = x + (s_next - s) * (d + d_next) / 2
        if callback is not None:
            callback(i, x)
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, callback=None):
    """DPM-Solver++(2M): with lambda = -log sigma and h the step in lambda, the exact solution
    x' = (sigma'/sigma) x + (1 - e^{-h}) D of a constant denoiser, with D extrapolated linearly in lambda
    from this level and the previous one: D + (D - D_prev) h / (2 h_prev). The SDE solver below at eta = 0."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, 0.0, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, eta: float = 1.0, generator=None, callback=None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095, section 5): the multistep solver above on the
    reverse SDE, with the share of it that is stochastic set by eta (0: the ODE solver, dpmpp_2m).

    A step from sigma to sigma' (h = log(sigma / sigma')) with the extrapolated denoiser d is
    x' = (sigma'/sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) d + sigma' sqrt(1 - e^{-2 eta h}) z:
    for a constant denoiser it keeps x' - d at variance sigma'^2, and at eta = 1 with d = D (the first step)
    it is the ancestral step, q(x_{sigma'} | x_sigma, x0_hat)."""
    prev = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, s)
        if s_next == 0:
            x = x0
        else:
            h = math.log(s / s_next)
            d = x0
            if prev is not None:
                r = math.log(sigmas[i - 1] / s) / h
                d = x0 + (x0 - prev) / (2 * r)
            x = (s_next / s) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * d
            if eta > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * z
        prev = x0
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def annealed_langevin(score_fn, x, sigmas, eps: float, T: int, generator=None, return_traj: bool = False):
    """Seed 002 Algorithm 2 from the initial points x: for each sigma_i, alpha_i = eps sigma_i^2 / sigma_L^2 and
    T steps x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z. `score_fn(x, sigma)` takes sigma per example.

    Returns the final points, or (final, trajectory of shape (L*T, *x.shape))."""
    traj = []
    sigmas = [float(s) for s in sigmas]
    for sigma in sigmas:
        alpha = eps * sigma ** 2 / sigmas[-1] ** 2  # line 3
        s = torch.full((x.shape[0],), sigma, device=x.device)
        for _ in range(T):
            z = torch.randn(x.shape, generator=generator, device=x.device)  # line 5
            x = x + alpha * score_fn(x, s) + math.sqrt(2 * alpha) * z  # line 6
            if return_traj:
                traj.append(x)
    return (x, torch.stack(traj)) if return_traj else x


def repaint_schedule(n: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """The levels RePaint visits (Lugmayr et al. 2022, arXiv:2201.09865), n the noisiest and 0 the data.

    It goes down one level at a time; at the levels 1, 1 + j, 1 + 2j, ... that are at least j below n it
    goes back up j levels (a jump) and down again, `resamplings` - 1 times each, so that each stretch is
    denoised `resamplings` times in all. (The paper's schedule, with time steps counted from 0.)"""
    left = {t: resamplings - 1 for t in range(1, n - jump_length + 1, jump_length)}
    t, path = n, [n]
    while t > 0:
        t -= 1
        path.append(t)
        if left.get(t, 0) > 0:
            left[t] -= 1
            t += jump_length
            path.append(t)
    return path


@torch.no_grad()
def repaint(denoiser, x_known, known, sigmas, jump_length: int = 10, resamplings: int = 10, generator=None,
            callback=None):
    """Inpainting with an unconditional denoiser by RePaint on the levels `sigmas` (descending, ending in 0).

    Going down a level, the unknown pixels take an ancestral step and the known ones are the data noised
    to the new level, x_known + sigma' z; going up (a jump from sigma to sigma'), all pixels are noised
    forward, x + sqrt(sigma'^2 - sigma^2) z, which is q(x_t' | x_t) of the DDPM in this parametrisation.
    `known` is 1 where x_known is observed. One network evaluation per step down."""
    n = len(sigmas) - 1
    level = lambda t: sigmas[n - t]  # noqa: E731  level t = n is sigmas[0]
    randn = lambda: torch.randn(x_known.shape, generator=generator, device=x_known.device)  # noqa: E731
    x = denoiser.prior(x_known.shape, sigmas[0], generator, x_known.device)
    path = repaint_schedule(n, jump_length, resamplings)
    for k, (t, t_next) in enumerate(zip(path, path[1:])):
        s, s_next = level(t), level(t_next)
        if t_next > t:  # a jump back up
            x = x + math.sqrt(s_next ** 2 - s ** 2) * randn()
        else:
            unknown = sample_ancestral(denoiser, x, [s, s_next], generator)
            seen = x_known + s_next * randn() if s_next > 0 else x_known
            x = known * seen + (1 - known) * unknown
        if callback is not None:
            callback(k, x)
    return x


# name -> what it is and its network evaluations (NFE) for n steps
SAMPLERS = {
    "ancestral": "ancestral sampling from q(x_prev | x, x0_hat) (DDIM with eta = 1; Algorithm 2 on a DDPM's T levels), n NFE",
    "ddim": "DDIM with --eta (default 0: deterministic, the Euler step of the probability-flow ODE), n NFE",
    "euler": "Euler on the probability-flow ODE, n NFE",
    "heun": "Heun on the probability-flow ODE (Karras et al. 2022), 2n - 1 NFE",
    "dpmpp_2m": "DPM-Solver++(2M), multistep second order (Lu et al. 2022), n NFE",
    "dpmpp_2m_sde": "DPM-Solver++(2M) on the reverse SDE, --eta of it stochastic (default 1; 0 is dpmpp_2m), n NFE",
    "langevin": "annealed Langevin dynamics (seed 002 Algorithm 2), --steps per noise level, L x steps NFE",
}


ETA_SAMPLERS = ("ddim", "dpmpp_2m_sde")  # the samplers that take --eta


def parse_sampler(text: str, samplers) -> dict:
    """'NAME' or 'NAME:STEPS' as keyword arguments of a model's sample(); '' is {} (its default sampler)."""
    if not text:
        return {}
    name, _, steps = text.partition(":")
    if name not in samplers or (steps and not (steps.isdigit() and int(steps) > 0)):
        raise GenlabError(f"preview sampler must be NAME or NAME:STEPS with NAME one of {', '.join(samplers)}, "
                          f"got {text!r}")
    return {"sampler": name, **({"steps": int(steps)} if steps else {})}


def nfe(sampler: str, n: int, ladder: int = 1) -> int:
    """Network evaluations of n steps; for langevin n steps at each of the `ladder` noise levels."""
    if sampler == "langevin":
        return n * ladder
    return 2 * n - 1 if sampler == "heun" else n


def solve(denoiser: Denoiser, sampler: str, x: torch.Tensor, sigmas: list[float], eta: float | None = None,
          generator=None, callback=None) -> torch.Tensor:
    """Run one of the denoiser samplers (all of SAMPLERS but langevin) from x at sigmas[0]."""
    if eta is not None and sampler not in ETA_SAMPLERS:
        raise GenlabError(f"--eta applies to the {' and '.join(ETA_SAMPLERS)} samplers, not {sampler}")
    if sampler == "ancestral":
        return sample_ancestral(denoiser, x, sigmas, generator, callback)
    if sampler == "ddim":
        return sample_ddim(denoiser, x, sigmas, eta or 0.0, generator, callback)
    if sampler == "euler":
        return sample_euler(denoiser, x, sigmas, callback)
    if sampler == "heun":
        return sample_heun(denoiser, x, sigmas, callback)
    if sampler == "dpmpp_2m":
        return sample_dpmpp_2m(denoiser, x, sigmas, callback)
    if sampler == "dpmpp_2m_sde":
        return sample_dpmpp_2m_sde(denoiser, x, sigmas, 1.0 if eta is None else eta, generator, callback)
    raise GenlabError(f"unknown sampler '{sampler}'")
