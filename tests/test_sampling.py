"""The samplers against oracles: the exact probability-flow solution of Gaussian data, exact linear-Gaussian
chains, Algorithm 2 and DDIM's eq. 12 transcribed in the DDPM's own variables, and the schedules' definitions."""

import math

import numpy as np
import pytest
import torch

from genlab.ddpm import GaussianDiffusion, cosine_alphas, linear_alphas
from genlab.sampling import (Denoiser, ScoreDenoiser, VPDenoiser, annealed_langevin, discrete_sigmas,
                             geometric_sigmas, karras_sigmas, nfe, sample_ancestral, sample_ddim, sample_dpmpp_2m,
                             sample_dpmpp_2m_sde, sample_euler, sample_heun, solve)

# Gaussian data x0 ~ N(MU, COV) in 2-D with a full covariance
Q = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=torch.float64)
EIG = torch.tensor([0.25, 0.04], dtype=torch.float64)
COV = Q @ torch.diag(EIG) @ Q.T
MU = torch.tensor([0.5, -0.3], dtype=torch.float64)


def cov_power(sigma2: float, p: float) -> torch.Tensor:
    """(COV + sigma^2 I)^p."""
    return Q @ torch.diag((EIG + sigma2) ** p) @ Q.T


class GaussianDenoiser(Denoiser):
    """The exact E[x0 | x0 + sigma n] = MU + COV (COV + sigma^2 I)^-1 (x - MU)."""

    def __init__(self, sigma_max=20.0, sigma_min=0.05):
        self.sigmas = [sigma_max, sigma_min]
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        gain = COV @ cov_power(sigma ** 2, -1.0)
        return MU + (x - MU) @ gain.T


def exact_flow(x, sigma_from, sigma_to):
    """The probability-flow ODE for Gaussian data: x - MU scales by (COV + s^2)^1/2 (COV + s0^2)^-1/2."""
    m = cov_power(sigma_to ** 2, 0.5) @ cov_power(sigma_from ** 2, -0.5)
    return MU + (x - MU) @ m.T


ODE_SOLVERS = {"euler": (sample_euler, 1), "ddim": (lambda D, x, s: sample_ddim(D, x, s, eta=0.0), 1),
               "heun": (sample_heun, 2), "dpmpp_2m": (sample_dpmpp_2m, 2)}


@pytest.mark.parametrize("name", list(ODE_SOLVERS))
def test_ode_solvers_converge_to_the_exact_flow_at_their_order(name):
    """Error against the exact solution at sigma_min as the steps double: halves (1st order) or quarters (2nd)."""
    solver, order = ODE_SOLVERS[name]
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    exact = exact_flow(x, 20.0, 0.05)
    errors = []
    for n in (16, 32, 64, 128):
        sigmas = geometric_sigmas(20.0, 0.05, n)[:-1]  # stop at sigma_min: the step to 0 is first order for all
        errors.append((solver(GaussianDenoiser(), x, sigmas) - exact).norm(dim=1).max().item())
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert rates[-1] == pytest.approx(order, abs=0.25), (errors, rates)
    assert errors[-1] < (0.05 if order == 1 else 1e-3)


@pytest.mark.parametrize("name", list(ODE_SOLVERS))
def test_ode_solvers_end_at_the_exact_data_point(name):
    """All the way to sigma = 0 on Karras levels: the exact map of the Gaussian, within the solver's error."""
    solver, order = ODE_SOLVERS[name]
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    D = GaussianDenoiser(20.0, 0.002)
    out = solver(D, x, karras_sigmas(20.0, 0.002, 100))
    assert (out - exact_flow(x, 20.0, 0.0)).norm(dim=1).max().item() < (0.03 if order == 1 else 2e-3)
    assert D.calls == nfe(name, 100)  # the NFE each sampler claims


