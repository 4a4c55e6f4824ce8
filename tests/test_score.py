"""Score models against independent oracles: Algorithm 1 by hand, analytic scores of Gaussians and mixtures."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from scipy.linalg import solve_discrete_lyapunov

import genlab
from genlab.cli import main
from genlab.score import (ScoreNet, annealed_langevin, conditional_score, dsm_loss, geometric_sigmas,
                          langevin_step_size, langevin_variance_ratio, mode_coverage)


def test_geometric_sigmas():
    s = geometric_sigmas(0.3, 0.01, 10)
    assert s[0].item() == pytest.approx(0.3) and s[-1].item() == pytest.approx(0.01)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, ratios[0].expand(9), rtol=1e-5)


def test_scorenet_is_the_seed_architecture():
    net = ScoreNet()
    kinds = [type(m).__name__ for m in net.net]
    assert kinds.count("Linear") == 8 and kinds.count("Softplus") == 7
    assert kinds == ["Linear", "Softplus"] * 7 + ["Linear"]
    assert net.net[0].in_features == 3 and net.net[-1].out_features == 2  # inputs x (2) and sigma
    x, sigma = torch.randn(5, 2), torch.full((5,), 0.2)
    assert torch.allclose(net(x, sigma), net.net(torch.cat([x, sigma[:, None]], 1)) / 0.2)


def test_dsm_loss_is_algorithm_1_by_hand():
    torch.manual_seed(0)
    x = torch.randn(6, 2)
    sigmas = geometric_sigmas(1.0, 0.1, 4)
    score = lambda xt, s: -xt * s[:, None]  # noqa: E731  any fixed function of (x~, sigma)
    torch.manual_seed(1)
    loss = dsm_loss(score, x, sigmas).item()
    torch.manual_seed(1)  # the same draws: the sigma index, then z
    idx, z = torch.randint(0, 4, (6,)), torch.randn(6, 2)
    total = 0.0
    for i in range(6):
        sigma = sigmas[idx[i]].item()
        xt = x[i] + sigma * z[i]
        s = -xt * sigma
        lam = sigma ** 2
        total += lam / 2 * float(((s + (xt - x[i]) / sigma ** 2) ** 2).sum())
    assert loss == pytest.approx(total / 6, rel=1e-5)


def mixture_score(weights, means, s):
    """The exact score of sum_k w_k N(mu_k, (s^2 + sigma^2) I) in 2-D."""

    def score(x, sigma):
        var = s ** 2 + sigma[:, None] ** 2  # (B, 1)
        d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # (B, K)
        logr = torch.log(weights)[None] - d2 / (2 * var)
        r = torch.softmax(logr, 1)
        return (r[:, :, None] * (means[None] - x[:, None, :])).sum(1) / var

    return score


def test_annealed_langevin_recovers_mixture_weights_and_moments():
    weights = torch.tensor([0.2, 0.3, 0.5])
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    s = 0.3
    score = mixture_score(weights, means, s)
    sigmas = geometric_sigmas(7.0, 0.01, 12)  # sigma_1 above the largest distance between modes
    g = torch.Generator().manual_seed(0)
    n = 6000
    x = annealed_langevin(score, torch.randn(n, 2, generator=g), sigmas, eps=5e-5, T=200, generator=g)
    k = torch.cdist(x, means).argmin(1)
    share = torch.bincount(k, minlength=3).float() / n
    np.testing.assert_allclose(share, weights, atol=0.03)  # MC standard error ~ 0.007
    for j in range(3):
        pts = x[k == j]
        np.testing.assert_allclose(pts.mean(0), means[j], atol=0.03)
        np.testing.assert_allclose(pts.std(0), [s, s], rtol=0.1)


def test_conditional_sampling_matches_the_gaussian_posterior():
    """Seed 002 Q2.5 with the exact score of N(mu, Sigma): observe x_1 = a, sample x_2.

    The target at sigma is p_sigma(x) exp(-lambda/2 (x_1 - a)^2): a Gaussian with precision
    P = (Sigma + sigma^2 I)^-1 + diag(lambda, 0). Unadjusted Langevin with step alpha leaves it with the
    same mean and the covariance C that solves C = (I - alpha P) C (I - alpha P)^T + 2 alpha I.
    """
    mu = torch.tensor([0.5, -1.0])
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    a, lam = 1.5, 20.0

    def score(x, sigma):
        prec = torch.linalg.inv(cov + sigma[0] ** 2 * torch.eye(2))
        return -(x - mu) @ prec

    known = torch.tensor([a, 0.0]).expand(8000, 2)
    mask = torch.tensor([1.0, 0.0])  # M: x_1 is observed
    sigmas = torch.tensor([0.3, 0.1])  # alpha_i lambda < 2 at every level, so that Langevin is stable
    eps, T = 0.005, 3000
    g = torch.Generator().manual_seed(0)
    x = annealed_langevin(conditional_score(score, known, mask, lam), torch.randn(8000, 2, generator=g), sigmas, eps,
                          T, g).double()
    sigma_L = sigmas[-1].item()
    P = np.linalg.inv(cov.double().numpy() + sigma_L ** 2 * np.eye(2)) + np.diag([lam, 0.0])
    mean = np.linalg.solve(P, np.linalg.inv(cov.double().numpy() + sigma_L ** 2 * np.eye(2)) @ mu.double().numpy()
                           + np.array([lam * a, 0.0]))
    alpha = eps  # eps * sigma_L^2 / sigma_L^2 at the last level
    A = np.eye(2) - alpha * P
    C = solve_discrete_lyapunov(A, 2 * alpha * np.eye(2))
    np.testing.assert_allclose(x.mean(0).numpy(), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x.numpy().T), C, atol=0.03, rtol=0.06)
    assert abs(x[:, 0].mean().item() - a) < 0.1  # the known coordinate is held near its value


def test_langevin_variance_ratio_by_monte_carlo():
    """Technique 4's closed form against T Langevin steps on data at one point (the score of N(0, sigma^2) is
    -x / sigma^2), from samples with the previous level's spread gamma sigma."""
    gamma, sigma_min, sigma, T, eps = 1.3, 0.05, 0.8, 6, 2e-4
    x = gamma * sigma * torch.randn(400_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha = eps * sigma ** 2 / sigma_min ** 2  # the step at this level of a ladder ending at sigma_min
    # a one-level ladder [sigma] steps by its eps argument exactly
    out = annealed_langevin(lambda x, s: -x / s.view(-1, 1) ** 2, x, [sigma], alpha, T)
    assert out.var().item() / sigma ** 2 == pytest.approx(langevin_variance_ratio(eps, gamma, T, sigma_min), rel=0.01)


def test_langevin_step_size_reproduces_ncsnv2_published_settings():
    """Song and Ermon (2020), their CIFAR-10 (sigma_1 = 50, L = 232, T = 5) eps = 6.2e-6 and CelebA 64x64
    (sigma_1 = 90, L = 500, T = 5) eps = 3.3e-6, sigma_L = 0.01 for both; and the ratio is nearest 1 there."""
    assert langevin_step_size(geometric_sigmas(50, 0.01, 232), 5) == pytest.approx(6.2e-6, rel=0.01)
    assert langevin_step_size(geometric_sigmas(90, 0.01, 500), 5) == pytest.approx(3.3e-6, rel=0.02)
    eps, gamma = langevin_step_size(geometric_sigmas(16, 0.01, 100), 10), 1600 ** (1 / 99)  # the MNIST preset's
    best = abs(langevin_variance_ratio(eps, gamma, 10, 0.01) - 1)
    assert all(abs(langevin_variance_ratio(e, gamma, 10, 0.01) - 1) > best for e in (eps / 1.5, eps * 1.5))


def test_inpainting_with_a_wide_ladder_stays_stable_and_ends_at_the_posterior():
    """From sigma_1 = 16 the seed's constant lambda would overshoot (alpha_1 lambda = 5e5 here, diverging); capped
    at 1 / alpha_i it holds, and at the last level (where lambda is uncapped) Langevin ends at the same Gaussian
    target as in the test above."""
    from genlab.score import NCSN

    mu, cov, a, lam = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.8], [0.8, 1.0]]), 1.5, 20.0
    model = NCSN((2,), sigma_max=16.0, sigma_min=0.1, num_sigmas=6, langevin_steps=2000, langevin_eps=0.005)
    model.score = lambda x, sigma: -(x - mu) @ torch.linalg.inv(cov + sigma[0] ** 2 * torch.eye(2))
    pull = model.inpaint_pull(lam)(model.sigmas)
    alpha = model.eps * model.sigmas ** 2 / model.sigmas[-1] ** 2
    assert (alpha * pull <= 1 + 1e-6).all() and pull[-1] == lam and (alpha[0] * lam) > 2
    x = model.inpaint(torch.tensor([a, 0.0]).expand(8000, 2), torch.tensor([0.0, 1.0]).expand(8000, 2),
                      torch.Generator().manual_seed(0), lam=lam, paste=False).double()
    assert torch.isfinite(x).all()
    P = np.linalg.inv(cov.double().numpy() + 0.01 * np.eye(2)) + np.diag([lam, 0.0])
    mean = np.linalg.solve(P, np.linalg.inv(cov.double().numpy() + 0.01 * np.eye(2)) @ mu.double().numpy()
                           + np.array([lam * a, 0.0]))
    C = solve_discrete_lyapunov(np.eye(2) - 0.005 * P, 2 * 0.005 * np.eye(2))
    np.testing.assert_allclose(x.mean(0).numpy(), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x.numpy().T), C, atol=0.03, rtol=0.06)


