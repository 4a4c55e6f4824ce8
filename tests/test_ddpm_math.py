"""DDPM maths against independent oracles: eq. 14 by hand, eq. 12 iterated, Bayes' rule, analytic Gaussians."""

import math

import numpy as np
import pytest
import torch

from genlab.ddpm import (GaussianDiffusion, cosine_alphas, discretized_gaussian_log_likelihood, linear_alphas,
                         normal_kl)
from genlab.sampling import VPDenoiser, discrete_sigmas, solve


def run_sampler(d, net, shape, generator, sampler="ancestral", steps=None, objective="eps", clip=True, eta=None):
    """A sampler of genlab.sampling on `steps` of the DDPM's levels (uniform spacing), from x_T ~ N(0, I)."""
    D = VPDenoiser(net, d.alpha_bar, objective, clip)
    sigmas = discrete_sigmas(D.sigmas, steps or d.T)
    return solve(D, sampler, D.prior(shape, sigmas[0], generator), sigmas, eta, generator)


def test_cosine_schedule_matches_eq14_by_hand():
    T, s = 50, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = [ft / f[0] for ft in f]
    expected = [min(max(abar[t] / abar[t - 1], 0.001), 1.0) for t in range(1, T + 1)]
    np.testing.assert_allclose(cosine_alphas(T).numpy(), expected, rtol=1e-12)
    # the clip is active at the end of the schedule (f(T) = cos(pi/2)^2 = 0)
    assert cosine_alphas(T)[-1].item() == pytest.approx(0.001)


def test_linear_schedule_is_ho_et_al_at_T1000():
    betas = 1 - linear_alphas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_q_sample_moments_match_the_iterated_forward_chain():
    """x_t from eq. 13 in one jump vs T single steps of eq. 12, by Monte Carlo."""
    torch.manual_seed(0)
    alphas = cosine_alphas(20)
    d = GaussianDiffusion(alphas)
    x0 = torch.tensor([0.7, -0.3, 0.0])
    n, t = 200_000, 12  # paper t = 13
    x = x0.expand(n, 3).clone().double()
    for a in alphas[: t + 1]:
        x = a.sqrt() * x + (1 - a).sqrt() * torch.randn_like(x)
    jump = d.q_sample(x0.expand(n, 3), torch.full((n,), t), torch.randn(n, 3))
    se = 4 / math.sqrt(n)
    np.testing.assert_allclose(jump.mean(0), x.mean(0).float(), atol=se)
    np.testing.assert_allclose(jump.var(0), x.var(0).float(), rtol=0.02)
    abar = torch.cumprod(alphas, 0)[t]
    np.testing.assert_allclose(x.mean(0), abar.sqrt() * x0.double(), atol=se)
    np.testing.assert_allclose(x.var(0), (1 - abar).expand(3), rtol=0.02)