def test_langevin_evaluates_the_score_steps_times_at_each_level():
    calls = []
    annealed_langevin(lambda x, s: calls.append(1) or -x, torch.zeros(3, 2), [2.0, 1.0, 0.5], 1e-3, 7)
    assert len(calls) == nfe("langevin", 7, ladder=3) == 21


def ve_chain(sigmas, eta):
    """Exact mean and covariance of DDIM(eta) from x ~ N(0, sigma_0^2 I) with the exact denoiser: each step is
    x' - MU = A (x - MU) + s_up z with A = K + (s_down / s)(I - K), K = COV (COV + s^2)^-1."""
    mean, cov = -MU, sigmas[0] ** 2 * torch.eye(2, dtype=torch.float64)  # of x - MU
    for s, t in zip(sigmas, sigmas[1:]):
        K = COV @ cov_power(s ** 2, -1.0)
        if t == 0:
            A, up = K, 0.0
        else:
            up = min(t, eta * math.sqrt(t ** 2 * (s ** 2 - t ** 2) / s ** 2))
            A, up = K + math.sqrt(t ** 2 - up ** 2) / s * (torch.eye(2, dtype=torch.float64) - K), up
        mean, cov = A @ mean, A @ cov @ A.T + up ** 2 * torch.eye(2, dtype=torch.float64)
    return mean + MU, cov


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ancestral_and_ddim_reproduce_the_gaussian(eta):
    """Mean and covariance of 40,000 samples within Monte Carlo error of the exact chain, which is COV within 3%."""
    n = 40000
    sigmas = geometric_sigmas(80.0, 0.002, 400)
    g = torch.Generator().manual_seed(2)
    x = sample_ddim(GaussianDenoiser(), 80.0 * torch.randn(n, 2, generator=g, dtype=torch.float64), sigmas, eta, g)
    mean, cov = ve_chain(sigmas, eta)
    se = (torch.diag(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 4 * se).all()
    emp = torch.cov(x.T)
    np.testing.assert_allclose(emp, cov, atol=4 * math.sqrt(2 / n) * EIG.max().item())
    np.testing.assert_allclose(cov, COV, atol=0.03 * EIG.max().item())


def sde_2m_chain(sigmas, eta):
    """Exact mean and covariance of DPM-Solver++(2M) SDE with the exact denoiser, from x ~ N(0, sigma_0^2 I).

    A step depends on this level's x and the last one's (through D_prev), so the chain runs on the pair
    y = (x_i - MU, x_{i-1} - MU): x' - MU = a (x - MU) + b (d - MU) + c z with d - MU = (1 + 1/2r) K (x - MU)
    - (1/2r) K_prev (x_prev - MU), a = (t/s) e^{-eta h}, b = 1 - e^{-(1 + eta) h}, c = t sqrt(1 - e^{-2 eta h})."""
    eye, zero = torch.eye(2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    mean = torch.cat([-MU, -MU])
    cov = torch.block_diag(sigmas[0] ** 2 * eye, zero)
    k_prev = None
    for i, (s, t) in enumerate(zip(sigmas, sigmas[1:])):
        K = COV @ cov_power(s ** 2, -1.0)
        c = 0.0
        if t == 0:
            top = torch.cat([K, zero], 1)
        else:
            h = math.log(s / t)
            a, b = (t / s) * math.exp(-eta * h), -math.expm1(-(1 + eta) * h)
            c = t * math.sqrt(-math.expm1(-2 * eta * h))
            if k_prev is None:
                top = torch.cat([a * eye + b * K, zero], 1)
            else:
                r = math.log(sigmas[i - 1] / s) / h
                top = torch.cat([a * eye + b * (1 + 1 / (2 * r)) * K, -b / (2 * r) * k_prev], 1)
        M = torch.cat([top, torch.cat([eye, zero], 1)])
        mean, cov = M @ mean, M @ cov @ M.T + torch.block_diag(c ** 2 * eye, zero)
        k_prev = K
    return mean[:2] + MU, cov[:2, :2]


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpmpp_2m_sde_reproduces_its_exact_chain(eta):
    """40,000 samples: mean and covariance within Monte Carlo error of the exact chain, itself COV within 1.5%."""
    n, sigmas = 40000, karras_sigmas(80.0, 0.002, 80)
    g = torch.Generator().manual_seed(4)
    x = sample_dpmpp_2m_sde(GaussianDenoiser(), 80.0 * torch.randn(n, 2, generator=g, dtype=torch.float64), sigmas,
                            eta, g)
    mean, cov = sde_2m_chain(sigmas, eta)
    assert ((x.mean(0) - mean).abs() < 4 * (torch.diag(cov) / n).sqrt()).all()
    np.testing.assert_allclose(torch.cov(x.T), cov, atol=4 * math.sqrt(2 / n) * EIG.max().item())
    np.testing.assert_allclose(cov, COV, atol=0.015 * EIG.max().item())


def test_dpmpp_2m_sde_is_second_order_where_ancestral_is_first():
    """The exact chains' covariance error against COV as the steps double: quarters for the 2M SDE solver,
    halves for ancestral sampling (DDIM with eta = 1) on the same levels."""
    def rates(chain):
        errors = [(chain(karras_sigmas(80.0, 0.002, n), 1.0)[1] - COV).abs().max().item() for n in (40, 80, 160)]
        return [math.log2(a / b) for a, b in zip(errors, errors[1:])], errors[-1]

    (sde_rates, sde_err), (anc_rates, anc_err) = rates(sde_2m_chain), rates(ve_chain)
    assert all(r == pytest.approx(2, abs=0.25) for r in sde_rates), sde_rates
    assert all(r == pytest.approx(1, abs=0.25) for r in anc_rates), anc_rates
    assert sde_err < anc_err / 10


def test_dpmpp_2m_sde_first_step_is_ancestral():
    """At eta = 1 a single step (no previous level to extrapolate from) is the ancestral step; at eta = 0 the
    solver is dpmpp_2m, whose order the exact-flow tests above check."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 20
    one = sample_dpmpp_2m_sde(GaussianDenoiser(), x, [20.0, 3.0], 1.0, torch.Generator().manual_seed(6))
    torch.testing.assert_close(one, sample_ancestral(GaussianDenoiser(), x, [20.0, 3.0],
                                                     torch.Generator().manual_seed(6)), rtol=1e-12, atol=1e-12)


def test_annealed_langevin_reproduces_the_gaussian():
    """Algorithm 2 with the exact score of N(MU, COV + sigma^2 I): each step is linear, so the exact chain
    (mean and covariance from x ~ N(0, I)) is the oracle; its end is COV within 3%."""
    sigmas = geometric_sigmas(1.0, 0.01, 10)[:-1]
    eps, T, n = 2e-5, 100, 40000
    D = GaussianDenoiser(1.0, 0.01)
    score = lambda x, s: (D(x, float(s[0])) - x) / float(s[0]) ** 2  # noqa: E731
    g = torch.Generator().manual_seed(3)
    x = annealed_langevin(score, torch.randn(n, 2, generator=g, dtype=torch.float64), sigmas, eps, T, g)
    mean, cov = -MU, torch.eye(2, dtype=torch.float64)
    for s in sigmas:
        alpha = eps * s ** 2 / sigmas[-1] ** 2
        A = torch.eye(2, dtype=torch.float64) - alpha * cov_power(s ** 2, -1.0)
        for _ in range(T):
            mean, cov = A @ mean, A @ cov @ A.T + 2 * alpha * torch.eye(2, dtype=torch.float64)
    mean = mean + MU
    assert ((x.mean(0) - mean).abs() < 4 * (torch.diag(cov) / n).sqrt()).all()
    np.testing.assert_allclose(torch.cov(x.T), cov, atol=4 * math.sqrt(2 / n) * EIG.max().item())
    np.testing.assert_allclose(cov, COV + 0.01 ** 2 * torch.eye(2, dtype=torch.float64), atol=0.03 * EIG.max().item())


# --- a DDPM's network as a denoiser


class VPGaussianNet(torch.nn.Module):
    """The exact E[eps | x_t] (or x0, or v) of per-pixel Gaussian data N(m, s^2), called as net(x_t, t)."""

    def __init__(self, d, m, s, objective="eps"):
        super().__init__()
        self.d, self.m, self.s, self.objective = d, m, s, objective

    def forward(self, xt, tf):
        assert torch.equal(tf, tf.round()), "the model's own levels reach the network as whole time steps"
        t = tf.long()
        a = self.d.sqrt_alpha_bar.double()[t].view(-1, 1, 1, 1)
        b = self.d.sqrt_one_minus_alpha_bar.double()[t].view(-1, 1, 1, 1)
        xt = xt.double()
        denom = a ** 2 * self.s ** 2 + b ** 2
        eps = b * (xt - a * self.m) / denom
        x0 = self.m + a * self.s ** 2 * (xt - a * self.m) / denom
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.objective].float()


M = torch.tensor([0.3, -0.2, 0.1, -0.4]).view(1, 1, 2, 2).double()
S = torch.tensor([0.3, 0.4, 0.5, 0.35]).view(1, 1, 2, 2).double()


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_vp_denoiser_is_the_exact_denoiser_in_the_ve_view(objective):
    d = GaussianDiffusion(cosine_alphas(100))
    D = VPDenoiser(VPGaussianNet(d, M, S, objective), d.alpha_bar, objective, clip=False)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0)).double()
    for t in (1, 10, 60, 99):
        sigma = D.sigmas[100 - t]
        assert D.sigma_to_t(sigma) == t - 1
        np.testing.assert_allclose(D(x * sigma, sigma), M + S ** 2 / (S ** 2 + sigma ** 2) * (x * sigma - M),
                                   rtol=1e-4, atol=1e-5)


def test_sigma_to_t_interpolates_log_sigma_between_levels():
    d = GaussianDiffusion(linear_alphas(50))
    D = VPDenoiser(None, d.alpha_bar)
    lo, hi = D.sigmas[50 - 10], D.sigmas[50 - 11]  # t = 10 and 11, 0-based 9 and 10
    assert D.sigma_to_t(math.sqrt(lo * hi)) == pytest.approx(9.5, abs=0.01)
    assert D.sigma_to_t(1e-9) == 0 and D.sigma_to_t(1e9) == 49


def algorithm2(d, net, shape, generator, clip=True):
    """Ho et al. Algorithm 2 in the DDPM's variables, line by line: the oracle for sample_ancestral."""
    x = torch.randn(shape, generator=generator)
    for i in reversed(range(d.T)):
        t = torch.full((shape[0],), i, dtype=torch.long)
        x0 = d.predict_x0(x, t, net(x, t.float()), "eps")
        x0 = x0.clamp(-1, 1) if clip else x0
        mean, var, _ = d.q_posterior(x0, x, t)
        z = torch.randn(shape, generator=generator) if i > 0 else 0.0
        x = mean + var.sqrt() * z
    return x


def ddim_eq12(d, net, shape, steps, eta, generator):
    """DDIM (Song et al. eq. 12 with eq. 16's sigma) in the DDPM's variables on round(linspace(T-1, 0, steps))."""
    ts = torch.linspace(d.T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    x = torch.randn(shape, generator=generator)
    for k, i in enumerate(ts):
        t = torch.full((shape[0],), i, dtype=torch.long)
        ab = d.alpha_bar[i].double()
        abp = d.alpha_bar[ts[k + 1]].double() if k + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0 = d.predict_x0(x, t, net(x, t.float()), "eps").clamp(-1, 1).double()
        eps = (x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()
        sig = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
        x = abp.sqrt() * x0 + (1 - abp - sig ** 2).sqrt() * eps
        if k + 1 < len(ts) and eta > 0:
            x = x + sig * torch.randn(shape, generator=generator).double()
        x = x.float()
    return x


def test_ancestral_on_all_levels_is_algorithm2():
    d = GaussianDiffusion(cosine_alphas(40))
    net = VPGaussianNet(d, M, S)
    want = algorithm2(d, net, (7, 1, 2, 2), torch.Generator().manual_seed(3))
    D = VPDenoiser(net, d.alpha_bar)
    g = torch.Generator().manual_seed(3)
    sigmas = discrete_sigmas(D.sigmas, 40)
    got = sample_ancestral(D, D.prior((7, 1, 2, 2), sigmas[0], g), sigmas, g)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_is_eq12_in_the_ddpm_variables(eta):
    d = GaussianDiffusion(cosine_alphas(100))
    net = VPGaussianNet(d, M, S)
    want = ddim_eq12(d, net, (7, 1, 2, 2), 20, eta, torch.Generator().manual_seed(4))
    D = VPDenoiser(net, d.alpha_bar)
    g = torch.Generator().manual_seed(4)
    sigmas = discrete_sigmas(D.sigmas, 20)
    got = solve(D, "ddim", D.prior((7, 1, 2, 2), sigmas[0], g), sigmas, eta, g)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_ancestral_clamps_x0_hat():
    """Algorithm 2 line 6: with a network whose x0-hat is far outside [-1, 1], samples stay in range."""
    d = GaussianDiffusion(cosine_alphas(20))
    D = VPDenoiser(lambda xt, t: torch.full_like(xt, -50.0), d.alpha_bar)  # eps = -50: x0-hat >> 1
    sigmas = discrete_sigmas(D.sigmas, 20)
    x = sample_ancestral(D, D.prior((4, 1, 3, 3), sigmas[0]), sigmas)
    assert x.max() <= 1.0 + 1e-5


def test_score_denoiser_is_tweedie_and_keeps_the_score():
    score = lambda x, s: -x / (1 + s.view(-1, 1) ** 2)  # noqa: E731  N(0, I) data
    D = ScoreDenoiser(score, torch.tensor([2.0, 0.1]))
    x = torch.randn(3, 2)
    np.testing.assert_allclose(D(x, 0.5), x / (1 + 0.25), rtol=1e-6)  # E[x0 | x] = x / (1 + sigma^2)
    assert torch.equal(D.score(x, 0.5), score(x, torch.full((3,), 0.5)))
    assert D.sigma_max == 2.0 and D.sigma_min == pytest.approx(0.1)


def test_an_image_score_model_clamps_its_denoiser_to_the_pixel_range_and_not_its_score():
    """An image ncsn's D = x + sigma^2 s is clamped to [0, 1] (as Algorithm 2 clamps a DDPM's x0); Langevin's score
    is the network's own; 2-D points are never clamped."""
    from genlab.score import NCSN

    model = NCSN((1, 8, 8), sigma_max=16.0, num_sigmas=5)
    model.score = lambda x, s: -x / s.view(-1, 1, 1, 1) ** 2 * 1.5  # D = x - 1.5 x = -x / 2, outside [0, 1] for x > 0
    x = torch.rand(4, 1, 8, 8) + 0.5
    D = model.denoiser()
    assert torch.equal(D(x, 3.0), torch.zeros_like(x))
    assert torch.equal(D.score(x, 3.0), model.score(x, torch.full((4,), 3.0)))
    points = NCSN((2,), sigma_max=4.0, num_sigmas=5)
    points.score = lambda x, s: -x / s.view(-1, 1) ** 2 * 1.5
    assert torch.allclose(points.denoiser()(torch.ones(3, 2), 3.0), torch.full((3, 2), -0.5))


# --- noise levels


def test_discrete_spacings_are_the_documented_time_steps():
    levels = list(np.linspace(100.0, 1.0, 1000))  # levels[0] is t = 999
    step = lambda sigmas: [round(999 - levels.index(s)) for s in sigmas[:-1]]  # noqa: E731
    assert step(discrete_sigmas(levels, 10, "uniform")) == list(np.linspace(999, 0, 10).round().astype(int))
    assert step(discrete_sigmas(levels, 10, "leading")) == list(range(0, 1000, 100))[::-1]
    assert step(discrete_sigmas(levels, 10, "trailing")) == list(np.arange(1000, 0, -100) - 1)
    assert discrete_sigmas(levels, 10)[-1] == 0.0
    assert step(discrete_sigmas(levels, 1000)) == list(range(999, -1, -1))


def test_karras_and_geometric_levels():
    s = karras_sigmas(80.0, 0.002, 10, rho=7.0)
    assert s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0.0
    np.testing.assert_allclose(np.diff(np.array(s[:-1]) ** (1 / 7)), np.diff(np.array(s[:-1]) ** (1 / 7))[0])
    g = geometric_sigmas(1.0, 0.01, 10)
    np.testing.assert_allclose(g[:-1], np.geomspace(1.0, 0.01, 10))


@pytest.mark.parametrize("sampler,extra", [("ancestral", []), ("ddim", ["--eta", "0.3", "--spacing", "trailing"]),
                                           ("euler", ["--spacing", "leading"]), ("heun", ["--spacing", "karras"]),
                                           ("dpmpp_2m", ["--steps", "4", "--spacing", "geometric"]),
                                           ("dpmpp_2m_sde", ["--steps", "4", "--eta", "0.5"])])
def test_every_sampler_samples_a_ddpm_run(tiny_run, tmp_path, sampler, extra):
    from genlab.cli import main

    out = tmp_path / "x.npz"
    assert main(["sample", str(tiny_run), "--n", "3", "--sampler", sampler, *extra, "-o", str(out)]) == 0
    x = np.load(out)["samples"]
    assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


def test_the_ddpm_figures_and_strip_visit_the_kept_steps(tiny_run):
    import genlab

    model = genlab.load(tiny_run)
    x, kept = model.sample(2, torch.Generator().manual_seed(0), keep=[10, 5, 0])
    assert sorted(kept) == [0, 5, 10] and torch.equal(kept[0], x)
    assert kept[10].shape == x.shape and not torch.equal(kept[5], x)


def reference_repaint_times(t_T, jump_length, jump_n_sample):
    """The schedule of the RePaint paper's code (time steps from t_T - 1 down to -1, one unit per entry)."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize("n,j,r", [(250, 10, 10), (50, 5, 3), (20, 10, 2), (7, 10, 4), (30, 1, 1)])
def test_repaint_schedule_is_the_papers(n, j, r):
    from genlab.sampling import repaint_schedule

    ref = [t + 1 for t in reference_repaint_times(n, j, r)]  # states: level t + 1 is at the paper's step t
    ours = repaint_schedule(n, j, r)
    expanded = [ours[0]]
    for a, b in zip(ours, ours[1:]):
        assert b == a - 1 or b == a + j  # down one level, or up one jump
        expanded += list(range(a + 1, b + 1)) if b > a else [b]
    assert expanded[1:] == ref[1:] and ours[0] == n and ours[-1] == 0
    downs = sum(b < a for a, b in zip(ours, ours[1:]))
    assert downs == n + (r - 1) * j * len(range(1, n - j + 1, j))  # the network evaluations


def test_repaint_samples_the_gaussian_conditional():
    """Observe coordinate 0 of the 2-D Gaussian: the unknown coordinate should follow N(mu_1|0, var_1|0).
    Resampling brings RePaint close to it; without it the conditional mean is visibly off."""
    from genlab.sampling import repaint

    n = 8000
    x0 = torch.full((n, 2), 0.9, dtype=torch.float64)  # coordinate 0 observed at 0.9
    known = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(n, 2)
    c = COV
    mean = MU[1] + c[0, 1] / c[0, 0] * (0.9 - MU[0])
    var = c[1, 1] - c[0, 1] ** 2 / c[0, 0]
    sigmas = geometric_sigmas(40.0, 0.002, 200)
    errors = {}
    for r in (1, 10):
        g = torch.Generator().manual_seed(5)
        out = repaint(GaussianDenoiser(40.0, 0.002), x0, known, sigmas, jump_length=5, resamplings=r, generator=g)
        assert torch.equal(out[:, 0], x0[:, 0])  # known entries exactly
        errors[r] = (abs(out[:, 1].mean().item() - mean.item()) / math.sqrt(var), out[:, 1].var().item() / var.item())
    assert errors[10][0] < 0.06 and errors[10][1] == pytest.approx(1.0, abs=0.08)  # 0.033 and 0.96 when written
    assert errors[1][0] > 0.2 and errors[1][0] > 3 * errors[10][0]  # 0.30 without resampling


def test_repaint_inpaints_a_ddpm_run_from_the_command_line(tiny_run, tmp_path, capsys):
    from PIL import Image

    from genlab.cli import main

    out, fig = tmp_path / "filled.png", tmp_path / "fig.png"
    assert main(["inpaint", str(tiny_run), "--test-index", "3", "--box", "2,2,4,4", "--n", "2", "--steps", "6",
                 "--jump-length", "2", "--resamplings", "2", "-o", str(out), "--figure", str(fig)]) == 0
    import genlab
    from genlab.runs import prepare_data

    model = genlab.load(tiny_run)
    truth = prepare_data(model.config).test[3, 0].numpy()
    done = np.asarray(Image.open(out))
    outside = np.ones((8, 8), bool)
    outside[2:6, 2:6] = False
    assert np.array_equal(done[outside], truth[outside])  # known pixels kept bit for bit
    assert fig.stat().st_size > 0
    capsys.readouterr()
    assert main(["inpaint", str(tiny_run), "--test-index", "3", "--box", "2,2,4,4", "--resamplings", "0"]) == 2
    assert main(["inpaint", str(tiny_run), "--test-index", "99999", "--box", "2,2,4,4"]) == 2
    assert main(["inpaint", str(tiny_run), "--box", "2,2,4,4"]) == 2
    assert "--image FILE or --test-index K" in capsys.readouterr().err


def test_inpaint_options_a_family_does_not_take_are_refused(tmp_path, capsys):
    import genlab
    from genlab.cli import main

    run = tmp_path / "ig"
    genlab.train("inpaint-gan", out=run, steps=2, dataset="digits", image_size=8, batch_size=8, progress=False)
    capsys.readouterr()
    assert main(["inpaint", str(run), "--test-index", "0", "--box", "2,2,4,4", "--jump-length", "3"]) == 2
    assert "--jump-length does not apply to inpaint-gan" in capsys.readouterr().err


# --- classifier-free guidance


def test_guidance_is_one_batched_call_of_the_direct_combination():
    from genlab.sampling import guided

    torch.manual_seed(0)
    W = torch.randn(4, 4)
    calls = []

    def net(x, c, y):
        calls.append(len(x))
        return x @ W + c[:, None] + 10.0 * y[:, None].float()  # any function of (x, c, y)

    x, c, y = torch.randn(6, 4), torch.rand(6), torch.tensor([0, 1, 2, 0, 1, 2])
    null = 3
    for w in (0.0, 1.0, 2.5):
        calls.clear()
        got = guided(net, y, w, null)(x, c)
        assert calls == ([6] if w == 0 else [12])  # conditional and unconditional together
        cond, uncond = net(x, c, y), net(x, c, torch.full_like(y, null))
        np.testing.assert_allclose(got, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-5)


def test_label_dropout_replaces_the_share_asked_for_by_no_class():
    from genlab.ddpm import DDPM

    model = DDPM((1, 8, 8), time_steps=10, dim=8, dim_mults=(1,), num_res_blocks=1, attn_levels=0, num_classes=10,
                 label_dropout=0.25)
    seen = []
    forward = model.net.forward
    model.net.forward = lambda x, c, y=None: (seen.append(y), forward(x, c, y))[1]
    torch.manual_seed(0)
    y = torch.randint(0, 10, (4000,))
    model.loss((torch.rand(4000, 1, 8, 8), y))
    kept = seen[0] == y
    assert (seen[0][~kept] == 10).all()
    assert (~kept).float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_a_class_conditional_ddpm_trains_samples_each_class_and_refuses_bad_classes(tmp_path, capsys, tiny_run):
    import genlab
    from genlab.cli import main
    from conftest import TINY_DDPM

    run = tmp_path / "cond"
    genlab.train("ddpm", out=run, steps=3, cond="class", **TINY_DDPM)
    assert (run / "figures" / "classes.png").is_file()
    out = tmp_path / "threes.npz"
    assert main(["sample", str(run), "--n", "4", "--class", "3", "--guidance", "2", "--sampler", "ddim",
                 "--steps", "5", "-o", str(out)]) == 0
    assert np.load(out)["samples"].shape == (4, 1, 8, 8)
    model = genlab.load(run)
    assert model.num_classes == 10
    a = genlab.sample(model, 3, classes=3, guidance=0.0, sampler="ddim", steps=4)
    b = genlab.sample(model, 3, classes=3, guidance=4.0, sampler="ddim", steps=4)
    assert not torch.equal(a, b)  # the weight reaches the network
    capsys.readouterr()
    assert main(["sample", str(run), "--class", "10"]) == 2
    assert "between 0 and 9" in capsys.readouterr().err
    assert main(["sample", str(run), "--guidance", "-1"]) == 2
    assert main(["sample", str(tiny_run), "--class", "3"]) == 2
    assert "not class-conditional" in capsys.readouterr().err
    assert main(["train", "ddpm", "--dataset", "moons", "--cond", "class", "--out", str(tmp_path / "x")]) == 2


def test_the_grids_during_training_take_the_preview_sampler(tmp_path, monkeypatch, capsys):
    import genlab
    from genlab.cli import main
    from genlab.ddpm import DDPM
    from conftest import TINY_DDPM

    calls = []
    sample = DDPM.sample
    monkeypatch.setattr(DDPM, "sample", lambda self, n, generator=None, **kw: (calls.append(kw), sample(
        self, n, generator, **kw))[1])
    genlab.train("ddpm", out=tmp_path / "r", steps=4, sample_every=2, preview="ddim:3", **TINY_DDPM)
    grids = [kw for kw in calls if "keep" not in kw and kw.get("sampler") == "ddim"]
    assert grids == [{"sampler": "ddim", "steps": 3}]  # at step 2; the final grid (step 4) is ancestral
    capsys.readouterr()
    assert main(["train", "ddpm", "--preview", "langevin", "--out", str(tmp_path / "bad")]) == 2
    assert "preview sampler must be NAME or NAME:STEPS" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_continuous_spacings_of_a_ddpm_start_at_sigma_80():
    from genlab.sampling import noise_levels

    d = GaussianDiffusion(cosine_alphas(1000))
    D = VPDenoiser(None, d.alpha_bar)
    assert D.sigmas[0] > 2e4 and D.sigma_max == 80.0  # the clipped end of the cosine schedule is not a start
    assert noise_levels(D, 10, "karras")[0] == pytest.approx(80.0)
    assert noise_levels(D, 10, "uniform")[0] == D.sigmas[0]  # DDIM and ancestral keep the model's own steps
    small = VPDenoiser(None, GaussianDiffusion(cosine_alphas(50, min_alpha=0.5)).alpha_bar)
    assert small.sigma_max == small.sigmas[0] < 80
