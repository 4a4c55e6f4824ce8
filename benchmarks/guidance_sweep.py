"""Classifier-free guidance of a class-conditional run: accuracy and distance over the guidance weight.

For each weight w of the sweep: n samples, every class in turn, drawn with one sampler; the share the
domain classifier (the offline one behind `--features domain`) labels as the requested class, and the
domain Frechet distance of all of them to the training split. One JSON line per weight, a figure of
both against w, and the test-versus-train distance at the same n as the floor.

    python benchmarks/guidance_sweep.py RUN [--n 1000] [--weights 0,1,2,4] [--sampler dpmpp_2m:20] [--figure F.png]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import genlab
from genlab import metrics
from genlab.evaluation import Features, reference_features
from genlab.runs import prepare_data
from genlab.sampling import parse_sampler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--weights", default="0,1,2,4")
    p.add_argument("--sampler", default="dpmpp_2m:20", help="NAME or NAME:STEPS (default: dpmpp_2m:20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--figure", help="write accuracy and distance against the weight here (.png)")
    a = p.parse_args()
    from genlab.device import resolve_device

    device = str(resolve_device(a.device))
    model = genlab.load(a.run, device=device)
    if not getattr(model, "num_classes", 0):
        raise SystemExit(f"{a.run} is not class-conditional (train with --cond class)")
    data = prepare_data(model.config)
    features = Features("domain", data, device, print)
    real = reference_features(features, data, 10000)
    stats = metrics.feature_stats(real)
    f_test, _ = features(data.floats("test")[: a.n])
    floor = metrics.frechet_distance(*metrics.feature_stats(f_test), *stats)
    print(json.dumps({"benchmark": "guidance_sweep", "run": a.run, "n": a.n, "floor_domain_fd": round(floor, 3)}))
    kwargs = parse_sampler(a.sampler, model.samplers)
    wanted = torch.arange(a.n) % model.num_classes
    rows = []
    for w in (float(v) for v in a.weights.split(",")):
        t0 = time.perf_counter()
        x = genlab.sample(model, a.n, seed=0, classes=wanted, guidance=w, **kwargs).cpu()
        wall = time.perf_counter() - t0
        f, probs = features(x)
        row = {"guidance": w, "accuracy": round(float((probs.argmax(1) == wanted.numpy()).mean()), 4),
               "domain_fd": round(metrics.frechet_distance(*metrics.feature_stats(f), *stats), 3),
               "wall_s": round(wall, 1), "sampler": a.sampler}
        rows.append(row)
        print(json.dumps({"benchmark": "guidance_sweep", **row}), flush=True)
    if a.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ws = [r["guidance"] for r in rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
        ax.plot(ws, [100 * r["accuracy"] for r in rows], "o-", color="C0")
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel("samples of the requested class (%)", color="C0")
        ax2 = ax.twinx()
        ax2.plot(ws, [r["domain_fd"] for r in rows], "s--", color="C3")
        ax2.axhline(floor, color="C3", lw=0.8, ls=":")
        ax2.set_ylabel(f"domain FD (n = {a.n}; dotted: test images)", color="C3")
        ax.set_title(f"classifier-free guidance, {a.sampler}")
        fig.savefig(a.figure, dpi=110)
    print(np.array([[r["guidance"], r["accuracy"], r["domain_fd"]] for r in rows]))


if __name__ == "__main__":
    main()
