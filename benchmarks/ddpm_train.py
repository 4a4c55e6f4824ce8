"""DDPM throughput against this machine's convolution ceiling, as one JSON line.

Seed 001's configuration (U-Net dim 16, mults 1,2,4,8, 32x32x3, batch 32, T = 50):
training images/s, the FLOP rate of a training step (counted by torch's FlopCounterMode),
sampling ms per step at batch 16, and, in the same process, the best 3x3-convolution
GFLOP/s (forward + backward) over a few shapes: the ceiling the U-Net's step is measured against.

    python benchmarks/ddpm_train.py [--device cpu|cuda] [--steps 20] [--channels-last 0|1] [--bf16 0|1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from genlab.ddpm import DDPM


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n, device, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def conv_ceiling(device, channels_last: bool, dtype) -> float:
    """Best fwd+bwd GFLOP/s of a 3x3 convolution over shapes like the U-Net's widest layers."""
    best = 0.0
    for b, c, h in [(32, 64, 32), (32, 128, 16), (64, 64, 32), (32, 128, 32)]:
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)
        x = torch.randn(b, c, h, h, device=device, requires_grad=True)
        if channels_last:
            conv = conv.to(memory_format=torch.channels_last)
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                y = conv(x)
            y.backward(torch.ones_like(y))

        flops = 3 * 2 * 9 * c * c * h * h * b
        best = max(best, flops / timed(step, 10, device) / 1e9)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--channels-last", type=int, default=1)
    p.add_argument("--bf16", type=int, default=0)
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    torch.manual_seed(0)

    model = DDPM((3, 32, 32), time_steps=50, dim=16, dim_mults=(1, 2, 4, 8)).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(32, 3, 32, 32, device=device)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batch = (x, torch.zeros(32, dtype=torch.long, device=device))

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=a.bf16 == 1):
            loss = model.loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    with FlopCounterMode(display=False) as counter:
        train_step()
    step_flops = counter.get_total_flops()
    t_train = timed(train_step, a.steps, device)

    model.eval()
    net = model.net
    xs = torch.randn(16, 3, 32, 32, device=device)
    ts = torch.full((16,), 25.0, device=device)
    with torch.no_grad():
        t_sample = timed(lambda: model.diffusion.p_mean_variance(net, xs, ts.long()), a.steps, device)

    ceiling = conv_ceiling(device, bool(a.channels_last), dtype)
    achieved = step_flops / t_train / 1e9
    print(json.dumps({
        "benchmark": "ddpm_train", "device": str(device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "channels_last": a.channels_last,
        "bf16": a.bf16, "config": "dim16 mults1,2,4,8 32x32x3 batch32 T50",
        "train_img_per_s": round(32 / t_train, 1), "train_ms_per_step": round(t_train * 1000, 1),
        "train_gflop_per_step": round(step_flops / 1e9, 2), "train_gflop_per_s": round(achieved, 1),
        "sample_ms_per_step_b16": round(t_sample * 1000, 2),
        "conv3x3_ceiling_gflop_per_s": round(ceiling, 1), "fraction_of_ceiling": round(achieved / ceiling, 3),
    }))


if __name__ == "__main__":
    main()
