"""Flows: inverses to 1e-5, log-determinants against autograd Jacobians, a Gaussian closed form."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import multivariate_normal

import genlab
from genlab.flows import (ActNorm, AffineCoupling, ConvNet, CouplingFlow2d, Dequantiser, Flow, InvConv1x1,
                          MultiScaleFlow, Squeeze, checkerboard_mask, channel_mask)


def randomize(module, std=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "log_s" not in name:
                p.add_(std * torch.randn_like(p))
    return module


def layers_to_check():
    yield "checkerboard", randomize(AffineCoupling(checkerboard_mask(2, 4, 4, 1), ConvNet(4, 4, 8, 1))), (2, 4, 4)
    yield "channel", randomize(AffineCoupling(channel_mask(4, 2, 2, 0), ConvNet(8, 8, 8, 1))), (4, 2, 2)
    yield "actnorm", randomize(ActNorm(3)), (3, 2, 2)
    yield "invconv", randomize(InvConv1x1(3)), (3, 2, 2)
    yield "squeeze", Squeeze(), (2, 4, 4)
    yield "multiscale", randomize(MultiScaleFlow((1, 4, 4), scales=2, steps=2, hidden=8, blocks=1), 0.1), (1, 4, 4)
    yield "glow", randomize(MultiScaleFlow((2, 4, 4), scales=2, steps=1, hidden=8, blocks=0, checkerboard=0), 0.1), (2, 4, 4)
    yield "2d", randomize(CouplingFlow2d(2, 4, 16)), (2,)


def flat_forward(layer, x):
    out, ld = layer(x)
    if isinstance(out, list):
        out = torch.cat([z.flatten(1) for z in out], 1)
    return out.flatten(1), ld


@pytest.mark.parametrize("name,layer,shape", list(layers_to_check()), ids=lambda v: v if isinstance(v, str) else "")
def test_inverse_and_log_det_against_autograd(name, layer, shape):
    torch.manual_seed(0)
    layer.train()
    layer(torch.randn(16, *shape))  # actnorm initialises on a first batch
    layer.eval()
    layer.double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, ld = layer(x)
    back = layer.inverse(y)
    assert torch.allclose(back, x, atol=1e-5), name
    for i in range(3):
        xi = x[i: i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: flat_forward(layer, v.view(1, *shape))[0].flatten(), xi.flatten())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert flat_forward(layer, xi)[1].item() == pytest.approx(logabsdet.item(), abs=1e-6), name


def test_logit_preprocessing_log_det():
    model = Flow((1, 2, 2)).double()
    y = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    v, ld = model.logit(y)
    jac = torch.autograd.functional.jacobian(lambda t: model.logit(t.view(1, 1, 2, 2))[0].flatten(), y.flatten())
    assert ld.item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)
    assert torch.allclose(model.postprocess(v), y, atol=1e-9)
    x, u = torch.rand_like(y), torch.rand_like(y)
    assert torch.allclose(model.postprocess(model.preprocess(x, u)[0]), (255 * x + u) / 256, atol=1e-9)


def test_gaussian_to_gaussian_likelihood_is_the_closed_form():
    """actnorm then a 1x1 conv is the linear map z = W diag(e^s) (x + b): x ~ N(-b, (W D)^-1 (W D)^-T)."""
    torch.manual_seed(0)
    act, conv = randomize(ActNorm(3)), randomize(InvConv1x1(3))
    act.initialized.fill_(1)
    x = torch.randn(50, 3, 1, 1, dtype=torch.float64) * 2
    act.double()
    conv.double()
    z1, ld1 = act(x)
    z, ld2 = conv(z1)
    logp = (-0.5 * (z ** 2).flatten(1).sum(1) - 1.5 * np.log(2 * np.pi) + ld1 + ld2).detach().numpy()
    A = conv.weight().detach().numpy() @ np.diag(np.exp(act.logs.detach().numpy().flatten()))
    cov = np.linalg.inv(A) @ np.linalg.inv(A).T
    ref = multivariate_normal(mean=-act.bias.detach().numpy().flatten(), cov=cov).logpdf(x.flatten(1).numpy())
    np.testing.assert_allclose(logp, ref, rtol=1e-10)


def test_image_flow_samples_and_bits_per_dim():
    model = Flow((1, 8, 8), scales=2, steps=1, hidden=8, blocks=1)
    x = torch.rand(4, 1, 8, 8)
    nll = model.nll(x, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (4,) and torch.isfinite(nll).all()
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and 0 <= s.min() and s.max() <= 1


def test_flow_2d_end_to_end(tmp_path):
    run = tmp_path / "flow"
    model = genlab.train("flow", out=run, dataset="8gaussians", steps=60, batch_size=256, hidden=32, layers_2d=4,
                         progress=False)
    assert (run / "figures" / "density.png").is_file()
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert "nll_nats" in test and "bpd" not in test  # 2-D points: a density in nats, no bits per pixel
    assert model.sample(10).shape == (10, 2)


def test_flow_images_end_to_end(tmp_path):
    run = tmp_path / "flow"
    genlab.train("flow", out=run, dataset="digits", image_size=8, scales=2, coupling_steps=1, hidden=8, blocks=1,
                 batch_size=32, steps=5, progress=False, final_eval_n=20)
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0 < test["bpd"] < 20 and test["nll_n"] == 20
    assert {"samples.png", "samples_t07.png"} <= {p.name for p in (run / "figures").iterdir()}


def _randomised_dequantiser(channels=1, seed=0):
    torch.manual_seed(seed)
    deq = Dequantiser(channels, hidden=8, blocks=1)
    nn.init.normal_(deq.net.out[1].weight, std=0.3)  # away from the zero initialisation
    nn.init.normal_(deq.net.out[1].bias, std=0.3)
    return deq.double()


def test_variational_dequantiser_log_density_matches_autograd_and_integrates_to_one():
    deq = _randomised_dequantiser()
    x = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    eps = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    u, log_q = deq(x, eps)
    jac = torch.autograd.functional.jacobian(lambda e: deq(x, e.view(1, 1, 2, 2))[0].flatten(), eps.flatten())
    ref = -0.5 * (eps ** 2).sum() - 2 * np.log(2 * np.pi) - torch.logdet(jac).item()
    assert torch.allclose(log_q, torch.tensor([ref], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(deq.log_q(x, u), log_q, atol=1e-8)
    # one pixel: q(u | x) integrates to 1 over (0, 1) (trapezoid in a = logit u, du = u (1 - u) da)
    x1 = torch.rand(1, 1, 1, 1, dtype=torch.float64)
    a = torch.linspace(-40, 40, 200001, dtype=torch.float64)
    u1 = torch.sigmoid(a).clamp(1e-300, 1 - 1e-16).view(-1, 1, 1, 1)
    density = deq.log_q(x1.expand(len(a), 1, 1, 1), u1).exp() * (u1 * (1 - u1)).flatten()
    assert abs(torch.trapezoid(density, a).item() - 1) < 1e-6


def test_variational_dequantisation_trains_its_posterior():
    model = Flow((1, 4, 4), scales=1, steps=1, hidden=8, blocks=1, dequantise="variational")
    x = torch.randint(0, 256, (8, 1, 4, 4)).float() / 255
    out = model.loss((x,))
    out["loss"].backward()
    assert model.dequantiser.net.out[1].weight.grad.abs().sum() > 0
    nll = model.nll(x, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (8,) and torch.isfinite(nll).all()
    # log_prob subtracts log q(u | x) from the density of y = (255 x + u) / 256 at the u that q drew
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        u, log_q = model.dequantiser(x, eps)
        variational = model.log_prob(x, eps)
        model.dequantiser, deq = None, model.dequantiser
        uniform_at_u = model.log_prob(x, u)
        model.dequantiser = deq
    assert torch.allclose(variational, uniform_at_u - log_q)
    # the reported figure is the bound the loss minimises, -log p(y) + log q(u | x) + D log 256
    g = torch.Generator().manual_seed(1)
    noise = model.dequantisation_noise(x, g)
    bound = -model.log_prob(x, noise) + 16 * np.log(256)
    assert torch.allclose(model.nll(x, torch.Generator().manual_seed(1)), bound)
