"""Latent diffusion: the autoencoder's maths and shapes, the latent scale, and the two-stage run."""

import json
import math
import os
import shutil
import signal

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import genlab
from genlab import ldm, runs
from genlab.data import Dataset
from genlab.errors import GenlabError, TrainingStopped
from genlab.trainer import StepContext

from test_training import assert_bitwise_equal, final_tensors

# both stages small enough for seconds on a laptop CPU
TINY_LDM = dict(dataset="digits", image_size=8, progress=False, final_eval_n=20, batch_size=16,
                sets=["model.ae_steps=4", "model.ae_width=4", "model.ae_batch_size=16", "model.factor=2",
                      "model.dim=8", "model.dim_mults=[1]", "model.time_steps=10", "model.num_res_blocks=1"])


def test_kl_term_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(5, 6, 4, 3, generator=g) * 2
    q = ldm.DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,size,factor", [(1, 28, 4), (1, 28, 8), (1, 28, 1), (3, 32, 4), (3, 64, 4),
                                                  (3, 64, 8), (1, 8, 2), (3, 30, 4)])
def test_encode_decode_shapes(channels, size, factor):
    ae = ldm.AutoencoderKL((channels, size, size), factor, z_channels=3, width=4)
    x = torch.rand(2, channels, size, size)
    q = ae.encode(x)
    side = math.ceil(size / factor)
    assert q.mean.shape == (2, 3, side, side) == (2, *ae.latent_shape)
    assert ae.decode(q.mean).shape == x.shape


def random_images(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("latents", ["sample", "mean"])
def test_the_scale_factor_gives_latents_of_unit_variance_on_the_training_set(latents):
    torch.manual_seed(0)
    ae = ldm.AutoencoderKL((1, 12, 12), 2, z_channels=2, width=4)
    with torch.no_grad():  # a posterior with a real spread, so that sampling matters
        ae.encoder.net[-1].bias[2:].fill_(-1.0)
    data = Dataset("random", "image", random_images(400, (1, 12, 12)), random_images(50, (1, 12, 12), 1))
    codes = ldm.encode_dataset(ae, data, "cpu")
    assert codes.kind == "latent" and codes.images is data and codes.train.shape == (400, 4, 6, 6)
    model = ldm.LDM(ae, ldm.DDPM((2, 6, 6), 10, dim=8, dim_mults=[1], pixels=False, clip_x0=False), latents)
    model.scale.fill_(ldm.latent_scale(codes.train, latents))
    torch.manual_seed(1)
    z = torch.cat([model.codes(codes.train) for _ in range(20)])  # Monte Carlo over the posterior samples
    assert abs(float(z.double().var()) - 1) < 0.01
    if latents == "mean":  # the codes of images and of their stored moments agree
        torch.testing.assert_close(model.codes(data.floats("train")[:8]), z[:8], rtol=1e-4, atol=1e-5)


def step_context(model):
    groups = model.optimizer_groups()
    opts = {k: torch.optim.Adam(v, 1e-3) for k, v in groups.items()}
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for k, o in opts.items()}
    return StepContext(opts, scheds, groups, 0.0, 1, None, torch.device("cpu"))


