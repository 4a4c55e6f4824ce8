"""Latent diffusion (Rombach, Blattmann, Lorenz, Esser and Ommer 2022, arXiv:2112.10752; seed 000, paper 2).

A diffusion model is trained on the codes of a fixed autoencoder instead of on pixels. With a
downsampling factor f, every network call of sampling and training sees (H/f) x (W/f) positions
instead of H x W, which is where the speed comes from; the autoencoder's decoder runs once per sample.

Two stages, trained into one run directory by `genlab train ldm`:
- stage 1, `AutoencoderKL` (in RUN/autoencoder): residual conv encoder to the moments of a diagonal
  Gaussian posterior q(z | x) over a (c, H/f, W/f) latent map, residual conv decoder, loss
      sum_pixels |x - D(z)|  (or squared)  +  kl_weight * KL(q(z | x) || N(0, I)),    z ~ q(z | x),
  with the paper's tiny KL weight (1e-6) and, optionally, a patch discriminator (hinge loss) whose
  generator term is weighted adaptively by the ratio of the two gradient norms at the decoder's last layer;
- stage 2, a `ddpm` U-Net on the latents: the training set is encoded once (the posterior's moments are
  kept, so a fresh posterior sample or the mean is used each time), scaled by 1 / std(z) measured on the
  training set (stored in the model as `scale`), then trained with the same schedules, losses, EMA,
  class conditioning and samplers as the pixel model. Samples are decoded at the end. Where the pixel
  model clamps its prediction of x0 to [-1, 1] (Algorithm 2), the latent one clamps it to the range of
  the scaled training latents (the latent DDPM's `x0_range`): without it the first steps from sigma_T
  (2e4 for the cosine schedule at T = 1000) throw the ancestral and DDIM samplers off the latent
  manifold, and the decoder draws blobs.

The latent maps may have odd sizes (28x28 MNIST with f = 4 gives 7x7): the U-Net resizes to the size of
each skip connection, so nothing is padded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab import checkpoint, ddpm, parallel
from genlab.config import RunConfig, opt
from genlab.data import Dataset
from genlab.ddpm import DDPM
from genlab.errors import GenlabError
from genlab.family import GenerativeModel
from genlab.sampling import parse_sampler
from genlab.unet import Attention, norm


# ---------------------------------------------------------------------------
# Stage 1: the autoencoder


class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)) over latent maps (B, c, h, w), from the encoder's 2c channels."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over the latent map."""
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class Block(nn.Module):
    """GroupNorm-SiLU-conv twice around a residual connection (no noise level: the autoencoder's block)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


def middle(c: int) -> nn.Sequential:
    """The lowest resolution of both halves: block, self-attention, block."""
    return nn.Sequential(Block(c, c), Attention(c), Block(c, c))


class Encoder(nn.Module):
    def __init__(self, channels: int, z_channels: int, widths: list[int], res_blocks: int):
        super().__init__()
        layers, c = [nn.Conv2d(channels, widths[0], 3, padding=1)], widths[0]
        for i, w in enumerate(widths):
            for _ in range(res_blocks):
                layers.append(Block(c, w))
                c = w
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # H -> ceil(H / 2)
        layers += [middle(c), norm(c), nn.SiLU(), nn.Conv2d(c, 2 * z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """The encoder mirrored; each up-sampling resizes to the size the encoder had at that level."""

    def __init__(self, channels: int, z_channels: int, widths: list[int], res_blocks: int, sizes: list[tuple]):
        super().__init__()
        self.sizes = sizes
        c = widths[-1]
        self.inp = nn.Sequential(nn.Conv2d(z_channels, c, 3, padding=1), middle(c))
        self.levels = nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(res_blocks + 1):
                blocks.append(Block(c, widths[i]))
                c = widths[i]
            self.levels.append(nn.ModuleDict({"blocks": nn.Sequential(*blocks),
                                              "up": nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity()}))
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, z):
        h = self.inp(z)
        for i, level in zip(reversed(range(len(self.sizes))), self.levels):
            h = level["blocks"](h)
            if i > 0:
                h = level["up"](F.interpolate(h, size=self.sizes[i - 1], mode="nearest"))
        return self.out(h)


class PatchDiscriminator(nn.Module):
    """A PatchGAN (Isola et al. 2017) as in the paper's autoencoder: one logit per overlapping patch."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1] from their mean squared errors."""
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def level_sizes(H: int, W: int, factor: int) -> list[tuple[int, int]]:
    """(H, W) at each level of an encoder that halves log2(factor) times, rounding up."""
    sizes = [(H, W)]
    for _ in range(int(math.log2(factor))):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


