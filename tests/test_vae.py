"""VAE maths against independent oracles, the figures' sizes, and a small end-to-end run."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.errors import GenlabError
from genlab.vae import VAE, Config, figure_images, kl_to_standard_normal, reparameterize


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 16), torch.randn(6, 16)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1)
    np.testing.assert_allclose(kl_to_standard_normal(mu, logvar), ref, rtol=1e-5, atol=1e-6)


def test_reparameterised_gradient_matches_score_function_estimate():
    """d/dmu and d/dlogvar of E[(z - c)^2], z ~ N(mu, sigma^2): pathwise vs REINFORCE vs closed form."""
    torch.manual_seed(0)
    c, n = 0.7, 400_000
    mu = torch.tensor(0.2, requires_grad=True)
    logvar = torch.tensor(-0.5, requires_grad=True)
    z = reparameterize(mu, logvar, torch.randn(n))
    ((z - c) ** 2).mean().backward()
    pathwise = torch.stack([mu.grad, logvar.grad])
    # score function: E[f(z) d/dtheta log q(z)], z drawn without a path to the parameters
    with torch.no_grad():
        zs = mu + (0.5 * logvar).exp() * torch.randn(n)
        f = (zs - c) ** 2
        var = logvar.exp()
        score_mu = (zs - mu) / var
        score_logvar = 0.5 * ((zs - mu) ** 2 / var - 1)
        reinforce = torch.stack([(f * score_mu).mean(), (f * score_logvar).mean()])
    exact = torch.stack([2 * (mu - c), logvar.exp()]).detach()  # E = sigma^2 + (mu - c)^2
    np.testing.assert_allclose(pathwise, exact, atol=0.01)
    np.testing.assert_allclose(reinforce, exact, atol=0.03)


@pytest.mark.parametrize("arch,size", [("conv", 28), ("conv", 32), ("conv", 16), ("mlp", 28)])
def test_shapes(arch, size):
    m = VAE((1, size, size), arch=arch, hidden=[64])
    x = torch.rand(3, 1, size, size)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (3, 16)
    assert m.decoder(mu).shape == x.shape
    assert m.sample(4).shape == (4, 1, size, size)


def test_seed003_stack_parameter_count():
    """The seed 003 encoder/decoder at 32x32 (3 channels, latent 16), counted by hand."""
    m = VAE((3, 32, 32), arch="conv")
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    enc = conv(3, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + 4 * 4 * 256 * 32 + 32
    dec = 16 * 2048 + 2048 + conv(128, 128, 4) + conv(128, 64, 4) + conv(64, 32, 4) + conv(32, 3, 3)
    assert sum(p.numel() for p in m.encoder.parameters()) == enc
    assert sum(p.numel() for p in m.decoder.parameters()) == dec


def iw_bounds(model, x, k, repeats, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([-model.nll(x, generator=g, k=k) for _ in range(repeats)])  # (repeats, B)


def test_importance_weighted_bound_is_above_the_elbo_and_grows_with_k():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), arch="mlp", hidden=[32], latent_dim=4, decoder="bernoulli")
    x = (torch.rand(64, 1, 8, 8) < 0.3).float()
    with torch.no_grad():
        # the ELBO with the analytic KL, its expectation over q estimated with many samples
        mu, logvar = model.encode(x)
        z = reparameterize(mu[None], logvar[None], torch.randn(2000, *mu.shape))
        log_px = model.log_px(x.expand(2000, *x.shape).flatten(0, 1), model.decoder(z.flatten(0, 1))).view(2000, -1)
        elbo = (log_px.mean(0) - kl_to_standard_normal(mu, logvar)).mean().item()
    means = {k: iw_bounds(model, x, k, 20, seed=k).mean().item() for k in (1, 10, 100)}
    assert abs(means[1] - elbo) < 0.3  # k = 1 is an unbiased ELBO estimate
    assert means[10] > means[1] + 0.1 and means[100] > means[10]
    assert means[100] >= elbo


def test_figure_images_have_the_seed_sizes(tmp_path):
    model = VAE((1, 12, 12), arch="mlp", hidden=[32])
    imgs = figure_images(model, torch.rand(100, 1, 12, 12), Config(), torch.Generator().manual_seed(0))
    assert set(imgs) == {"samples", "reconstructions", "interpolations", "traversal"}
    for name, x in imgs.items():
        assert x.shape == (100, 1, 12, 12), name
    # interpolation rows start and end at the reconstructions from the posterior means
    x = torch.rand(100, 1, 12, 12)
    imgs = figure_images(model, x, Config(), torch.Generator().manual_seed(0))
    np.testing.assert_allclose(imgs["interpolations"][0], model.reconstruct(x[:1])[0], atol=1e-6)
    np.testing.assert_allclose(imgs["interpolations"][9], model.reconstruct(x[10:11])[0], atol=1e-6)
    # the traversal grid keeps every other latent at 0 and varies dimension j along each row
    cfg = Config(traverse_dims=[2, 5])
    grid = figure_images(model, x, cfg, torch.Generator().manual_seed(0))["traversal"]
    z = torch.zeros(16)
    z[2], z[5] = -2.0, 2.0
    with torch.no_grad():
        np.testing.assert_allclose(grid[9], model.mean(model.decoder(z[None]))[0], atol=1e-6)


def test_bernoulli_decoder_requires_binarised_data():
    with pytest.raises(GenlabError, match="binarize"):
        genlab.make_config("vae", decoder="bernoulli")
    with pytest.raises(GenlabError, match="traverse_dims"):
        genlab.make_config("vae", traverse_dims=[0, 16])


def test_vae_trains_end_to_end(tmp_path):
    run = tmp_path / "vae"
    model = genlab.train("vae", out=run, dataset="digits", image_size=16, arch="mlp", hidden=[64], latent_dim=4,
                         decoder="bernoulli", binarize=True, steps=30, beta_warmup=20, eval_every=15,
                         iw_samples=8, final_eval_n=50, batch_size=32, progress=False)
    import json

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[0]["beta"] < 1.0 and train[-1]["beta"] == 1.0  # the warm-up
    test = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in test] == [15, 30]
    assert {"nelbo", "recon", "kl"} <= test[0].keys()
    final = test[-1]
    assert final["nll_nats"] <= final["nelbo"] + 1.0  # the k = 8 bound is at least as tight as the ELBO
    assert math.isclose(final["bpd"], final["nll_nats"] / (256 * math.log(2)), rel_tol=1e-4)
    for name in ("samples", "reconstructions", "interpolations", "traversal"):
        w, h = Image.open(run / "figures" / f"{name}.png").size
        assert w == h and w % (10 * 18 + 2) == 0  # a 10 x 10 grid of 16-pixel images with 2-pixel gaps
    assert model.sample(3).shape == (3, 1, 16, 16)
    assert genlab.evaluate(run, ["nll"], n=20, k=4)["k"] == 4