def test_the_discriminator_joins_at_its_step_with_the_adaptive_weight():
    torch.manual_seed(0)
    ae = ldm.AutoencoderKL((1, 16, 16), 4, z_channels=2, width=4, disc_weight=0.5, disc_start=1)
    ctx = step_context(ae)
    x = (torch.rand(8, 1, 16, 16), torch.zeros(8, dtype=torch.long))
    disc_before = [p.clone() for p in ae.discriminator.parameters()]
    logs = ae.train_step(x, ctx)
    assert "loss_d" not in logs and all(torch.equal(a, b) for a, b in zip(disc_before, ae.discriminator.parameters()))
    ctx.step = 1
    logs = ae.train_step(x, ctx)
    assert {"loss_d", "loss_g", "disc_w"} <= set(logs)
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, ae.discriminator.parameters()))
    # the weighted adversarial gradient at the decoder's last layer is disc_weight times the reconstruction's
    ae.adversarial = True
    out = ae.loss(x)
    last = ae.decoder.out[-1].weight
    g_rec = torch.autograd.grad(out["rec"], last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(out["disc_w"] * out["loss_g"], last)[0]
    assert math.isclose(float(g_adv.norm()), 0.5 * float(g_rec.norm()), rel_tol=1e-3)


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    """One tiny ldm run of 3 steps in each stage, uninterrupted; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("ldm") / "run"
    genlab.train("ldm", out=run, steps=3, **TINY_LDM)
    return run


def test_train_sample_eval_resume_end_to_end(ldm_run, tmp_path):
    run = tmp_path / "ldm"
    shutil.copytree(ldm_run, run)
    model = genlab.load(run)
    assert (run / "autoencoder" / "done.json").is_file() and (run / "autoencoder" / "checkpoints").is_dir()
    for name in ("autoencoder", "latents", "forward", "strip", "autoencoder_loss"):
        assert (run / "figures" / f"{name}.png").is_file(), name
    assert model.latent.shape == (3, 4, 4) and float(model.scale) > 0 and float(model.latent.x0_range) > 0
    assert model.latent.denoiser().clip == pytest.approx(float(model.latent.x0_range))  # what sampling clamps to
    final = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "test"][-1]
    assert {"ae_psnr", "ae_mse", "latent_scale"} <= set(final)
    x = runs.sample(run, 6, sampler="ddim", steps=3)
    assert x.shape == (6, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    result = runs.evaluate(run, metrics=("loss",), n=20)  # the loss of test images, encoded on the fly
    assert math.isfinite(result["loss"])
    with pytest.raises(GenlabError, match="no likelihood"):
        runs.evaluate(run, metrics=("nll",), n=4)
    again = genlab.train(resume=run, steps=5)
    assert again.step == 5
    torch.testing.assert_close(again.scale, model.scale)  # stage 1 not trained again


def test_a_run_stopped_in_stage_one_resumes_to_the_uninterrupted_run(ldm_run, tmp_path, monkeypatch):
    ref = ldm_run
    step = ldm.AutoencoderKL.train_step

    def stop_at_two(self, batch, ctx):
        if ctx.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer saves and stops after this step
        return step(self, batch, ctx)

    monkeypatch.setattr(ldm.AutoencoderKL, "train_step", stop_at_two)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        genlab.train("ldm", out=run, steps=3, **TINY_LDM)
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    assert sorted(p.name for p in (run / "autoencoder" / "checkpoints").glob("step_*"))[-1] == "step_00000003"
    monkeypatch.setattr(ldm.AutoencoderKL, "train_step", step)
    genlab.train(resume=run)
    assert_bitwise_equal(final_tensors(ref), final_tensors(run))


def test_reusing_a_trained_autoencoder_skips_stage_one(ldm_run, tmp_path):
    first = genlab.load(ldm_run)
    kw = dict(TINY_LDM, sets=TINY_LDM["sets"] + [f"model.autoencoder={ldm_run}", "model.cond=class"])
    second = genlab.train("ldm", out=tmp_path / "b", steps=2, **kw)
    assert not (tmp_path / "b" / "autoencoder").exists() and (tmp_path / "b" / "figures" / "classes.png").is_file()
    x = runs.sample(second, 4, classes="3", guidance=2.0, sampler="ddim", steps=2)  # class-conditional, guided
    assert x.shape == (4, 1, 8, 8)
    for k, v in first.autoencoder.state_dict().items():
        assert torch.equal(v, second.autoencoder.state_dict()[k]), k
    bad = dict(TINY_LDM, sets=TINY_LDM["sets"] + [f"model.autoencoder={tmp_path / 'nowhere'}"])
    with pytest.raises(GenlabError, match="not a directory"):
        genlab.train("ldm", out=tmp_path / "c", steps=2, **bad)
    assert not (tmp_path / "c").exists()


def test_automatic_autoencoder_steps_are_pinned_in_the_config(tmp_path):
    from genlab.runs import make_config, prepare_data

    cfg = make_config("ldm", dataset="digits", image_size=8, steps=7)
    assert cfg.model.ae_steps == 0
    prepare_data(cfg)
    assert cfg.model.ae_steps == 7  # what config.yaml records, so --resume --steps N keeps stage 1 as it was
    cfg = make_config("ldm", dataset="digits", image_size=8, epochs=2, batch_size=100)
    prepare_data(cfg)
    assert cfg.model.ae_steps == 2 * (1497 // 100)


def test_the_predicted_x0_is_clamped_to_the_range_given():
    from genlab.sampling import VPDenoiser

    abar = torch.linspace(0.99, 0.01, 10)
    x = torch.randn(4, 2, 3, 3) * 5
    raw = VPDenoiser(lambda x, t: -torch.ones_like(x) * 100, abar, "eps", clip=False)(x, 3.0)
    assert raw.abs().max() > 100
    for clip, bound in ((True, 1.0), (2.5, 2.5)):
        torch.testing.assert_close(VPDenoiser(lambda x, t: -torch.ones_like(x) * 100, abar, "eps", clip)(x, 3.0),
                                   raw.clamp(-bound, bound))


def test_latent_range_covers_the_posteriors():
    moments = torch.cat([torch.tensor([[[[0.5]]], [[[-2.0]]]]), torch.log(torch.tensor([[[[0.01]]], [[[0.04]]]]))], 1)
    assert math.isclose(ldm.latent_range(moments), 2.0 + 3 * 0.2, rel_tol=1e-6)


def test_a_short_run_encodes_only_the_images_it_can_reach():
    from genlab.ldm import AutoencoderKL, encode_dataset, short_run_reach
    from genlab.runs import make_config, prepare_data

    cfg = make_config("ldm", steps=3, batch_size=16, final_eval_n=20, dataset="digits", image_size=8)
    data = prepare_data(cfg)
    idx, n_test = short_run_reach(cfg, data, least=100)
    assert len(idx) == 100 and n_test == 16 and torch.equal(idx, idx.sort().values) and len(idx.unique()) == 100
    assert torch.equal(short_run_reach(cfg, data, least=100)[0], idx)  # the same subset on every resume
    ae = AutoencoderKL((1, 8, 8), factor=2, z_channels=3, width=4).eval()
    full = encode_dataset(ae, data, "cpu")
    part = encode_dataset(ae, data, "cpu", reach=(idx, n_test))
    assert torch.allclose(part.train, full.train[idx], atol=1e-6) and torch.allclose(part.test, full.test[:16], atol=1e-6)
    assert torch.equal(part.train_labels, data.train_labels[idx]) and part.images is data
    for other in (make_config("ldm", steps=100, dataset="digits"), make_config("ldm", steps=3, final_eval="full"),
                  make_config("ldm", epochs=1, dataset="digits")):
        assert short_run_reach(other, data) is None  # not short, asked in full, or a length in epochs
