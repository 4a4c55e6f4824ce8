"""The model protocol and the registry of families.

A model is an nn.Module with `loss(batch) -> dict` (a scalar "loss" plus named
terms) and `sample(n, generator=None)`; likelihood families add `nll(x)`.
The default `train_step` minimises "loss" with the one optimizer "main";
families with several optimizers (GANs) define `optimizer_groups` and their
own `train_step` from the same `ctx.minimize` primitive, so the Trainer never
branches on the family.

Each family lives in one module that exposes `Config` (its dataclass),
`build(cfg, shape, num_classes)`, `figures(model, data, out_dir, cfg, generator)`,
`TRAIN_DEFAULTS`, `DATA_DEFAULTS` and `DATA_KIND`, and optionally `validate(cfg, data_cfg)`, `prepare(data, run_cfg)` and
`final_metrics(model, data, cfg, generator)`.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType

import torch
import torch.nn as nn

from genlab.errors import GenlabError


class GenerativeModel(nn.Module):
    #: name of the submodule whose weights are averaged (EMA) and used for sampling; "" is the whole model
    ema_target: str = ""
    #: the samplers `sample(..., sampler=NAME, steps=N)` takes, the first the default; () when there is one way
    samplers: tuple[str, ...] = ()

    def loss(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def train_step(self, batch, ctx) -> dict[str, float]:
        return ctx.minimize("main", self.loss, batch)

    @contextlib.contextmanager
    def quick(self):
        """Cheaper sampling for the end-of-run work of a short run; yields a note of what it changes (or "")."""
        yield ""

    #: keyword arguments of `sample` for the grids drawn during training (a family's `preview` option)
    preview_sampler: dict = {}

    @torch.no_grad()
    def preview(self, n: int, generator: torch.Generator, data, **sample_kwargs) -> torch.Tensor:
        """What the sample grids show: samples, or for conditional families their outputs."""
        return self.sample(n, generator=generator, **sample_kwargs)

    @torch.no_grad()
    def eval_step(self, batch) -> dict[str, torch.Tensor]:
        """Test-set quantities of one batch (averaged over batches by the caller)."""
        return self.loss(batch)

    def networks(self) -> list[nn.Module]:
        """The networks that training and sampling call: what `--compile` compiles (default: every child with weights)."""
        return [m for m in self.children() if any(True for _ in m.parameters())]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# name -> (module, one-line description)
FAMILIES = {
    "ddpm": ("genlab.ddpm", "denoising diffusion probabilistic model with a U-Net (Ho et al. 2020; seeds 001, 004)"),
    "cyclegan": ("genlab.cyclegan", "CycleGAN: unpaired translation between two domains with cycle consistency (seed 000)"),
    "flow": ("genlab.flows", "normalizing flow: RealNVP/Glow multi-scale for images, coupling MLPs for 2-D data (seed 003)"),
    "gan": ("genlab.gan", "GAN: seed 002's DNet/GNet for MNIST, or a DCGAN for 32x32/64x64 colour images"),
    "inpaint-gan": ("genlab.inpaint_gan", "GAN inpainting: a U-Net that never sees the hole, masked MSE + adversarial loss (seed 001)"),
    "ldm": ("genlab.ldm", "latent diffusion: a KL autoencoder, then a DDPM on its latents (Rombach et al. 2022; seed 000)"),
    "made": ("genlab.made", "MADE: masked autoencoder, exact NLL, several orderings/connectivities (seed 003)"),
    "ncsn": ("genlab.score", "score model with annealed Langevin dynamics: ScoreNet for 2-D data, a U-Net for images (seed 002)"),
    "vae": ("genlab.vae", "variational autoencoder, conv (seed 003) or MLP, Gaussian or Bernoulli decoder (seeds 003, 004)"),
}


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise GenlabError(f"unknown model '{name}' (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[name][0])
