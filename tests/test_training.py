"""The training loop end to end: run directory, API, sampling, exact resume, signals, non-finite loss, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import genlab
from conftest import TINY_DDPM
from genlab.cli import main


def tiny_flags(**extra):
    opts = {**TINY_DDPM, **extra}
    flags = []
    for k, v in opts.items():
        flags += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return flags


def genlab_cmd(*args):
    return [sys.executable, "-m", "genlab", *args]


def test_run_directory_layout(tiny_run):
    for name in ("config.yaml", "metrics.jsonl", "report.html"):
        assert (tiny_run / name).is_file()
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["family"] == "ddpm" and cfg["model"]["time_steps"] == 10 and cfg["train"]["steps"] == 8
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r and r["split"] in ("train", "test", "eval") for r in records)
    test = [r for r in records if r["split"] == "test"][-1]
    assert test["step"] == 8 and np.isfinite(test["loss"]) and 0 < test["bpd"] < 20
    ckpt = sorted((tiny_run / "checkpoints").iterdir())[-1]
    assert ckpt.name == "step_00000008"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "ema.safetensors", "optim_main.safetensors",
                                                 "rng.safetensors", "meta.json"}
    assert (tiny_run / "samples" / "final.png").is_file()
    figures = {p.name for p in (tiny_run / "figures").iterdir()}
    assert {"forward.png", "backward.png", "strip.png", "loss.png"} <= figures


def test_figures_have_the_seed_layout(tiny_run):
    from PIL import Image

    # forward/backward: 8 images x 5 fractions of T; strip: 4 samples x 6 time steps
    for name in ("forward.png", "backward.png", "strip.png"):
        w, h = Image.open(tiny_run / "figures" / name).size
        assert w > 300 and h > 200
    html = (tiny_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "time_steps" in html


def test_load_and_sample(tiny_run):
    model = genlab.load(tiny_run)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    y = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)  # a generator makes sampling reproducible
    z = model.sample(3, sampler="ddim", steps=4)
    assert z.shape == (3, 1, 8, 8)


def test_sample_cli_png_and_npz(tiny_run, tmp_path):
    assert main(["sample", str(tiny_run), "--n", "6", "-o", str(tmp_path / "s.npz"), "--device", "cpu"]) == 0
    s = np.load(tmp_path / "s.npz")["samples"]
    assert s.shape == (6, 1, 8, 8) and s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1
    assert main(["sample", str(tiny_run), "--n", "4", "--sampler", "ddim", "--steps", "3",
                 "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100


def test_eval_cli_appends_to_metrics(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--metrics", "loss,nll", "--n", "10"]) == 0
    assert "bpd" in capsys.readouterr().out
    last = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "eval" and last["nll_n"] == 10


def test_config_yaml_rebuilds_the_run(tiny_run, tmp_path):
    a = genlab.train(config=tiny_run / "config.yaml", out=tmp_path / "again")
    b = genlab.load(tiny_run)
    for (k, v), (k2, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, w), k


def wait_for_checkpoint(run: Path, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "checkpoints").is_dir() and any(p.name.startswith("step_") for p in (run / "checkpoints").iterdir()):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise TimeoutError


def final_tensors(run: Path) -> dict:
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    return {f.stem: load_file(str(f)) for f in ckpt.glob("*.safetensors")}


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}/{k}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "a"
    args = tiny_flags(steps=80, checkpoint_every=10, sample_every=40, flip="true")
    subprocess.run(genlab_cmd("train", "ddpm", "--out", str(out), *args), check=True, capture_output=True, timeout=600)
    return out, args


# SIGTERM's stop-and-save is also covered in make test by test_sigterm_abandons_a_sample_grid_in_progress
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(uninterrupted, tmp_path, sig):
    ref, args = uninterrupted
    run = tmp_path / "b"
    proc = subprocess.Popen(genlab_cmd("train", "ddpm", "--out", str(run), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 143 and "stopped by SIGTERM" in err and "--resume" in err
    steps = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))
    assert steps and steps[-1] < 80  # stopped mid-run
    r = subprocess.run(genlab_cmd("train", "--resume", str(run)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(final_tensors(ref), final_tensors(run))
    train_steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["split"] == "train"]
    assert train_steps == sorted(set(train_steps))  # no step logged twice after the resume


def test_resume_can_extend_a_finished_run(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "ext"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", str(run)]) == 2
    assert "already complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "10"]) == 0
    assert genlab.load(run).step == 10
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2


@pytest.mark.parametrize("log_every,checkpoint_every", [(50, 1), (10, 100)])
def test_non_finite_loss_stops_with_a_clear_message(tmp_path, capsys, log_every, checkpoint_every):
    # found on the device without a per-step read; reported with the step it happened at, before any save
    code = main(["train", "ddpm", "--out", str(tmp_path / "nan"), *tiny_flags(steps=200, lr=1e8, grad_clip=0,
                                                                               checkpoint_every=checkpoint_every,
                                                                               log_every=log_every)])
    err = capsys.readouterr().err
    assert code == 1
    assert "loss of optimizer 'main' is not finite" in err and "Traceback" not in err
    bad_step = int(err.split(" at step ")[1].split(";")[0])
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "nan" / "checkpoints").glob("step_*"))
    if checkpoint_every == 1:
        assert "last good checkpoint" in err and steps and steps[-1] < bad_step
        for sd in final_tensors(tmp_path / "nan").values():
            assert all(torch.isfinite(v.float()).all() for v in sd.values() if v.is_floating_point())
    else:
        assert not steps and "no checkpoint was written yet" in err
    metrics = tmp_path / "nan" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    assert all(r["step"] < bad_step for r in records)  # nothing non-finite was logged


def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    args = tiny_flags(steps=6, batch_size=16, ema_decay=0, final_eval_n=5)
    one = subprocess.run(genlab_cmd("train", "ddpm", "--out", str(tmp_path / "one"), *args),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "genlab", "train", "ddpm", "--out", str(tmp_path / "two"), *args],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = final_tensors(tmp_path / "one")["model"], final_tensors(tmp_path / "two")["model"]
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    # and not trivially: the output layer starts at zero (zero_module) and training moved it
    assert a["net.out.2.weight"].abs().max() > 0


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    steps = sorted((run / "checkpoints").glob("step_*"))
    assert len(steps) == 2
    newest = steps[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated, as by a full disk
    model = genlab.load(run)
    assert model.step == int(steps[0].name[5:])
    assert f"checkpoint {steps[-1].name} is damaged" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "2", "-o", str(tmp_path / "s.npz")]) == 0
    assert main(["train", "--resume", str(run)]) == 0  # from the intact one, to the end again
    assert genlab.load(run).step == 8
    assert (run / "checkpoints" / ".damaged-step_00000008").is_dir()  # set aside, not kept in place of good ones
    # a flipped byte of the same length is found by the checksum
    steps = sorted((run / "checkpoints").glob("step_*"))
    for s in steps:
        data = bytearray((s / "ema.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (s / "ema.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "SHA-256" in err and err.count("\n") == 1


def test_a_bad_number_fails_before_anything_is_written(tmp_path, capsys):
    for value in ("nan", "inf"):
        assert main(["train", "ddpm", "--lr", value, "--steps", "2", "--out", str(tmp_path / "x")]) == 2
        assert "finite" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_setup_failure_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    import genlab.trainer
    from genlab.errors import GenlabError

    def broken(*a, **k):
        raise GenlabError("broken optimizer")

    monkeypatch.setattr(genlab.trainer.Trainer, "__init__", broken)
    assert main(["train", "ddpm", "--steps", "2", "--out", str(tmp_path / "x"), "--progress", "false"]) == 2
    assert "broken optimizer" in capsys.readouterr().err and not (tmp_path / "x").exists()


def train_rows(run: Path) -> list[tuple]:
    """(step, loss, grad_norm) of every training log line: what a resumed run must reproduce exactly."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("grad_norm")) for r in rows if r["split"] == "train"]