class AutoencoderKL(GenerativeModel):
    """Stage 1: images in [0, 1] <-> latent maps (c, ceil(H/f), ceil(W/f)), the data seen as 2x - 1."""

    def __init__(self, shape, factor: int = 4, z_channels: int = 2, width: int = 32, res_blocks: int = 1,
                 recon: str = "l1", kl_weight: float = 1e-6, disc_weight: float = 0.0, disc_start: int = 0):
        super().__init__()
        C, H, W = shape
        self.shape = tuple(shape)
        levels = int(math.log2(factor))
        widths = [width * 2 ** min(i, 1) for i in range(levels + 1)]  # w, 2w, 2w, ...
        sizes = level_sizes(H, W, factor)
        self.latent_shape = (z_channels, *sizes[-1])
        self.recon, self.kl_weight = recon, kl_weight
        self.disc_weight, self.disc_start = disc_weight, disc_start
        self.encoder = Encoder(C, z_channels, widths, res_blocks)
        self.decoder = Decoder(C, z_channels, widths, res_blocks, sizes)
        self.discriminator = PatchDiscriminator(C) if disc_weight > 0 else None
        self.adversarial = False  # set by train_step once the discriminator has joined
        self._recons: list[torch.Tensor] = []

    def encode(self, x) -> DiagonalGaussian:
        """q(z | x) of images x in [0, 1]."""
        return DiagonalGaussian(self.encoder(x * 2 - 1))

    def decode(self, z) -> torch.Tensor:
        """Images in [0, 1] from latent maps."""
        return ((self.decoder(z) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        return self.decode(self.encode(x).mean)

    def reconstruction_error(self, x, x_hat) -> torch.Tensor:
        """Per example, summed over pixels, in the [-1, 1] scale the decoder outputs."""
        err = (x_hat - x).abs() if self.recon == "l1" else (x_hat - x) ** 2
        return err.flatten(1).sum(1)

    def loss(self, batch):
        x = batch[0] * 2 - 1
        q = DiagonalGaussian(self.encoder(x))
        x_hat = self.decoder(q.sample(parallel.randn_like(q.mean)))
        rec, kl = self.reconstruction_error(x, x_hat).mean(), q.kl().mean()
        out = {"loss": rec + self.kl_weight * kl, "rec": rec, "kl": kl}
        if self.adversarial:
            g = -self.discriminator(x_hat).mean()
            w = self.adaptive_weight(rec, g)
            out.update(loss=out["loss"] + w * g, loss_g=g, disc_w=w)
            self._recons.append(x_hat.detach())
        return out

    def adaptive_weight(self, rec, g) -> torch.Tensor:
        """disc_weight * |grad rec| / |grad g| at the decoder's last layer (the paper's balance of the terms)."""
        last = self.decoder.out[-1].weight
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g, last, retain_graph=True)[0]
        return (self.disc_weight * g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()

    def disc_loss(self, batch):
        """Hinge loss of the patch discriminator: real images against reconstructions."""
        x, x_hat = batch
        real, fake = self.discriminator(x * 2 - 1), self.discriminator(x_hat)
        return {"loss": 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean()),
                "d_real": real.mean(), "d_fake": fake.mean()}

    def optimizer_groups(self):
        groups = {"main": [*self.encoder.parameters(), *self.decoder.parameters()]}
        if self.discriminator is not None:
            groups["disc"] = list(self.discriminator.parameters())
        return groups

    def train_step(self, batch, ctx):
        self.adversarial = self.discriminator is not None and ctx.step >= self.disc_start
        self._recons = []
        try:
            logs = ctx.minimize("main", self.loss, batch)
            if self.adversarial:
                d = ctx.minimize("disc", self.disc_loss, (batch[0], torch.cat(self._recons)))
                logs.update(loss_d=d["loss"], d_real=d["d_real"], d_fake=d["d_fake"])
        finally:
            self.adversarial, self._recons = False, []
        return logs

    @torch.no_grad()
    def eval_step(self, batch):
        """Test quantities with z the posterior mean: the loss terms, and MSE and PSNR in [0, 1]."""
        x = batch[0]
        q = self.encode(x)
        x_hat = self.decoder(q.mean)
        rec, kl = self.reconstruction_error(x * 2 - 1, x_hat), q.kl()
        mse = (((x_hat + 1) / 2).clamp(0, 1) - x).pow(2).flatten(1).mean(1)
        return {"loss": (rec + self.kl_weight * kl).mean(), "rec": rec.mean(), "kl": kl.mean(), "mse": mse.mean(),
                "psnr": psnr(mse).mean()}

    @torch.no_grad()
    def preview(self, n, generator, data, **_):
        """Test images, each followed by its reconstruction."""
        x = data.floats("test")[: max(1, n // 2)].to(self.device)
        return torch.stack([x, self.reconstruct(x)], 1).flatten(0, 1)

    def networks(self):
        return [self.encoder, self.decoder]


# ---------------------------------------------------------------------------
# Stage 2: diffusion on the latents


class LDM(GenerativeModel):
    """A frozen autoencoder and a DDPM on its scaled latents; samples are decoded images in [0, 1]."""

    ema_target = "latent.net"
    samplers = DDPM.samplers

    def __init__(self, autoencoder: AutoencoderKL, latent: DDPM, latents: str = "sample"):
        super().__init__()
        self.autoencoder, self.latent, self.latents = autoencoder, latent, latents
        self.shape = autoencoder.shape
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))  # 1 / std of the training latents

    @property
    def num_classes(self) -> int:
        return self.latent.num_classes

    @property
    def guidance(self) -> float:
        return self.latent.guidance

    def class_labels(self, n: int, classes=None):
        return self.latent.class_labels(n, classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()  # frozen in stage 2
        return self

    def optimizer_groups(self):
        return {"main": list(self.latent.parameters())}

    def networks(self):
        return [self.latent.net, self.autoencoder.decoder]

    @torch.no_grad()
    def codes(self, x) -> torch.Tensor:
        """Scaled latents of a batch: of images (encoded now) or of encoded moments (see encode_dataset)."""
        q = self.autoencoder.encode(x) if tuple(x.shape[1:]) == self.shape else DiagonalGaussian(x)
        z = q.sample(parallel.randn_like(q.mean)) if self.latents == "sample" else q.mean
        return z * self.scale.float()

    def decode(self, z) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale.float())

    def loss(self, batch):
        return self.latent.loss((self.codes(batch[0]), batch[1]))

    def levels(self, *args, **kwargs) -> list[float]:
        return self.latent.levels(*args, **kwargs)

    @torch.no_grad()
    def sample(self, n, generator=None, keep=(), **kwargs):
        """n images: a sampler of the latent DDPM (any of `samplers`, with its options), then the decoder.

        With `keep`, also {t: decoded x_t} for those time steps, as DDPM.sample."""
        out = self.latent.sample(n, generator, keep=keep, **kwargs)
        if keep:
            z, kept = out
            return self.decode(z), {t: self.decode(v) for t, v in kept.items()}
        return self.decode(out)


SAMPLERS = LDM.samplers


# ---------------------------------------------------------------------------
# The family


@dataclass
class Config(ddpm.Config):
    # the latent U-Net: 7x7 (MNIST at f = 4) or 16x16 (64x64 images) needs fewer levels than pixels
    dim_mults: list[int] = opt([1, 2], "latent U-Net width multipliers per resolution", min=1)
    attn_levels: int = opt(1, "self-attention in this many lowest-resolution levels of the latent U-Net", min=0)
    clip_x0: bool = opt(True, "clamp the predicted x0 to the range of the training latents while sampling, as "
                              "Algorithm 2 clamps pixels to [-1, 1]")
    factor: int = opt(4, "downsampling factor f of the autoencoder: latents of (H/f) x (W/f)", choices=[1, 2, 4, 8])
    z_channels: int = opt(0, "latent channels (0: 4 for colour images, 3 for grey)", min=0)
    ae_width: int = opt(16, "autoencoder base width (w at full size, 2w below)", min=1)
    ae_res_blocks: int = opt(1, "autoencoder residual blocks per level", min=1)
    recon: str = opt("l1", "reconstruction loss of the autoencoder, summed over pixels", choices=["l1", "l2"])
    kl_weight: float = opt(1e-6, "weight of KL(q(z|x) || N(0, I)) in the autoencoder loss (the paper: 1e-6)", min=0.0)
    disc_weight: float = opt(0.0, "weight of the patch discriminator's adversarial term, scaled adaptively "
                                  "(0: no discriminator; the paper: 0.5)", min=0.0)
    disc_start: int = opt(0, "autoencoder step at which the discriminator joins (with disc_weight > 0)", min=0)
    ae_steps: int = opt(0, "training steps of the autoencoder, stage 1 (0: as many as the diffusion, stage 2)", min=0)
    ae_batch_size: int = opt(64, "batch size of the autoencoder", min=1)
    ae_lr: float = opt(1e-3, "learning rate of the autoencoder", min=0.0)
    latents: str = opt("sample", "what stage 2 diffuses: a fresh posterior sample z ~ q(z|x) each time, or its mean",
                       choices=["sample", "mean"])
    autoencoder: str = opt("", "reuse the autoencoder of this run (an ldm run, or its autoencoder/ folder) "
                               "instead of training one")


TRAIN_DEFAULTS = dict(ddpm.TRAIN_DEFAULTS)
DATA_DEFAULTS = {"dataset": "digits"}
DATA_KIND = "image"
IMAGE_SIZE = 32


def build(cfg: Config, shape, num_classes=0) -> LDM:
    if cfg.cond == "class" and num_classes < 2:
        raise GenlabError("--cond class needs a labelled data set (digits, mnist, fashion-mnist, cifar10, "
                          "or a folder with one sub-folder per class)")
    z_channels = cfg.z_channels or (4 if shape[0] == 3 else 3)
    ae = AutoencoderKL(shape, cfg.factor, z_channels, cfg.ae_width, cfg.ae_res_blocks, cfg.recon, cfg.kl_weight,
                       cfg.disc_weight, cfg.disc_start)
    latent = DDPM(ae.latent_shape, cfg.time_steps, cfg.schedule, cfg.loss, cfg.objective, cfg.clip_x0, cfg.dim,
                  cfg.dim_mults, cfg.num_res_blocks, cfg.attn_levels, cfg.dropout,
                  num_classes if cfg.cond == "class" else 0, cfg.label_dropout, cfg.guidance, pixels=False,
                  snr_gamma=cfg.snr_gamma)
    model = LDM(ae, latent, cfg.latents)
    model.preview_sampler = parse_sampler(cfg.preview, DDPM.samplers)
    return model


def validate(cfg: Config, data_cfg) -> None:
    parse_sampler(cfg.preview, DDPM.samplers)
    if data_cfg.binarize:
        raise GenlabError("ldm models 8-bit images; data.binarize does not apply")
    if data_cfg.image_size and data_cfg.image_size < 2 * cfg.factor:
        raise GenlabError(f"images of {data_cfg.image_size} pixels are too small for factor {cfg.factor}")


# ---------------------------------------------------------------------------
# Running the two stages


AE_DIR, AE_DONE = "autoencoder", "done.json"


def prepare(data: Dataset, cfg: RunConfig) -> Dataset:
    """Fixes the automatic number of autoencoder steps (the run's), so that config.yaml records it and a
    resumed run with other --steps keeps its stage 1."""
    if not cfg.model.ae_steps:
        cfg.model.ae_steps = cfg.train.steps or cfg.train.epochs * max(1, len(data.train) // cfg.train.batch_size)
    return data


def stage_one_config(cfg: RunConfig) -> RunConfig:
    """The training options of the autoencoder: the run's, with its own steps, batch size and rate, and no EMA
    or gradient clipping (its loss is summed over pixels, so its gradient norms are in the hundreds)."""
    m = cfg.model
    train = dataclasses.replace(cfg.train, steps=m.ae_steps, epochs=0, batch_size=m.ae_batch_size, lr=m.ae_lr,
                                ema_decay=0.0, grad_clip=0.0, fid_every=0, eval_every=0, warmup_steps=0,
                                lr_schedule="constant")
    return RunConfig(cfg.family, cfg.data, train, cfg.model)


def first_stage(model: LDM, data: Dataset, cfg: RunConfig, run_dir: Path, device) -> Dataset:
    """Before stage 2 trains or resumes: the autoencoder trained (or resumed, or reused, or read back from
    this run's own stage-2 checkpoint), frozen, the data set encoded and the latent scale measured.

    Returns the latent data set stage 2 trains on."""
    from genlab.runs import phase_log

    ae = model.autoencoder
    if checkpoint.latest(run_dir / "checkpoints") is not None:  # stage 2 under way: its own copy of the weights
        load_autoencoder(ae, run_dir)
    elif cfg.model.autoencoder:
        load_autoencoder(ae, Path(cfg.model.autoencoder))
        print(f"stage 1: the autoencoder of {cfg.model.autoencoder}", flush=True)
    else:
        train_autoencoder(ae, data, cfg, run_dir / AE_DIR, device)
    model.autoencoder_metrics = autoencoder_metrics(run_dir) or (
        autoencoder_metrics(Path(cfg.model.autoencoder)) if cfg.model.autoencoder else {})
    ae.requires_grad_(False).eval()
    t0 = time.perf_counter()
    reach = short_run_reach(cfg, data)
    latent = encode_dataset(ae, data, device, reach=reach)
    model.scale.fill_(latent_scale(latent.train, cfg.model.latents))
    model.latent.x0_range.fill_(latent_range(latent.train) * model.scale)
    what = (f"{len(data.train)} + {len(data.test)} images" if reach is None else
            f"a short run's {len(latent.train)} of {len(data.train)} training and {len(latent.test)} of "
            f"{len(data.test)} test images (--final-eval full: all)")
    phase_log(f"stage 2: {what} encoded to latents of {'x'.join(map(str, ae.latent_shape))}, "
              f"scale {float(model.scale):.4g}", t0)
    torch.manual_seed(cfg.train.seed + 10)  # stage 2 starts from the same state however stage 1 went
    return latent


def train_autoencoder(ae: AutoencoderKL, data: Dataset, cfg: RunConfig, ae_dir: Path, device) -> None:
    """Stage 1 into `ae_dir` (checkpoints/, metrics.jsonl, samples/): resumed where it stopped, skipped when done."""
    from genlab.runs import phase_log
    from genlab.trainer import Trainer, drop_metrics

    if parallel.is_main():
        ae_dir.mkdir(exist_ok=True)
    parallel.barrier()
    ae_cfg = stage_one_config(cfg)
    trainer = Trainer(ae_cfg, ae_dir, data, ae, None, device)
    latest = checkpoint.latest_intact(ae_dir / "checkpoints", set_aside=True)
    if latest is not None:
        trainer.restore(latest, verified=True)
    done = read_done(ae_dir)
    if done.get("step") == trainer.step == trainer.total:
        print(f"stage 1: the autoencoder is trained ({trainer.step} steps)", flush=True)
        return
    print(f"stage 1: the autoencoder, {'from step %d of ' % trainer.step if trainer.step else ''}"
          f"{trainer.total} steps into {ae_dir}", flush=True)
    trainer.fit()
    trainer.save()
    if parallel.is_main():
        result = trainer.evaluate(final=True, log=phase_log)
        # stopped after its last step but before done.json: the test record is written once
        drop_metrics(ae_dir / "metrics.jsonl", lambda r: r.get("split") == "test" and r.get("step") == trainer.step)
        trainer.log("test", result)
        trainer.sample_grid("final")
        checkpoint.write_json_atomic(ae_dir / AE_DONE, {"step": trainer.step, "elapsed": round(trainer.elapsed, 2),
                                                        "test": result})
        print("stage 1 done: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)),
              flush=True)
    parallel.barrier()


def read_done(ae_dir: Path) -> dict:
    try:
        done = json.loads((ae_dir / AE_DONE).read_text())
    except (OSError, ValueError):
        return {}
    return done if isinstance(done, dict) else {}


def autoencoder_metrics(run: Path) -> dict[str, float]:
    """The test metrics and training time of a finished stage 1 (of an ldm run, or of its autoencoder/ folder)."""
    done = read_done(run / AE_DIR) or read_done(run)
    if not done:
        return {}
    return {**{f"ae_{k}": v for k, v in done.get("test", {}).items() if k in ("psnr", "mse", "rec", "kl")},
            "ae_elapsed": done.get("elapsed", 0.0)}


def load_autoencoder(ae: AutoencoderKL, run: Path) -> None:
    """The autoencoder's weights from an ldm run (its newest intact checkpoint, else its stage 1)
    or from an autoencoder/ folder."""
    if not run.is_dir():
        raise GenlabError(f"model.autoencoder: {run} is not a directory")
    path = checkpoint.latest_intact(run / "checkpoints")
    if path is not None and (run / "config.yaml").is_file():
        tensors, _ = checkpoint.load(path, names=["model"], verified=True)
        sd = {k[len("autoencoder."):]: v for k, v in tensors["model"].items() if k.startswith("autoencoder.")}
    else:
        path = path if path is not None else checkpoint.latest_intact(run / AE_DIR / "checkpoints")
        if path is None:
            raise GenlabError(f"model.autoencoder: {run} holds no trained autoencoder (no intact checkpoint)")
        tensors, _ = checkpoint.load(path, names=["model"], verified=True)
        sd = tensors["model"]
    checkpoint.load_state(ae, sd, f"the autoencoder of {run}")


@torch.no_grad()
def short_run_reach(cfg: RunConfig, data: Dataset, least: int = 2048) -> tuple[torch.Tensor, int] | None:
    """What a short run's stage 2 can reach: (training indices, number of test examples), or None for all.

    A run of fewer than SHORT_RUN_STEPS steps (given as steps, with final_eval auto) draws at most
    steps x batch_size training images and evaluates final_eval_size() test examples, the first ones; only
    those need encoding: a random subset of the training split (at least `least` images, enough for the
    latent scale) and the first test examples. A 3-step MNIST run encodes 2,064 images instead of 70,000.
    """
    from genlab.trainer import EXAMPLES_PER_STEP, SHORT_RUN_EXAMPLES, SHORT_RUN_STEPS

    t = cfg.train
    if t.final_eval != "auto" or not t.steps or t.steps >= SHORT_RUN_STEPS:
        return None
    n_train = max(least, t.steps * t.batch_size * t.grad_accum)
    n_test = min(t.final_eval_n or len(data.test), max(SHORT_RUN_EXAMPLES, EXAMPLES_PER_STEP * t.steps))
    if n_train >= len(data.train) and n_test >= len(data.test):
        return None
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(t.seed))
    return order[:n_train].sort().values, min(n_test, len(data.test))


@torch.no_grad()
def encode_dataset(ae: AutoencoderKL, data: Dataset, device, batch_size: int = 500,
                   reach: tuple[torch.Tensor, int] | None = None) -> Dataset:
    """Both splits as the posterior's moments (mean and log-variance, 2c channels), once; only the training
    images `reach[0]` and the first `reach[1]` test images when given (see short_run_reach)."""

    def moments(images):
        out = []
        for x in images.split(batch_size):
            q = ae.encode(x.float().div(255).to(device) if x.dtype == torch.uint8 else x.to(device))
            out.append(torch.cat([q.mean, q.logvar], 1).float().cpu())
        return torch.cat(out)

    idx, n_test = reach if reach is not None else (slice(None), len(data.test))
    labels = (None if data.train_labels is None else data.train_labels[idx],
              None if data.test_labels is None else data.test_labels[:n_test])
    return Dataset(data.name, "latent", moments(data.train[idx]), moments(data.test[:n_test]), *labels,
                   data.classes, images=data)


def latent_scale(moments: torch.Tensor, latents: str = "sample") -> float:
    """1 / std of the latents over a data set: of z ~ q(z | x) (Var = Var(mean) + E[sigma^2]) or of the mean."""
    mean, logvar = moments.double().chunk(2, dim=1)
    var = mean.var(unbiased=False) + (logvar.exp().mean() if latents == "sample" else 0.0)
    return float(var.rsqrt())


def latent_range(moments: torch.Tensor) -> float:
    """The largest |z| of the posteriors of a data set, taken as |mean| + 3 sigma."""
    mean, logvar = moments.double().chunk(2, dim=1)
    return float((mean.abs() + 3 * (0.5 * logvar).exp()).max())


def final_metrics(model: LDM, data, cfg: Config, generator) -> dict[str, float]:
    """The autoencoder's test metrics (stage 1) and the latent scale, in the run's final test record."""
    return {**getattr(model, "autoencoder_metrics", {}), "latent_scale": float(model.scale),
            "latent_range": float(model.latent.x0_range)}


# ---------------------------------------------------------------------------
# Figures


@torch.no_grad()
def figures(model: LDM, data, out_dir, cfg: Config, generator: torch.Generator, quick: bool = False) -> list[str]:
    """Reconstructions, the latent channels, the forward process in latent space decoded at 0/25/50/75/99%
    of T, the decoded inference strip, the autoencoder's training curves (and one row per class)."""
    from genlab.trainer import read_metrics
    from genlab.viz import image_table, plot_curves

    images = data.images or data
    device, T = model.device, model.latent.diffusion.T
    k = 4 if quick else 8
    x = images.floats("test")[:k].to(device)
    paths = [f"{out_dir}/autoencoder.png", f"{out_dir}/latents.png", f"{out_dir}/forward.png", f"{out_dir}/strip.png"]
    recon = model.autoencoder.reconstruct(x)
    db = psnr((recon - x).pow(2).flatten(1).mean(1))
    image_table(paths[0], [x, recon], [f"{p:.1f} dB" for p in db.tolist()], row_titles=["test image", "decoded"],
                title=f"autoencoder: f = {cfg.factor}, latents {'x'.join(map(str, model.autoencoder.latent_shape))}")
    # the latent channels, scaled to unit variance: shown on [-3, 3]
    z = model.autoencoder.encode(x).mean * model.scale.float()
    c = z.shape[1]
    rows = [[x[i], *((z[i, :, None] + 3) / 6).clamp(0, 1)] for i in range(k // 2)]
    image_table(paths[1], rows, ["image", *(f"channel {j + 1}" for j in range(c))],
                title="latent means, scaled, on [-3, 3]")
    # forward process: q(z_t | z_0) in latent space, each state decoded
    fracs = [0.0, 0.25, 0.5, 0.75, 0.99]
    ts = [int(f * T) for f in fracs]
    cols = []
    for t in ts:
        if t == 0:
            cols.append(model.decode(z))
        else:
            tt = torch.full((k,), t - 1, device=device, dtype=torch.long)
            eps = torch.randn(z.shape, generator=generator, device=device)
            cols.append(model.decode(model.latent.diffusion.q_sample(z, tt, eps)))
    image_table(paths[2], [torch.stack([col[i] for col in cols]) for i in range(k)],
                [f"{int(f * 100)}%: t={t}" for f, t in zip(fracs, ts)],
                title="forward process in latent space, decoded")
    steps = ddpm.strip_steps(cfg)
    n = 2 if quick else 4
    _, kept = model.sample(n, generator=generator, keep=steps)
    image_table(paths[3], [torch.stack([kept[t][i] for t in steps]) for i in range(n)], [f"t={t}" for t in steps],
                title="inference: z_t decoded")
    records = read_metrics(Path(out_dir).parent / AE_DIR / "metrics.jsonl")
    if plot_curves(f"{out_dir}/autoencoder_loss.png", records, ["rec", "kl", "psnr", "loss_d", "loss_g"],
                   title="stage 1: the autoencoder"):
        paths.append(f"{out_dir}/autoencoder_loss.png")
    if model.num_classes:
        paths.append(ddpm.class_figure(model, images, f"{out_dir}/classes.png", generator, 2 if quick else 8))
    return paths
