"""What a newcomer meets first: short runs stay short, bad sampling options are refused early,
an interrupted end of run can be completed."""

import json

import pytest

import genlab
from conftest import TINY_DDPM
from genlab.cli import main


def records(run, split="test"):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == split]


def test_a_short_run_evaluates_few_examples_and_full_asks_for_all(tmp_path, capsys):
    genlab.train("ddpm", out=tmp_path / "short", steps=3, **{**TINY_DDPM, "final_eval_n": 1000})
    out = capsys.readouterr().out
    last = records(tmp_path / "short")[-1]
    assert last["test_n"] == 16 and last["nll_n"] == 16  # 5 per step, at least 16
    assert "--final-eval full for all 300" in out and "test pass on 16 of 300" in out and "quick end" in out
    for phase in ("likelihood of 16", "final sample grid of 16", "figures", "curves and report"):
        assert phase in out
    genlab.train("ddpm", out=tmp_path / "full", steps=3, final_eval="full", **TINY_DDPM)
    last = records(tmp_path / "full")[-1]
    assert last["test_n"] == 300 and last["nll_n"] == 300


def test_automatic_grids_are_at_least_100_steps_apart(tmp_path):
    genlab.train("ddpm", out=tmp_path / "r", steps=30, **TINY_DDPM)
    assert sorted(p.name for p in (tmp_path / "r" / "samples").iterdir()) == ["final.png"]


def test_sampling_options_a_family_does_not_take_are_refused(tiny_run, tmp_path, capsys):
    vae = tmp_path / "vae"
    genlab.train("vae", out=vae, steps=2, dataset="digits", image_size=8, arch="mlp", hidden=[16], batch_size=16,
                 progress=False)
    capsys.readouterr()
    assert main(["sample", str(vae), "--sampler", "ddim", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "one way to sample" in err and "ddpm" in err and err.count("\n") == 1
    assert main(["sample", str(tiny_run), "--sampler", "langevin", "--n", "2"]) == 2
    assert "available: ancestral, ddim, euler, heun, dpmpp_2m" in capsys.readouterr().err
    assert main(["sample", str(tiny_run), "--sampler", "ddim", "--steps", "500", "--n", "2"]) == 2
    assert "between 1 and 10 (the model's noise levels)" in capsys.readouterr().err
    assert main(["sample", str(tiny_run), "--sampler", "heun", "--eta", "0.5", "--n", "2"]) == 2
    assert "--eta" in capsys.readouterr().err
    assert main(["sample", str(tiny_run), "--spacing", "cosine", "--n", "2"]) == 2
    assert "--spacing takes one of uniform, leading, trailing, karras, geometric" in capsys.readouterr().err


def test_a_bad_output_name_is_refused_before_sampling(tiny_run, capsys, monkeypatch):
    import genlab.runs

    monkeypatch.setattr(genlab.runs, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    assert main(["sample", str(tiny_run), "-o", "out.jpg"]) == 2
    assert "must end in .png or .npz" in capsys.readouterr().err


def test_inpainting_a_points_model_is_one_line(tmp_path, capsys):
    run = tmp_path / "ncsn"
    genlab.train("ncsn", out=run, steps=2, dataset="moons", num_sigmas=3, langevin_steps=2, batch_size=64,
                 progress=False)
    capsys.readouterr()
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    assert main(["inpaint", str(run), "--image", str(image), "--box", "0,0,2,2"]) == 2
    err = capsys.readouterr().err
    assert "2-D points" in err and err.count("\n") == 1


def test_an_interrupted_end_of_run_is_completed_by_resume(tmp_path, capsys, monkeypatch):
    import genlab.ddpm

    run = tmp_path / "r"
    figures = genlab.ddpm.figures

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(genlab.ddpm, "figures", interrupted)
    flags = ["--dataset", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--num-res-blocks", "1",
             "--attn-levels", "1", "--time-steps", "10", "--batch-size", "16", "--progress", "false"]
    assert main(["train", "ddpm", "--out", str(run), "--steps", "3", *flags]) == 130
    assert "--resume" in capsys.readouterr().err
    assert json.loads((run / "finished.json").read_text())["done"] is False
    monkeypatch.setattr(genlab.ddpm, "figures", figures)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "finished.json").read_text())["done"] and (run / "figures" / "forward.png").is_file()
    assert len([r for r in records(run) if r["step"] == 3]) == 1  # the end's test record once, not twice
    assert main(["train", "--resume", str(run)]) == 2
    assert "already complete" in capsys.readouterr().err


def test_final_eval_full_on_resume_redoes_the_end_in_full(tmp_path, capsys):
    run = tmp_path / "r"
    genlab.train("ddpm", out=run, steps=3, **TINY_DDPM)
    assert json.loads((run / "finished.json").read_text())["final_eval"] == "quick"
    assert main(["train", "--resume", str(run), "--final-eval", "full"]) == 0
    tests = records(run)
    assert len([r for r in tests if r["step"] == 3]) == 1 and tests[-1]["test_n"] == 300  # redone, not repeated
    assert main(["train", "--resume", str(run), "--final-eval", "full"]) == 2
    assert "already complete" in capsys.readouterr().err


def test_sigterm_abandons_a_sample_grid_in_progress(tmp_path, monkeypatch, capsys):
    """A stop signal during a grid drawn in training stops the run at once, with a checkpoint, not after the grid."""
    import os
    import signal
    import time

    from genlab.ddpm import DDPM

    def slow_preview(self, n, generator, data, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the grid is being drawn
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:  # a long sampler
            time.sleep(0.01)
        pytest.fail("the grid was not abandoned")

    monkeypatch.setattr(DDPM, "preview", slow_preview)
    run = tmp_path / "r"
    t0 = time.perf_counter()
    assert main(["train", "ddpm", "--out", str(run), "--steps", "20", "--sample-every", "5",
                 *[f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in TINY_DDPM.items()]]) == 143
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "the sample grid step_00000005 was abandoned" in err and "stopped by SIGTERM at step 5" in err
    assert (run / "checkpoints" / "step_00000005").is_dir() and not (run / "samples" / "step_00000005.png").exists()