def test_posterior_eq18_equals_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from multiplying the two Gaussians (precision-weighted), not from eq. 18."""
    alphas = cosine_alphas(30)
    d = GaussianDiffusion(alphas)
    abar = torch.cumprod(alphas, 0)
    x0 = torch.tensor([[0.5, -0.8]])
    xt = torch.tensor([[0.1, 0.4]])
    for i in range(1, 30):
        a, ab_prev = alphas[i], abar[i - 1]
        # prior q(x_{t-1} | x_0) = N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood q(x_t | x_{t-1}) = N(sqrt(a) x_{t-1}, 1 - a)
        precision = 1 / (1 - ab_prev) + a / (1 - a)
        var = 1 / precision
        mean = var * (ab_prev.sqrt() * x0.double() / (1 - ab_prev) + a.sqrt() * xt.double() / (1 - a))
        m, v, logv = d.q_posterior(x0, xt, torch.tensor([i]))
        np.testing.assert_allclose(m.double(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v.flatten().double(), var.expand(1), rtol=1e-5)
        np.testing.assert_allclose(logv.exp().flatten().double(), var.expand(1), rtol=1e-5)


def test_posterior_mean_equals_eps_form():
    """Seed 002 Q2.4: mu = (x_t - (1 - a_t) / sqrt(1 - abar_t) eps) / sqrt(a_t) when x0 comes from eps."""
    d = GaussianDiffusion(linear_alphas(100))
    torch.manual_seed(1)
    x0, eps = torch.randn(5, 3), torch.randn(5, 3)
    t = torch.tensor([3, 10, 40, 70, 99])
    xt = d.q_sample(x0, t, eps)
    m, _, _ = d.q_posterior(d.predict_x0(xt, t, eps, "eps"), xt, t)
    a = d.alphas[t][:, None]
    expected = (xt - (1 - a) / d.sqrt_one_minus_alpha_bar[t][:, None] * eps) / a.sqrt()
    np.testing.assert_allclose(m, expected, rtol=1e-4, atol=1e-5)


class OptimalDenoiser(torch.nn.Module):
    """The exact E[target | x_t] for Gaussian data x0 ~ N(m, s^2) (independent per pixel)."""

    def __init__(self, d, m, s, objective):
        super().__init__()
        self.d, self.m, self.s, self.objective = d, m, s, objective

    def forward(self, xt, tf):
        t = tf.long()
        a = self.d.sqrt_alpha_bar[t].view(-1, 1, 1, 1).double()
        b = self.d.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1).double()
        xt = xt.double()
        denom = a ** 2 * self.s ** 2 + b ** 2
        eps = b * (xt - a * self.m) / denom
        x0 = self.m + a * self.s ** 2 * (xt - a * self.m) / denom
        out = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.objective]
        return out.float()


M = torch.tensor([0.3, -0.2, 0.1, -0.4]).view(1, 1, 2, 2).double()
S = torch.tensor([0.3, 0.4, 0.5, 0.35]).view(1, 1, 2, 2).double()


def chain_variance(d, s, eta=None, steps=None):
    """Exact output variance of the sampler for N(m, s^2) data: each step is linear in x_t.

    Ancestral (eta None): x_{t-1} = c0 x0hat + ct x_t + sqrt(beta~) z, x0hat = m + k (x_t - a m).
    DDIM, eta = 0: x_prev = sqrt(abar_prev) x0hat + sqrt(1 - abar_prev) (x_t - sqrt(abar) x0hat) / sqrt(1 - abar).
    """
    alphas = d.alphas.double()
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    v = torch.ones_like(s)  # x_T ~ N(0, I)
    if eta is None:
        for i in reversed(range(len(alphas))):
            a, b2 = abar[i].sqrt(), 1 - abar[i]
            k = a * s ** 2 / (a ** 2 * s ** 2 + b2)
            c0 = abar_prev[i].sqrt() * (1 - alphas[i]) / b2
            ct = alphas[i].sqrt() * (1 - abar_prev[i]) / b2
            beta_tilde = (1 - alphas[i]) * (1 - abar_prev[i]) / b2
            v = (c0 * k + ct) ** 2 * v + (beta_tilde if i > 0 else 0)
        return v
    ts = torch.linspace(len(alphas) - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    for j, i in enumerate(ts):
        ab, abp = abar[i], (abar[ts[j + 1]] if j + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64))
        k = ab.sqrt() * s ** 2 / (ab * s ** 2 + 1 - ab)
        coef = abp.sqrt() * k + (1 - abp).sqrt() / (1 - ab).sqrt() * (1 - ab.sqrt() * k)
        v = coef ** 2 * v
    return v


@pytest.mark.parametrize("schedule,T,objective", [("cosine", 50, "eps"), ("linear", 1000, "eps"),
                                                  ("cosine", 1000, "x0"), ("cosine", 1000, "v")])
def test_ancestral_sampling_with_optimal_denoiser(schedule, T, objective):
    """Samples have the data's mean, and the variance the linear-Gaussian chain predicts exactly.

    With beta~ as the reverse variance (Algorithm 2) that variance falls slightly short of s^2 for
    small T (the known bias of the fixed small variance); for T = 1000 it is within 2.5% of s^2.
    """
    d = GaussianDiffusion(linear_alphas(T) if schedule == "linear" else cosine_alphas(T))
    net = OptimalDenoiser(d, M, S, objective)
    n = 12000
    x = run_sampler(d, net, (n, 1, 2, 2), torch.Generator().manual_seed(0), objective=objective, clip=False).double()
    np.testing.assert_allclose(x.mean(0), M[0], atol=4 * 0.5 / math.sqrt(n))
    np.testing.assert_allclose(x.var(0), chain_variance(d, S)[0], rtol=0.04)
    if T >= 1000:
        np.testing.assert_allclose(chain_variance(d, S)[0], (S ** 2)[0], rtol=0.025)
        np.testing.assert_allclose(x.var(0), (S ** 2)[0], rtol=0.05)


@pytest.mark.parametrize("steps", [50, 200])
def test_ddim_with_optimal_denoiser(steps):
    """Deterministic DDIM: the data's mean, the variance of the exact linear chain, s^2 within 2.5% at 200 steps."""
    d = GaussianDiffusion(cosine_alphas(1000))
    net = OptimalDenoiser(d, M, S, "eps")
    n = 20000
    x = run_sampler(d, net, (n, 1, 2, 2), torch.Generator().manual_seed(0), "ddim", steps, clip=False).double()
    np.testing.assert_allclose(x.mean(0), M[0], atol=4 * 0.5 / math.sqrt(n))
    np.testing.assert_allclose(x.var(0), chain_variance(d, S, eta=0.0, steps=steps)[0], rtol=0.04)
    if steps >= 200:
        np.testing.assert_allclose(x.var(0), (S ** 2)[0], rtol=0.05)


