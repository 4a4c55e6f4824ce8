"""What makes the loop fit an accelerator, checked on CPU: device names, no host reads inside a step,
data held on the device with the same batches, compiled steps. The CUDA-only checks are marked `cuda`."""

import contextlib
import json
import subprocess
import sys
import traceback

import pytest
import torch

import genlab
from genlab.cli import main
from genlab.device import resolve_device
from genlab.errors import GenlabError

# -- device names ------------------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend this machine has two GPUs (only the queries resolve_device makes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("name,world,rank,want", [
    ("auto", 1, 0, "cuda:0"), ("cuda", 1, 0, "cuda:0"), ("CUDA", 1, 0, "cuda:0"), ("cuda:1", 1, 0, "cuda:1"),
    ("cpu", 1, 0, "cpu"), ("cuda", 2, 1, "cuda:1"), ("auto", 2, 1, "cuda:1"),
])
def test_device_spellings_with_cuda(fake_cuda, name, world, rank, want):
    d = resolve_device(name, world=world, local_rank=rank)
    assert str(d) == want and (d.index is not None) == (d.type == "cuda")  # set_device needs the index


@pytest.mark.parametrize("name", ["cuda:2", "cuda:x", "gpu", "tpu", "cuda:-1"])
def test_bad_devices_are_one_line_errors(fake_cuda, name):
    with pytest.raises(GenlabError):
        resolve_device(name, world=1, local_rank=0)


def test_torchrun_rank_past_the_gpus_is_an_error(fake_cuda):
    with pytest.raises(GenlabError, match="2 CUDA device"):
        resolve_device("cuda", world=4, local_rank=3)
    with pytest.raises(GenlabError, match="one GPU"):  # cuda:N would put every process on GPU N
        resolve_device("cuda:0", world=2, local_rank=1)


