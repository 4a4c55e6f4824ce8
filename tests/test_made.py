"""MADE: the autoregressive property of every mask by autograd, the exact likelihood, sampling."""

import itertools
import math

import numpy as np
import pytest
import torch

import genlab
from genlab.errors import GenlabError
from genlab.made import MADE


@pytest.mark.parametrize("output,direct", [("bernoulli", False), ("categorical", True)])
def test_autoregressive_property_for_every_mask(output, direct):
    """d out_i / d x_j = 0 unless j precedes i in the mask's ordering; and the allowed paths exist."""
    torch.manual_seed(0)
    model = MADE((1, 3, 3), hidden=[24, 24], num_masks=4, direct=direct, output=output, levels=3)
    for p in model.parameters():  # break the zero initialisation of nothing; random weights everywhere
        torch.nn.init.normal_(p, std=0.5)
    x = torch.rand(1, 1, 3, 3)
    for i in range(4):
        model.set_mask(i)
        jac = torch.autograd.functional.jacobian(lambda v: model.logits(v.view(1, 1, 3, 3)).reshape(9, -1).sum(1),
                                                 x.flatten())
        order = model.order
        allowed = order[None, :] < order[:, None]  # allowed[d, j]: x_j comes before x_d
        assert torch.all(jac[~allowed] == 0), f"mask {i} leaks"
        assert (jac[allowed] != 0).float().mean() > 0.5
        assert (jac[order == 1] == 0).all()  # the first dimension depends on nothing
    orders = {tuple(model.set_mask(i) or model.order.tolist()) for i in range(4)}
    assert len(orders) == 4  # order-agnostic: different orderings


def test_single_mask_uses_the_natural_order():
    m = MADE((1, 2, 2), hidden=[8])
    assert m.order.tolist() == [1, 2, 3, 4]


def test_exact_likelihood_sums_to_one_over_all_binary_images():
    torch.manual_seed(0)
    model = MADE((1, 2, 2), hidden=[16], num_masks=3, direct=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.7)
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    total = torch.exp(-model.nll(xs)).sum().item()  # the ensemble of 3 masks is a distribution too
    assert total == pytest.approx(1.0, abs=1e-5)
    for i in range(3):
        model.set_mask(i)
        assert torch.exp(model.log_prob(xs)).sum().item() == pytest.approx(1.0, abs=1e-5)


def test_categorical_likelihood_sums_to_one():
    torch.manual_seed(0)
    model = MADE((1, 1, 2), hidden=[8], output="categorical", levels=4)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.7)
    xs = torch.tensor(list(itertools.product(range(4), repeat=2))).float().view(16, 1, 1, 2) / 3
    assert torch.exp(model.log_prob(xs)).sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sampling_follows_the_model():
    """Samples of a 2-pixel MADE have the frequencies of its exact probabilities."""
    torch.manual_seed(0)
    model = MADE((1, 1, 2), hidden=[8])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=1.0)
    xs = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).view(4, 1, 1, 2)
    p = torch.exp(model.log_prob(xs))
    s = model.sample(20000, generator=torch.Generator().manual_seed(1)).view(-1, 2)
    freq = torch.stack([((s == xs[k].view(2)).all(1)).float().mean() for k in range(4)])
    np.testing.assert_allclose(freq, p.detach(), atol=0.015)


def test_made_validation():
    with pytest.raises(GenlabError, match="binarize"):
        genlab.make_config("made", binarize=False)
    genlab.make_config("made", binarize=False, output="categorical")


def test_made_end_to_end(tmp_path):
    run = tmp_path / "made"
    model = genlab.train("made", out=run, dataset="digits", image_size=8, hidden=[32], num_masks=2, steps=20,
                         batch_size=32, progress=False, final_eval="full")
    import json

    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert test["nll_n"] == 300 and math.isclose(test["bpd"], test["nll_nats"] / (64 * math.log(2)), rel_tol=1e-4)
    assert abs(test["nll"] - test["nll_nats"]) < 1e-3  # eval_step and the final likelihood agree
    assert model.sample(3).shape == (3, 1, 8, 8)
    assert {"samples.png", "test_images.png"} <= {p.name for p in (run / "figures").iterdir()}
