"""Training throughput of the real `genlab train` loop (data, EMA, logging), as one JSON line.

Seed 001's DDPM (U-Net dim 16, mults 1,2,4,8, T = 50, 32x32x3 digits) by default; the
figure is the median img/s of the loop's own log lines after the first (which holds
start-up and, with --compile, the compile). With --bare 1 the same network's bare
training step (eps-MSE, fused Adam, nothing else) is timed in the same process as the
ceiling the loop is read against.

    python benchmarks/train_loop.py [--device cpu|cuda] [--batch-size 32] [--steps 200] [--compile 0|1] [--bare 0|1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import genlab
import genlab.runs
from genlab.trainer import read_metrics

SEED_DDPM = dict(dataset="digits", image_size=32, channels=3, dim=16, dim_mults=[1, 2, 4, 8], time_steps=50,
                 ema_decay=0.999)


def loop_img_per_s(device: str, batch_size: int, steps: int, compile_: bool, log_every: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        opts = dict(SEED_DDPM, batch_size=batch_size, steps=steps, log_every=log_every, sample_every=10 ** 9,
                    checkpoint_every=10 ** 9, final_eval_n=1, progress=False, device=device)
        if compile_:
            opts["compile"] = True
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON line alone
            genlab.runs.finish = lambda trainer: None  # the loop alone: no end-of-run evaluation and figures
            genlab.train("ddpm", out=run, **opts)
        train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    rates = [r["img_per_s"] for r in train[1:]] or [train[0]["img_per_s"]]
    return statistics.median(rates), {k: train[0][k] for k in ("compile_s",) if k in train[0]}


def bare_img_per_s(device: torch.device, batch_size: int, steps: int, compile_: bool) -> float:
    """The network's training step alone: the ceiling of the loop at this batch size."""
    from genlab import ddpm
    from genlab.config import update

    torch.manual_seed(0)
    cfg = update(ddpm.Config(), {k: v for k, v in SEED_DDPM.items() if k in ddpm.Config.__dataclass_fields__})
    net = ddpm.build(cfg, (3, 32, 32)).net.to(device)  # the loop's network, exactly
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    t = torch.randint(0, 50, (batch_size,), device=device).float()
    eps = torch.randn_like(x)
    if compile_:
        net.compile(mode="reduce-overhead" if device.type == "cuda" else "default")

    def step():
        if compile_ and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = (net(x, t) - eps).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--compile", type=int, default=0)
    p.add_argument("--bare", type=int, default=0)
    a = p.parse_args()
    rate, extra = loop_img_per_s(a.device, a.batch_size, a.steps, bool(a.compile), a.log_every)
    out = {"benchmark": "train_loop", "device": a.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "config": f"ddpm seed dim16 mults1,2,4,8 32x32x3 T50 batch{a.batch_size}",
           "compile": a.compile, "steps": a.steps, "loop_img_per_s": round(rate, 1), **extra}
    if a.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    if a.bare:
        bare = bare_img_per_s(torch.device("cuda:0" if a.device == "cuda" else a.device), a.batch_size,
                              max(20, a.steps // 4), bool(a.compile))
        out["bare_step_img_per_s"] = round(bare, 1)
        out["loop_over_bare"] = round(rate / bare, 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