def test_without_cuda(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert str(resolve_device("auto")) == "cpu"
    with pytest.raises(GenlabError, match="CUDA is not available"):
        resolve_device("cuda")
    assert main(["train", "ddpm", "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert not (tmp_path / "r").exists()  # nothing half-made


@pytest.mark.parametrize("command", [["sample", "--n", "2"], ["eval", "--metrics", "loss", "--n", "4"],
                                     ["inpaint", "--image", "x.png", "--box", "0,0,2,2"], ["train", "--resume"]])
def test_every_command_honours_device(tiny_run, monkeypatch, capsys, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [command[0], *(["--resume", str(tiny_run)] if command[0] == "train" else [str(tiny_run), *command[1:]])]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# -- no host reads inside a training step -----------------------------------------

TINY = {  # family -> options: every family, a few steps each
    "ddpm": dict(dataset="digits", image_size=8, dim=8, dim_mults=[1, 2], num_res_blocks=1, attn_levels=1,
                 time_steps=10, batch_size=16, ema_decay=0.99),
    "vae": dict(dataset="digits", image_size=8, arch="mlp", hidden=[32], latent_dim=4, batch_size=16, beta_warmup=5,
                ema_decay=0.9),
    "gan": dict(dataset="digits", arch="dcgan", image_size=32, width=4, latent_dim=8, batch_size=8),
    "inpaint-gan": dict(dataset="digits", image_size=16, width=4, depth=2, batch_size=8),
    "cyclegan": dict(dataset="digits", image_size=16, width=4, n_blocks=1, batch_size=4),
    "ncsn": dict(dataset="moons", batch_size=64),
    "made": dict(dataset="digits", image_size=8, binarize=True, hidden=[32], num_masks=2, batch_size=16),
    "flow": dict(dataset="moons", batch_size=64),
    "ldm": dict(dataset="digits", image_size=8, factor=2, ae_steps=4, ae_width=4, ae_batch_size=16, dim=8,
                dim_mults=[1], time_steps=10, num_res_blocks=1, batch_size=16, ema_decay=0.99),
}
READS = ("item", "__float__", "__int__", "__bool__", "tolist")


@contextlib.contextmanager
def counting_reads():
    """Count every read of a tensor's value into Python, with where it came from."""
    seen = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        orig = saved[name]

        def read(self, *a, **k):
            seen.append((name, "".join(traceback.format_stack(limit=6)[:-1])))
            return orig(self, *a, **k)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield seen
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)


@pytest.mark.parametrize("family", list(TINY))
def test_no_host_reads_inside_training_steps(family, tmp_path, monkeypatch):
    from genlab.trainer import Trainer

    steps, log_every = 12, 6
    counts = {}
    fit = Trainer.fit

    def counted_fit(self):
        with counting_reads() as seen:
            fit(self)
        counts["reads"] = seen

    monkeypatch.setattr(Trainer, "fit", counted_fit)
    genlab.train(family, out=tmp_path / "run", steps=steps, log_every=log_every, sample_every=10 ** 6,
                 checkpoint_every=10 ** 6, eval_every=0, progress=False, final_eval_n=8, device="cpu",
                 **TINY[family])
    reads = counts["reads"]
    # one read per log line (the means and the non-finite flags together), one at the end of fit
    allowed = (steps // log_every) + 1
    assert len(reads) <= allowed, f"{len(reads)} reads in {steps} steps:\n" + "\n".join(w for _, w in reads[:3])


# -- data on the device ---------------------------------------------------------------


@pytest.mark.parametrize("dataset,extra", [("digits", {}), ("moons", {}), ("digits", {"two_domains": True})])
def test_device_batches_equal_the_dataloader_batches(dataset, extra):
    from genlab.data import DeviceBatches, EpochBatches, InMemory, load_dataset

    data = load_dataset(dataset, image_size=8)
    if extra.get("two_domains"):
        data.train_b = 255 - data.train
    for start in (0, 3):  # from the start of an epoch and from inside one (a resumed run)
        a, b = EpochBatches(len(data.train), 32, seed=7), EpochBatches(len(data.train), 32, seed=7)
        loader = torch.utils.data.DataLoader(InMemory(data, "train"), batch_sampler=a, collate_fn=lambda x: x)
        device = DeviceBatches(data, b, "cpu")
        for epoch in (0, 1):
            a.set_position(epoch, start)
            b.set_position(epoch, start)
            got, want = list(device), list(loader)
            assert len(got) == len(want) == len(data.train) // 32 - start
            for g, w in zip(got, want):
                assert len(g) == len(w) and all(torch.equal(x, y) for x, y in zip(g, w))


def test_training_is_the_same_with_the_data_on_the_device_or_in_a_loader(tmp_path):
    opts = dict(TINY["ddpm"], steps=6, progress=False, final_eval_n=4, flip=True, device="cpu")
    a = genlab.train("ddpm", out=tmp_path / "device", **opts)
    b = genlab.train("ddpm", out=tmp_path / "loader", device_data_mb=0, **opts)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


def test_ema_warmup_matches_the_closed_form():
    from genlab.trainer import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.9)
    values = [1.0, 2.0, 5.0, -1.0, 3.0]
    want = None
    for n, v in enumerate(values):
        net.weight.data.fill_(v)
        ema.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))  # n updates before this one
        want = v if n == 0 else d * want + (1 - d) * v
        assert ema.module.weight.item() == pytest.approx(want, rel=1e-6)
    restored = EMA(torch.nn.Linear(1, 1, bias=False), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.count == len(values)


# -- compiled steps -------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_training_trains_and_resumes_on_cpu(tmp_path):
    run = tmp_path / "c"
    opts = dict(TINY["ddpm"], steps=4, progress=False, final_eval_n=4, device="cpu", compile=True)
    genlab.train("ddpm", out=run, **opts)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("compile_s" in r for r in records)
    genlab.train(resume=run, steps=6)
    assert genlab.load(run).step == 6


# -- CUDA (run by benchmarks/gpu_check.sh; skipped where there is no GPU) ------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("family", list(TINY))
def test_every_family_trains_samples_evaluates_on_cuda(family, tmp_path):
    run = tmp_path / family
    genlab.train(family, out=run, steps=6, progress=False, final_eval_n=8, **TINY[family])  # device auto
    cfg = genlab.load(run).config
    assert cfg.train.device == "auto"
    assert main(["eval", str(run), "--metrics", "loss", "--n", "16"]) == 0
    if family != "inpaint-gan":
        assert main(["sample", str(run), "--n", "4", "-o", str(tmp_path / "s.npz")]) == 0
    cpu = genlab.load(run, device="cpu")  # a checkpoint written on the GPU loads on the CPU
    assert cpu.device.type == "cpu"


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("family", ["ddpm", "gan", "vae"])
def test_cuda_resume_is_exact(family, tmp_path):
    import shutil

    from test_training import assert_bitwise_equal, final_tensors

    opts = dict(TINY[family], progress=False, final_eval_n=8, deterministic=True, checkpoint_every=5)
    genlab.train(family, out=tmp_path / "a", steps=10, **opts)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000010")  # back to step 5, CUDA RNG state included
    genlab.train(resume=tmp_path / "b")
    assert_bitwise_equal(final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b"))


@pytest.mark.cuda
@cuda
def test_cuda_checkpoint_resumes_on_cpu(tmp_path):
    genlab.train("ddpm", out=tmp_path / "r", steps=4, progress=False, final_eval_n=4, **TINY["ddpm"])
    r = subprocess.run([sys.executable, "-m", "genlab", "train", "--resume", str(tmp_path / "r"), "--steps", "6",
                        "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
