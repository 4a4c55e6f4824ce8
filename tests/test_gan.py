"""GAN, inpainting GAN and CycleGAN: architectures as the seed's tables define them, losses by hand, invariants."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import genlab
from conftest import shared_data
from genlab.cli import main
from genlab.cyclegan import CycleGAN, cycle_consistency
from genlab.errors import GenlabError
from genlab.gan import GAN, DCDiscriminator, DCGenerator, DNet, GNet
from genlab.inpaint_gan import InpaintGAN, box_masks, stroke_masks


def layer_table(module):
    rows = []
    for m in module.children():
        row = [type(m).__name__]
        if isinstance(m, nn.Conv2d):
            row += [m.kernel_size[0], m.stride[0], m.padding[0], m.out_channels, m.bias is not None]
        elif isinstance(m, nn.Linear):
            row += [m.out_features, m.bias is not None]
        rows.append(tuple(row))
    return rows


def test_dnet_is_table_1():
    assert layer_table(DNet()) == [
        ("Conv2d", 3, 1, 1, 2, True), ("ReLU",), ("MaxPool2d",),
        ("Conv2d", 3, 1, 1, 4, True), ("ReLU",), ("MaxPool2d",),
        ("Conv2d", 3, 1, 0, 8, True), ("ReLU",), ("Linear", 1, True)]
    # by hand: (1*2*9 + 2) + (2*4*9 + 4) + (4*8*9 + 8) + (8*5*5 + 1)
    assert sum(p.numel() for p in DNet().parameters()) == 20 + 76 + 296 + 201
    assert DNet()(torch.rand(3, 1, 28, 28)).shape == (3, 1)


def test_gnet_is_table_2():
    assert layer_table(GNet(64)) == [
        ("Linear", 1568, True), ("LeakyReLU",), ("Upsample",),
        ("Conv2d", 3, 1, 1, 16, True), ("LeakyReLU",), ("Upsample",),
        ("Conv2d", 3, 1, 1, 8, True), ("LeakyReLU",),
        ("Conv2d", 3, 1, 1, 1, True), ("Sigmoid",)]
    g = GNet(64)
    assert all(m.negative_slope == 0.2 for m in g.children() if isinstance(m, nn.LeakyReLU))
    assert all(m.scale_factor == 2 for m in g.children() if isinstance(m, nn.Upsample))
    # by hand: (64*1568 + 1568) + (32*16*9 + 16) + (16*8*9 + 8) + (8*1*9 + 1)
    assert sum(p.numel() for p in g.parameters()) == 101920 + 4624 + 1160 + 73
    x = g(torch.rand(5, 64) * 2 - 1)
    assert x.shape == (5, 1, 28, 28) and 0 < x.min() and x.max() < 1


def test_kaiming_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    for net in (DNet(), GNet(64)):
        for layer in net.children():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                assert torch.count_nonzero(layer.bias) == 0
                fan_in = layer.weight[0].numel()
                bound = math.sqrt(6 / fan_in)  # gain sqrt(2) (ReLU), uniform on [-gain sqrt(3 / fan_in), +]
                assert layer.weight.abs().max() <= bound
                if layer.weight.numel() > 5000:
                    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


class FixedD(nn.Module):
    """A 'discriminator' returning preset logits: real images are all ones, fakes anything else."""

    def __init__(self, real, fake):
        super().__init__()
        self.real, self.fake, self.w = real, fake, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        is_real = (x == 1).flatten(1).all(1)
        return torch.where(is_real, self.real, self.fake)[:, None] + 0 * self.w


def test_losses_by_hand():
    model = GAN((1, 28, 28))
    model.discriminator = FixedD(torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0]))
    x, z = torch.ones(2, 1, 28, 28), torch.zeros(2, 64)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    d = model.d_loss((x, z))
    expected_d = -(math.log(sig(2.0)) + math.log(sig(-1.0))) / 2 - (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2
    assert d["loss"].item() == pytest.approx(expected_d, rel=1e-6)
    assert d["d_real"].item() == pytest.approx((sig(2.0) + sig(-1.0)) / 2, rel=1e-6)
    assert d["d_fake"].item() == pytest.approx((sig(0.5) + sig(-3.0)) / 2, rel=1e-6)
    expected_g = -(math.log(sig(0.5)) + math.log(sig(-3.0))) / 2  # non-saturating: -log D(G(z))
    assert model.g_loss((x, z))["loss"].item() == pytest.approx(expected_g, rel=1e-6)


def test_d_step_does_not_move_the_generator():
    model = GAN((1, 28, 28))
    x, z = torch.rand(4, 1, 28, 28), torch.rand(4, 64)
    model.d_loss((x, z))["loss"].backward()
    assert all(p.grad is None for p in model.generator.parameters())


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_shapes(size):
    g, d = DCGenerator(100, 3, size), DCDiscriminator(3, size)
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 3, size, size) and d(x).shape == (2, 1)


def test_seed_gan_refuses_other_shapes():
    with pytest.raises(GenlabError, match="28x28"):
        genlab.make_config("gan", image_size=32)
    with pytest.raises(GenlabError, match="DNet/GNet"):
        genlab.train("gan", dataset="digits", steps=1, progress=False)


def test_gan_trains_with_a_grid_each_epoch(tmp_path):
    run = tmp_path / "gan"
    genlab.train("gan", out=run, dataset="digits", arch="dcgan", batch_size=256, epochs=2, progress=False)
    assert (run / "samples" / "epoch_0001.png").is_file() and (run / "samples" / "final.png").is_file()
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= rec[0].keys()
    assert {"samples.png", "test_images.png", "loss.png", "curves.png"} <= {p.name for p in (run / "figures").iterdir()}


def test_seed_gan_on_mnist(tmp_path):
    run = tmp_path / "gan"
    model = genlab.train("gan", out=run, dataset="mnist", data_dir=str(shared_data("mnist")), steps=3, progress=False)
    assert model.sample(4).shape == (4, 1, 28, 28)


# ---------------------------------------------------------------------------
# Inpainting


def test_inpainting_never_reads_the_missing_pixels():
    torch.manual_seed(0)
    model = InpaintGAN((1, 16, 16))
    x = torch.rand(4, 1, 16, 16)
    m = box_masks(torch.rand(4, 4), 16)
    other = x + m * torch.randn_like(x)  # change only what is missing
    assert torch.equal(model.complete(x, m), model.complete(other, m))
    out = model.complete(x, m)
    assert torch.equal(out * (1 - m), x * (1 - m))  # what is known is kept exactly


def test_masked_loss_ignores_known_pixels():
    x, xc = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    m = box_masks(torch.rand(3, 4), 8)
    base = InpaintGAN.masked_mse(xc, x, m)
    assert InpaintGAN.masked_mse(xc + (1 - m) * 5.0, x, m).item() == pytest.approx(base.item())
    assert base.item() == pytest.approx((((xc - x) ** 2) * m).sum().item() / m.sum().item())


def test_masks():
    u = torch.rand(500, 4, generator=torch.Generator().manual_seed(0))
    area = box_masks(u, 32).mean((1, 2, 3))
    assert area.min() >= 0.25 ** 2 * 0.7 and area.max() <= 0.5 ** 2 * 1.3
    s = stroke_masks(torch.rand(50, 24, generator=torch.Generator().manual_seed(0)), 32)
    assert ((s == 0) | (s == 1)).all() and (s.mean((1, 2, 3)) > 0.02).all()


def test_inpaint_gan_end_to_end_and_the_inpaint_command(tmp_path, capsys):
    run = tmp_path / "inp"
    genlab.train("inpaint-gan", out=run, dataset="digits", image_size=16, width=8, depth=2, steps=4,
                 batch_size=32, progress=False)
    assert {"inpaint_box.png", "inpaint_free.png"} <= {p.name for p in (run / "figures").iterdir()}
    img = (np.random.RandomState(0).rand(16, 16) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "digit.png")
    out = tmp_path / "done.png"
    assert main(["inpaint", str(run), "--image", str(tmp_path / "digit.png"), "--box", "4,4,6,6", "-o", str(out)]) == 0
    done = np.asarray(Image.open(out))
    assert done.shape == (16, 16)
    keep = np.ones((16, 16), bool)
    keep[4:10, 4:10] = False
    assert np.abs(done[keep].astype(int) - img[keep]).max() <= 1  # known pixels come back unchanged
    mask = np.zeros((16, 16), np.uint8)
    mask[2:5, :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["inpaint", str(run), "--image", str(tmp_path / "digit.png"), "--mask", str(tmp_path / "mask.png"),
                 "-o", str(tmp_path / "m.png")]) == 0
    capsys.readouterr()
    for args, msg in [(["--box", "10,10,10,10"], "does not fit"), ([], "exactly one"), (["--box", "a,b"], "x,y,w,h")]:
        assert main(["inpaint", str(run), "--image", str(tmp_path / "digit.png"), *args]) == 2
        assert msg in capsys.readouterr().err
    assert main(["sample", str(run)]) == 2


# ---------------------------------------------------------------------------
# CycleGAN


def test_cycle_loss_is_zero_for_inverse_maps():
    x = torch.rand(4, 1, 8, 8)
    invert = lambda v: 1 - v  # noqa: E731
    assert cycle_consistency(x, invert, invert).item() == 0
    assert cycle_consistency(x, lambda v: 2 * v, lambda v: v / 2).item() == pytest.approx(0, abs=1e-7)
    assert cycle_consistency(x, invert, lambda v: v).item() > 0.1


@pytest.mark.parametrize("size", [28, 32])
def test_cyclegan_shapes(size):
    m = CycleGAN((1, size, size), width=8, n_blocks=1)
    x = torch.rand(2, 1, size, size)
    assert m.G(x).shape == x.shape and m.F(x).shape == x.shape
    assert m.D_X(x).dim() == 4


def test_cyclegan_known_answer_demo_end_to_end(tmp_path):
    run = tmp_path / "cyc"
    model = genlab.train("cyclegan", out=run, dataset="digits", image_size=16, transform_b="invert", disjoint=True,
                         width=8, n_blocks=1, steps=4, batch_size=8, progress=False)
    data = genlab.runs.prepare_data(model.config)
    half = 1497 // 2
    assert len(data.train) == half and torch.equal(data.train_b, 255 - genlab.data.load_dataset(
        "digits", image_size=16).train[half:])
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "test"][-1]
    assert {"mae_G", "mae_F", "mae_identity", "cycle", "adv"} <= test.keys()
    assert test["mae_identity"] > 0.2  # an inverted digit differs from the digit
    assert {"translate_xy.png", "translate_yx.png"} <= {p.name for p in (run / "figures").iterdir()}
