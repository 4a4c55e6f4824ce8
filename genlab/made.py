"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015, arXiv:1502.03509).

Seed 003 Q1: the chain rule p(x) = prod_d p(x_d | x_<d) in some ordering, computed in one pass
of an autoencoder whose weight masks cut every path from x_j to the output for x_d unless j
comes before d:
- each input d gets its position m^0(d) in the ordering (1..D); each hidden unit k of layer l an
  integer m^l(k) drawn from [min m^{l-1}, D - 1];
- hidden masks M[k, j] = 1 iff m^l(k) >= m^{l-1}(j); output masks M[d, k] = 1 iff m^0(d) > m^L(k);
  optional direct input-to-output connections M[d, j] = 1 iff m^0(d) > m^0(j)
- order- and connectivity-agnostic training: `num_masks` (ordering, connectivity) pairs, one per
  minibatch in turn; at test time the ensemble p(x) = mean_i p_i(x)
- outputs: Bernoulli for binarised images, or a categorical over `levels` grey levels
  (256: the exact likelihood of 8-bit images)
Masks are functions of (seed, index), rebuilt rather than stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.config import opt
from genlab.errors import GenlabError
from genlab.family import GenerativeModel


class MaskedLinear(nn.Linear):
    """y = x (W * M)^T + b with a fixed binary mask M (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(D: int, hidden: list[int], generator: torch.Generator, natural_order: bool):
    """m^0 (the position of each input, 1..D) and m^l for each hidden layer."""
    order = torch.arange(1, D + 1) if natural_order else torch.randperm(D, generator=generator) + 1
    degrees = [order]
    for h in hidden:
        low = int(degrees[-1].min())
        degrees.append(torch.randint(low, max(D, low + 1), (h,), generator=generator))  # [low, D - 1]
    return degrees


def made_masks(degrees: list[torch.Tensor]):
    """Hidden masks m^l(k) >= m^{l-1}(j), the output mask m^0(d) > m^L(k), the direct mask m^0(d) > m^0(j)."""
    hidden = [(degrees[l + 1][:, None] >= degrees[l][None, :]).float() for l in range(len(degrees) - 1)]
    out = (degrees[0][:, None] > degrees[-1][None, :]).float()
    direct = (degrees[0][:, None] > degrees[0][None, :]).float()
    return hidden, out, direct


@dataclass
class Config:
    hidden: list[int] = opt([500], "hidden layer widths (the paper's MNIST model: one layer of 500)", min=1)
    num_masks: int = opt(1, "orderings/connectivities trained in turn and ensembled at test (1: natural order)", min=1)
    direct: bool = opt(False, "direct (masked) connections from inputs to outputs")
    output: str = opt("bernoulli", "bernoulli (binarised images) or categorical over `levels` grey levels",
                      choices=["bernoulli", "categorical"])
    levels: int = opt(256, "grey levels of the categorical output (256: 8-bit images)", min=2)
    mask_seed: int = opt(0, "seed of the orderings and connectivities", min=0)


TRAIN_DEFAULTS = {"batch_size": 100, "lr": 1e-3, "epochs": 20, "steps": 0, "grad_clip": 0.0, "final_eval_n": 0}
DATA_DEFAULTS = {"dataset": "mnist", "binarize": True}
DATA_KIND = "image"
IMAGE_SIZE = 28


class MADE(GenerativeModel):
    def __init__(self, shape, hidden=(500,), num_masks=1, direct=False, output="bernoulli", levels=256, mask_seed=0):
        super().__init__()
        self.shape, self.D = tuple(shape), math.prod(shape)
        self.K = 1 if output == "bernoulli" else levels  # outputs per input dimension
        self.output, self.num_masks, self.mask_seed = output, num_masks, mask_seed
        self.hidden_sizes = list(hidden)
        d = self.D
        self.layers = nn.ModuleList()
        for h in self.hidden_sizes:
            self.layers.append(MaskedLinear(d, h))
            d = h
        self.out = MaskedLinear(d, self.D * self.K)
        self.direct = MaskedLinear(self.D, self.D * self.K, bias=False) if direct else None
        # optimizer steps taken: the mask in use is updates mod num_masks
        self.register_buffer("updates", torch.zeros(()))
        # training cycles through the masks: drawing them now keeps every step free of host work
        self._mask_cache = {}
        for i in range(min(num_masks, 64)):
            self.masks_of(i)
        self.set_mask(0)

    def masks_of(self, i: int):
        """(degrees, hidden masks, output mask, direct mask) of mask i, drawn once on the host and kept."""
        if i not in self._mask_cache:
            g = torch.Generator().manual_seed(self.mask_seed * 100003 + i)
            degrees = made_degrees(self.D, self.hidden_sizes, g, natural_order=self.num_masks == 1)
            self._mask_cache[i] = (degrees, *made_masks(degrees))
        return self._mask_cache[i]

    def set_mask(self, i: int) -> None:
        if getattr(self, "current_mask", None) == i:
            return
        degrees, hidden, out, direct = self.masks_of(i)
        device = self.out.mask.device
        if out.device != device:  # kept where the model is (as bool): switching masks is then device copies
            hidden, out, direct = [m.to(device, torch.bool) for m in hidden], out.to(device, torch.bool), \
                direct.to(device, torch.bool)
            self._mask_cache[i] = (degrees, hidden, out, direct)
        for layer, m in zip(self.layers, hidden):
            layer.mask.copy_(m)
        # K outputs per input dimension: row d of the mask for each of its K rows, without materialising them
        self.out.mask.view(self.D, self.K, -1).copy_(out[:, None, :])
        if self.direct is not None:
            self.direct.mask.view(self.D, self.K, -1).copy_(direct[:, None, :])
        self.order = degrees[0]
        self.current_mask = i

    def logits(self, x):
        """Conditional parameters for every dimension: (B, D) for Bernoulli, (B, D, K) for categorical."""
        h = x.flatten(1)
        inp = h if self.K == 1 else h * 2 - 1  # grey levels centred
        h = inp
        for layer in self.layers:
            h = F.relu(layer(h))
        out = self.out(h) + (self.direct(inp) if self.direct is not None else 0)
        return out if self.K == 1 else out.view(-1, self.D, self.K)

    def log_prob(self, x):
        """log p(x) under the mask in use, nats per example."""
        logits = self.logits(x)
        xf = x.flatten(1)
        if self.K == 1:
            return -F.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum(1)
        target = (xf * (self.K - 1)).round().long()
        return -F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)

    def loss(self, batch):
        return {"loss": -self.log_prob(batch[0]).mean()}

    def train_step(self, batch, ctx):
        self.set_mask(ctx.step % self.num_masks)  # ctx.step == self.updates, known on the host
        logs = ctx.minimize("main", self.loss, batch)
        self.updates += 1
        return logs

    @torch.no_grad()
    def eval_step(self, batch):
        return {"nll": self.nll(batch[0]).mean()}

    @torch.no_grad()
    def nll(self, x, generator=None):
        """-log of the ensemble likelihood (1 / M) sum_i p_i(x) over the masks, nats per example.

        Bernoulli: of the binary image. Categorical with 256 levels: of the 8-bit image.
        """
        keep = self.current_mask
        lps = []
        for i in range(self.num_masks):
            self.set_mask(i)
            lps.append(self.log_prob(x))
        self.set_mask(keep)
        return -(torch.logsumexp(torch.stack(lps), 0) - math.log(self.num_masks))

    @torch.no_grad()
    def sample(self, n, generator=None, mask: int = 0, **_):
        """Ancestral sampling in the ordering of mask `mask`: D network passes."""
        keep = self.current_mask
        self.set_mask(mask)
        x = torch.zeros(n, self.D, device=self.device)
        for pos in range(1, self.D + 1):
            d = int((self.order == pos).nonzero())
            logits = self.logits(x.view(n, *self.shape))
            if self.K == 1:
                p = torch.sigmoid(logits[:, d])
                x[:, d] = (torch.rand(n, generator=generator, device=self.device) < p).float()
            else:
                probs = torch.softmax(logits[:, d], -1)
                x[:, d] = torch.multinomial(probs, 1, generator=generator).squeeze(1).float() / (self.K - 1)
        self.set_mask(keep)
        return x.view(n, *self.shape)


def build(cfg: Config, shape, num_classes=0) -> MADE:
    return MADE(shape, cfg.hidden, cfg.num_masks, cfg.direct, cfg.output, cfg.levels, cfg.mask_seed)


def validate(cfg: Config, data_cfg) -> None:
    if cfg.output == "bernoulli" and not data_cfg.binarize:
        raise GenlabError("the Bernoulli output models binary images: add --binarize true, or --output categorical")
    if cfg.output == "categorical" and data_cfg.binarize:
        raise GenlabError("binarised images take --output bernoulli; the categorical output models grey levels")


def figures(model, data, out_dir, cfg: Config, generator: torch.Generator) -> list[str]:
    """100 samples (in the first mask's ordering) beside 100 test images."""
    from genlab.viz import samples_beside_data

    return samples_beside_data(model, data, out_dir, generator)