def test_normal_kl_matches_torch_distributions():
    torch.manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 10).unbind(0)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-5, atol=1e-6)


def test_discretized_gaussian_is_a_distribution_over_256_bins():
    x = torch.linspace(-1, 1, 256).double()  # the 8-bit grid scaled to [-1, 1]
    for mean, log_scale in [(0.1, -2.0), (-0.97, -4.0), (0.5, 0.5)]:
        p = discretized_gaussian_log_likelihood(x, torch.tensor(mean).double(), torch.tensor(log_scale).double()).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_variational_bound_of_optimal_denoiser_bounds_the_entropy_and_tightens_with_T():
    """The bound is an NLL upper bound, so on average at least the data's entropy; more steps tighten it."""
    m, s = 0.1, 0.3
    # 8-bit data whose exact distribution is known: the discretised N(m, s^2) on the 256-point grid
    grid = torch.linspace(-1, 1, 256).double()
    p = discretized_gaussian_log_likelihood(grid, torch.tensor(m).double(), torch.tensor(math.log(s)).double()).exp()
    entropy_bits = -(p * p.clamp(min=1e-300).log2()).sum().item()
    bounds = []
    for T in (50, 1000):
        d = GaussianDiffusion(cosine_alphas(T))
        g = torch.Generator().manual_seed(0)
        x0 = grid[torch.multinomial(p, 2000, replacement=True, generator=g)].float().view(-1, 1, 1, 1)
        net = OptimalDenoiser(d, torch.tensor(m).double(), torch.tensor(s).double(), "eps")
        bounds.append(d.vlb_terms(net, x0, clip=False, generator=g).mean().item())
    assert min(bounds) >= entropy_bits - 0.05
    assert bounds[1] < bounds[0] - 0.2
    assert bounds[1] < entropy_bits + 0.75


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error(objective):
    """Hang et al. 2023: with any objective, the weighted squared error of the network's output equals
    min(SNR_t, gamma) ||x0_hat - x0||^2, x0_hat the prediction of x0 that output implies."""
    torch.manual_seed(0)
    d = GaussianDiffusion(cosine_alphas(100))
    x0, eps, out = torch.randn(3, 64, 2, 4, 4).unbind(0)
    t = torch.arange(0, 100, 100 // 64)[:64]
    xt = d.q_sample(x0, t, eps)
    weighted = ((out - d.target(x0, eps, t, objective)) ** 2).mean((1, 2, 3)) * d.loss_weight(t, objective, 5.0)
    abar = d.alpha_bar[t].double()
    by_hand = (abar / (1 - abar)).clamp(max=5.0).float()
    x0_error = ((d.predict_x0(xt, t, out, objective) - x0) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(weighted, by_hand * x0_error, rtol=1e-4, atol=1e-6)
    assert (by_hand < 5).any() and (by_hand == 5).any()  # both sides of the clip are tested


def test_min_snr_weighting_changes_the_loss_only_where_snr_exceeds_gamma():
    d = GaussianDiffusion(cosine_alphas(50))
    net = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    x0 = torch.randn(256, 1, 4, 4)
    torch.manual_seed(1)
    plain = d.training_loss(net, x0, "l2", "eps", 0.0)
    torch.manual_seed(1)
    huge = d.training_loss(net, x0, "l2", "eps", 1e12)
    torch.manual_seed(1)
    weighted = d.training_loss(net, x0, "l2", "eps", 1.0)
    torch.testing.assert_close(plain, huge)  # gamma above every SNR: weight 1 for eps
    assert (weighted <= plain + 1e-6).all() and (weighted < plain - 1e-3).any()


def test_snr_gamma_reaches_the_training_loss_of_ddpm_and_ldm():
    from genlab import ddpm, ldm

    batch = (torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    for family, cfg in ((ddpm, ddpm.Config(time_steps=20, dim=4, dim_mults=[1], num_res_blocks=1, attn_levels=0)),
                        (ldm, ldm.Config(time_steps=20, dim=4, dim_mults=[1], num_res_blocks=1, attn_levels=0))):
        losses = []
        for gamma in (0.0, 0.5):
            cfg.snr_gamma = gamma
            torch.manual_seed(0)  # the same weights, time steps and noise for both
            model = family.build(cfg, (1, 8, 8))
            diffusion = getattr(model, "latent", model)
            assert diffusion.snr_gamma == gamma
            x = batch if family is ddpm else (torch.randn(64, *diffusion.shape), batch[1])
            losses.append(diffusion.loss(x)["loss"].item())
        assert losses[1] < losses[0]  # gamma below most levels' SNR shrinks the loss