def test_mode_coverage_counts_characters():
    data = genlab.data.load_dataset("text:CS446")
    perfect = mode_coverage(data.test[:1000], data, radius=0.05)
    assert perfect["near"] > 0.99 and perfect["share_error"] < 0.03
    only_c = data.train[data.train_labels == 0][:1000]
    skewed = mode_coverage(only_c, data, radius=0.05)
    assert skewed["share_0_C"] == 1.0 and skewed["share_error"] > 0.5
    far = mode_coverage(torch.full((10, 2), 50.0), data, radius=0.05)
    assert far["near"] == 0.0


def test_ncsn_2d_end_to_end(tmp_path):
    run = tmp_path / "ncsn"
    model = genlab.train("ncsn", out=run, dataset="text:CS446", steps=30, batch_size=256, langevin_steps=3,
                         progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert 4.0 < cfg["model"]["sigma_max"] < 5.0  # the largest distance between training points
    assert {"score_field.png", "langevin_steps.png", "samples.png", "trajectories.png"} <= \
        {p.name for p in (run / "figures").iterdir()}
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"near", "share_error", "share_0_C"} <= test.keys()
    final, traj = model.sample(7, return_traj=True)
    assert final.shape == (7, 2) and traj.shape == (20 * 3, 7, 2) and torch.equal(traj[-1], final)
    x = torch.tensor([[0.5, 0.2]])
    out = model.inpaint(x, torch.tensor([[0.0, 1.0]]), paste=False)  # x_1 known, x_2 missing
    assert out.shape == (1, 2) and torch.isfinite(out).all()  # (alpha_1 lambda = 80 at the top without the cap)