# The killed processes write each checkpoint file 50 ms slower (the same bytes), so that a kill can be aimed
# inside a checkpoint write, which takes about a millisecond at this size.
SLOW_WRITES = ("import sys, time, genlab.checkpoint as c; from genlab.cli import main; write = c.save_file; "
               "c.save_file = lambda *a, **k: (write(*a, **k), time.sleep(0.05))[0]; sys.exit(main(sys.argv[1:]))")


def slow_write_cmd(*args):
    return [sys.executable, "-c", SLOW_WRITES, *args]


# Where the 20 kills aim, in order: each waits for its moment in the running process, so the run moves on
# between kills and the last ones find its end-of-run work (which every resume redoes until it is complete).
KILL_AIMS = ["start-up"] * 3 + ["training", "checkpoint write"] * 6 + ["end of run"] * 5


@pytest.mark.slow
def test_twenty_sigkills_anywhere_and_the_run_is_bit_for_bit_the_uninterrupted_one(tmp_path):
    """SIGKILL at 20 moments of a run (start-up, steps, sample grids and test passes, checkpoint writes and the
    end-of-run work), resuming after each: weights, optimizer state, RNG and logged losses are exactly those
    of the run that was never stopped. Prints where the kills landed, as the run's files tell."""
    # checkpoints at whole log intervals: a run stopped between them would log a partial interval's mean
    args = tiny_flags(steps=150, checkpoint_every=10, log_every=5, sample_every=20, eval_every=25, flip="true")
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(genlab_cmd("train", "ddpm", "--out", str(ref), *args), check=True, capture_output=True, timeout=600)
    duration = time.perf_counter() - t0
    run, hits, rng = tmp_path / "run", [], np.random.default_rng(0)
    for aim in KILL_AIMS:
        if is_done(run):
            break
        started = (run / "config.yaml").is_file()  # resumable, with or without a checkpoint yet
        cmd = slow_write_cmd("train", "--resume", str(run)) if started else \
            slow_write_cmd("train", "ddpm", "--out", str(run), *args)
        logged = log_lines(run)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_for_moment(proc, run, aim, logged, rng):  # ended before its moment came
            proc.communicate()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        hits.append(where_killed(run, logged, proc.pid))
    print(f"{len(hits)} SIGKILLs in {time.perf_counter() - t0 - duration:.0f} s (the run alone: {duration:.0f} s): "
          + "; ".join(f"{h} x{hits.count(h)}" for h in dict.fromkeys(hits)))
    if not is_done(run):
        r = subprocess.run(genlab_cmd("train", "--resume", str(run)), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    assert_bitwise_equal(final_tensors(ref), final_tensors(run))
    assert train_rows(run) == train_rows(ref)
    assert (run / "report.html").is_file() and is_done(run)
    assert len(hits) == 20, hits
    assert {"start-up", "training", "checkpoint write", "end of run"} <= set(hits), hits


def wait_for_moment(proc, run: Path, aim: str, logged: int, rng) -> bool:
    """Wait until the running process reaches a moment of the kind `aim`; False if it ends first."""
    deadline = time.monotonic() + 120
    if aim == "start-up":
        time.sleep(rng.uniform(0.2, 1.5))  # importing, building the model, loading the checkpoint
        return proc.poll() is None
    while proc.poll() is None and time.monotonic() < deadline:
        if aim == "training" and log_lines(run) > logged:
            time.sleep(rng.uniform(0, 0.3))  # somewhere in the steps after its first new log line
            return proc.poll() is None
        if aim == "checkpoint write" and partial_checkpoints(run, proc.pid):
            return True
        if aim == "end of run" and owed_end(run):
            time.sleep(rng.uniform(0, 1.0))
            return proc.poll() is None
        time.sleep(0.002)
    return False


def partial_checkpoints(run: Path, pid: int) -> list[Path]:
    """Checkpoint folders process `pid` is writing (still under their temporary names)."""
    folder = run / "checkpoints"
    return [p for p in folder.iterdir() if p.name.startswith(".tmp-step_") and p.name.endswith(f"-{pid}")] \
        if folder.is_dir() else []


def owed_end(run: Path) -> bool:
    f = run / "finished.json"
    return f.is_file() and not json.loads(f.read_text()).get("done")


def log_lines(run: Path) -> int:
    return len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").is_file() else 0


def where_killed(run: Path, logged_before: int, pid: int) -> str:
    """What a run killed just now was doing, from what it left on disk: "checkpoint write" (a checkpoint folder
    of that process still under its temporary name), "end of run" (the final evaluation and figures begun,
    not done), "training" (steps, sample grids and test passes: it logged since it started) or "start-up"
    (imports, loading, the first steps)."""
    if partial_checkpoints(run, pid):
        return "checkpoint write"
    if owed_end(run):
        return "end of run"
    return "training" if log_lines(run) > logged_before else "start-up"


def checkpoint_dirs(run: Path) -> list[Path]:
    return [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")]


def is_done(run: Path) -> bool:
    f = run / "finished.json"
    return f.is_file() and json.loads(f.read_text()).get("done") is True


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "early"
    shutil.copytree(tiny_run, run)
    for ckpt in checkpoint_dirs(run):  # as left by SIGKILL during the first steps: config and logs, no checkpoint
        shutil.rmtree(ckpt)
    (run / "finished.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert "no intact checkpoint yet: training it from step 0" in capsys.readouterr().err
    assert_bitwise_equal(final_tensors(tiny_run), final_tensors(run))
    assert [r[0] for r in train_rows(run)] == [r[0] for r in train_rows(tiny_run)]  # no row twice


def test_a_run_directory_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """The run directory is made under a temporary name with its config.yaml, then renamed into place: a
    failure (or a kill) while it is being made leaves nothing under the run's name, and nothing else."""
    import genlab.runs
    from genlab.errors import GenlabError

    def full_disk(run_dir, cfg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(genlab.runs, "write_config", full_disk)
    with pytest.raises(GenlabError, match="cannot create the run directory .*No space left on device"):
        genlab.train("ddpm", out=tmp_path / "runs" / "r", steps=1, **TINY_DDPM)
    assert list(tmp_path.iterdir()) == []
