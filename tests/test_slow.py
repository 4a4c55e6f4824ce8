"""Longer end-to-end checks on real data (pytest -m slow): each trains for minutes, not seconds."""

import json

import pytest
import torch

import genlab
from conftest import shared_data
from genlab.data import load_dataset
from genlab.evaluation import Features, sample_metrics

pytestmark = pytest.mark.slow


def test_mnist_domain_classifier_reaches_99_percent():
    data = load_dataset("mnist", data_dir=str(shared_data("mnist")))
    feats = Features("domain", data, log=print)
    assert feats.accuracy >= 0.99
    test = sample_metrics(data.floats("test"), data, feats, which=("fid",))
    noise = sample_metrics(torch.rand(10000, 1, 28, 28), data, feats, which=("fid",))
    assert test["domain_fd"] * 50 < noise["domain_fd"]


def test_ncsn_learns_text_cs446(tmp_path):
    run = tmp_path / "ncsn"
    genlab.train("ncsn", out=run, steps=4000, progress=False)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["near"] >= 0.9 and final["share_error"] <= 0.05


def test_vae_on_binarised_mnist(tmp_path):
    run = tmp_path / "vae"
    genlab.train("vae", out=run, dataset="mnist", data_dir=str(shared_data("mnist")), arch="mlp", latent_dim=32,
                 decoder="bernoulli", binarize=True, epochs=5, final_eval_n=500, iw_samples=100, progress=False)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["nll_nats"] < 100 and final["nll_nats"] < final["nelbo"]


def test_made_on_binarised_mnist(tmp_path):
    run = tmp_path / "made"
    genlab.train("made", out=run, data_dir=str(shared_data("mnist")), epochs=3, progress=False)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["nll_nats"] < 100


def test_ldm_autoencoder_on_fashion_mnist(tmp_path):
    run = tmp_path / "ldm"
    model = genlab.train("ldm", out=run, dataset="fashion-mnist", data_dir=str(shared_data("fashion-mnist")),
                         steps=200, ae_steps=500, batch_size=64, final_eval_n=100, progress=False)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["ae_psnr"] > 21  # 22.5 dB measured at 500 steps (3x7x7 latents)
    assert model.latent.shape == (3, 7, 7) and torch.isfinite(model.sample(8)).all()
