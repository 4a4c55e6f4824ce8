"""Sample-quality evaluation: the domain classifier, cached reference features, metric names, the CLI, fid_every."""

import json

import numpy as np
import pytest
import torch

import genlab
from conftest import TINY_DDPM
from genlab.cli import main
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation import Features, choose_features, reference_features, sample_metrics


@pytest.fixture
def cache():
    """The session's cache (conftest), so that each domain classifier is trained once."""
    from genlab.data import cache_dir

    return cache_dir()


def test_domain_features_separate_real_from_noise(cache):
    data = load_dataset("digits", image_size=8)
    feats = Features("domain", data, log=lambda m: None)
    assert feats.accuracy > 0.9
    assert (cache / "domain").is_dir()
    real = sample_metrics(data.floats("test"), data, feats, which=("fid", "kid", "pr"))
    noise = sample_metrics(torch.rand(300, 1, 8, 8), data, feats, which=("fid", "kid", "pr"))
    assert "fid" not in real and "domain_fd" in real  # never reported as FID
    assert real["domain_fd"] * 10 < noise["domain_fd"]
    assert real["domain_kid"] < noise["domain_kid"] and real["domain_precision"] > noise["domain_precision"]
    again = Features("domain", data, log=lambda m: None)  # read back from the cache, not retrained
    assert again.accuracy == feats.accuracy
    first = reference_features(feats, data, 500)
    assert np.array_equal(first, reference_features(again, data, 500))



def test_points_are_their_own_features(cache):
    data = load_dataset("moons")
    m = sample_metrics(data.test[:1000], data, choose_features("auto", data), which=("fid", "pr"))
    assert {"raw_fd", "raw_precision", "raw_recall"} <= m.keys() and m["raw_fd"] < 0.05


def test_auto_falls_back_to_domain_features_offline(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "nothing"))
    data = load_dataset("digits", image_size=8)
    messages = []
    f = choose_features("auto", data, log=messages.append)
    assert f.kind == "domain" and "domain" in messages[-1]
    with pytest.raises(GenlabError, match="--features domain"):
        Features("inception", data)


def test_unlabelled_data_needs_inception(cache, tmp_path):
    from PIL import Image

    for i in range(12):
        Image.new("L", (8, 8), i * 20).save(tmp_path / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=8, channels=1)
    with pytest.raises(GenlabError, match="no labels"):
        Features("domain", data)


def test_eval_cli_with_given_samples(tiny_run, cache, tmp_path, capsys):
    data = load_dataset("digits", image_size=8)
    np.savez(tmp_path / "s.npz", samples=data.floats("test")[:200].numpy())
    assert main(["eval", str(tiny_run), "--metrics", "fid,kid,pr,is", "--features", "domain",
                 "--samples", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr().out
    assert "domain_fd" in out and "domain_kid" in out and "domain_precision" in out and "domain_is" in out
    last = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "eval" and last["samples_n"] == 200
    assert main(["eval", str(tiny_run), "--metrics", "fid", "--samples", str(tmp_path / "nope.npz")]) == 2
    assert main(["eval", str(tiny_run), "--metrics", "sharpness"]) == 2


def test_fid_every_during_training(cache, tmp_path):
    run = tmp_path / "run"
    genlab.train("ddpm", out=run, steps=4, fid_every=2, fid_n=40, **TINY_DDPM)
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rec if "domain_fd" in r]
    assert steps == [2, 4]
    assert (run / "figures" / "fid.png").is_file()


def test_the_mnist_table_code_on_tiny_digits_runs(cache, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist_table.py"
    args = [sys.executable, str(script), "--dataset", "digits", "--image-size", "8", "--steps", "2", "--n", "100",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]
    first = subprocess.run(args + ["--rows", "made,inpaint-gan"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(args + ["--rows", "made,ncsn:cs446"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {r["family"]: r for r in table["rows"]}
    assert [r["family"] for r in table["rows"]] == ["made", "inpaint-gan", "ncsn"]  # pieces kept, in table order
    text = rows["ncsn"]
    assert text["preset"] == "cs446" and 0 <= text["near_5pct"] <= 1 and "--dataset" not in text["command"]
    assert rows["made"]["run_wall_s"] == 0 and rows["inpaint-gan"]["run_wall_s"] > 0  # a finished run is not retrained
    floor = table["floors"]["8"]
    assert 0 < floor["test"]["fd"] < floor["test_binarised"]["fd"]  # grey test images are nearer the grey train split
    made = rows["made"]
    assert made["binarised"] and made["nll_unit"] == "nats" and made["nll_n"] == 300 and made["steps"] == 2
    binary = floor["test_binarised"]["fd"]
    assert made["fd"] > binary and made["fd_over_floor"] == round(made["fd"] / binary, 2)  # read against its floor
    assert len(made["class_shares"]) == 10 and abs(sum(made["class_shares"]) - 1) < 1e-6
    assert made["command"] == "genlab train made --preset mnist --dataset digits --steps 2 --image-size 8"
    hole = rows["inpaint-gan"]
    assert hole["outside_changed"] == 0 and hole["hole_mse"] > 0 and "fd" not in hole
    md = (tmp_path / "table.md").read_text()
    (tmp_path / "table.md").unlink()
    redraw = subprocess.run(args + ["--markdown-only"], capture_output=True, text=True, timeout=600)
    assert redraw.returncode == 0 and (tmp_path / "table.md").read_text() == md
    assert md.count("\n") == 2 + 2 + 3 and "on the strokes" in md and "`made --preset mnist`" in md and "box MSE" in md


def test_sampler_table_steps_are_what_sample_takes_by_default():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sampler_table import default_steps

    from genlab import ddpm, score

    small = ddpm.build(ddpm.Config(time_steps=20, dim=4, dim_mults=[1], num_res_blocks=1, attn_levels=0), (1, 8, 8))
    large = ddpm.build(ddpm.Config(time_steps=200, dim=4, dim_mults=[1], num_res_blocks=1, attn_levels=0), (1, 8, 8))
    ncsn = score.build(score.Config(sigma_max=1.0, langevin_steps=7, dim=4, dim_mults=[1], attn_levels=0), (1, 8, 8))
    assert [default_steps(small, s) for s in ("ancestral", "ddim")] == [20, 20]
    assert [default_steps(large, s) for s in ("ancestral", "dpmpp_2m")] == [200, 50]
    assert [default_steps(ncsn, s) for s in ("langevin", "heun")] == [7, 50]
