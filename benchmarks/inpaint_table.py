"""Inpainting error of trained runs on the same test images and hole, as JSON lines and a table.

Each run fills a centred box (half the side: 14x14 on MNIST) in the first n test images of its data:
ddpm by RePaint, ncsn by its conditional score, inpaint-gan by its generator. Reported: the mean squared
error inside the box (pixels in [0, 1]), whether every pixel outside the box is unchanged bit for bit,
and the wall time. The floor beside them: the error of filling the box with the training set's mean image.

    python benchmarks/inpaint_table.py RUN [RUN ...] [--n 1000] [--steps 100 --resamplings 5] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import genlab
from genlab.runs import prepare_data
from tables import emit


def centred_box(shape) -> torch.Tensor:
    H, W = shape[-2:]
    m = torch.zeros(1, 1, H, W)
    m[..., H // 4: H // 4 + H // 2, W // 4: W // 4 + W // 2] = 1
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--steps", type=int, help="ddpm: RePaint levels (default: the model's, min(T, 250))")
    p.add_argument("--jump-length", type=int)
    p.add_argument("--resamplings", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the table as Markdown here")
    a = p.parse_args()
    from genlab.device import resolve_device

    device = str(resolve_device(a.device))
    rows = []
    for run in a.runs:
        model = genlab.load(run, device=device)
        data = prepare_data(model.config)
        x = data.floats("test")[: a.n]
        m = centred_box(x.shape)
        if not rows:
            mean = data.floats("train").mean(0, keepdim=True)
            rows.append({"run": "training mean image", "family": "-", "mse_in_box": round(
                float(((mean - x) ** 2 * m).sum() / (m.sum() * len(x) * x.shape[1])), 5), "outside_exact": True,
                "wall_s": 0.0})
        kwargs = {}
        if model.config.family == "ddpm":
            kwargs = {k: v for k, v in (("steps", a.steps), ("jump_length", a.jump_length),
                                        ("resamplings", a.resamplings)) if v is not None}
        g = torch.Generator(device).manual_seed(0)
        t0 = time.perf_counter()
        done = torch.cat([model.inpaint(chunk.to(device), m.to(device).expand(len(chunk), 1, *m.shape[-2:]),
                                        generator=g, **kwargs).cpu() for chunk in x.split(a.batch_size)])
        wall = time.perf_counter() - t0
        outside = (m == 0).expand_as(x)
        row = {"run": run, "family": model.config.family,
               "mse_in_box": round(float(((done - x) ** 2 * m).sum() / (m.sum() * len(x) * x.shape[1])), 5),
               "outside_exact": bool(torch.equal(done[outside], x[outside])), "wall_s": round(wall, 1), **kwargs}
        rows.append(row)
        print(json.dumps({"benchmark": "inpaint_table", "n": a.n, **row}), flush=True)
    emit(["run", "family", f"MSE inside the box (n = {a.n})", "outside unchanged", f"wall s ({device})"],
         [[r["run"], r["family"], r["mse_in_box"], r["outside_exact"], r["wall_s"]] for r in rows], a.out)

if __name__ == "__main__":
    main()