def test_ncsn_images_end_to_end_and_inpaint(tmp_path):
    run = tmp_path / "ncsn"
    genlab.train("ncsn", out=run, dataset="digits", image_size=8, dim=8, dim_mults=[1, 2], steps=3, batch_size=16,
                 langevin_steps=2, langevin_eps=0, progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["sigma_max"] == 1.0
    assert cfg["model"]["langevin_eps"] == langevin_step_size(geometric_sigmas(1.0, 0.01, 10), 2) > 0  # technique 4
    assert {"samples.png", "langevin_levels.png", "inpaint.png"} <= {p.name for p in (run / "figures").iterdir()}
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "img.png")
    assert main(["inpaint", str(run), "--image", str(tmp_path / "img.png"), "--box", "2,2,3,3",
                 "-o", str(tmp_path / "out.png")]) == 0
    done = np.asarray(Image.open(tmp_path / "out.png"))
    assert done[0, 0] == 200 and math.isfinite(float(done.mean()))
    for sampler, extra in (("langevin", ["--steps", "1"]), ("heun", ["--steps", "4"]),
                           ("dpmpp_2m", ["--steps", "5", "--spacing", "karras"]), ("ddim", ["--eta", "1"]),
                           ("dpmpp_2m_sde", ["--steps", "4"]),
                           ("ancestral", ["--steps", "3", "--spacing", "uniform"])):
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", str(run), "--n", "3", "--sampler", sampler, *extra, "-o", str(out)]) == 0
        x = np.load(out)["samples"]
        assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1
