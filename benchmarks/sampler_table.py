"""Sample quality against network evaluations for each sampler on one trained run, as JSON lines and a table.

For every SAMPLER:STEPS of the plan: n samples (seed 0), their wall time, and with the domain features
of the run's data (the offline classifier behind `genlab eval --features domain`) the Frechet distance
and KID to the training split and the largest gap between a class's share of the samples (as the
classifier labels them) and its share of the training set. The first line is the floor: n test images
measured the same way. A class-conditional run is sampled at its default guidance.

    python benchmarks/sampler_table.py RUN [--n 1000] [--plan ancestral,ddim:20,dpmpp_2m:20] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import genlab
from genlab import ddpm, metrics, score
from genlab.evaluation import Features, reference_features
from genlab.runs import prepare_data
from genlab.sampling import nfe
from tables import emit

PLAN = "ancestral,ddim:20,ddim:50,euler:50,heun:10,heun:25,dpmpp_2m:10,dpmpp_2m:20"


def measure(x: torch.Tensor, features: Features, real: np.ndarray, want: np.ndarray, detail: bool = False) -> dict:
    """Domain FD, KID and the largest class-share gap of samples x; with `detail` also precision, recall and
    every class's share."""
    f, probs = features(x)
    shares = np.bincount(probs.argmax(1), minlength=len(want)) / len(x)
    out = {"domain_fd": round(metrics.frechet_distance(*metrics.feature_stats(f), *metrics.feature_stats(real)), 3),
           "domain_kid": round(metrics.kernel_inception_distance(f, real), 5),
           "class_gap": round(float(np.abs(shares - want).max()), 4)}
    if detail:
        precision, recall = metrics.precision_recall(torch.from_numpy(real).float(), torch.from_numpy(f).float())
        out.update(precision=round(precision, 4), recall=round(recall, 4),
                   class_shares=[round(float(s), 4) for s in shares])
    return out


def default_steps(model, sampler: str) -> int:
    """The steps a run's sample() takes for `sampler` when none are given."""
    if sampler == "langevin":
        return model.T  # an ncsn: Langevin steps per noise level
    diffusion = getattr(getattr(model, "latent", model), "diffusion", None)  # a ddpm's (an ldm's latent one)
    if diffusion is None:
        return score.DEFAULT_STEPS  # an ncsn's denoiser samplers
    return diffusion.T if sampler == "ancestral" else min(diffusion.T, ddpm.DEFAULT_STEPS)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--plan", default=PLAN, help=f"comma-separated SAMPLER[:STEPS] (default: {PLAN})")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the table as Markdown here")
    a = p.parse_args()
    from genlab.device import resolve_device

    device = str(resolve_device(a.device))
    model = genlab.load(a.run, device=device)
    data = prepare_data(model.config)
    features = Features("domain", data, device, print)
    real = reference_features(features, data, 10000)
    want = np.bincount(data.train_labels.numpy()) / len(data.train_labels)
    floor = measure(data.floats("test")[: a.n], features, real, want)
    rows = [{"sampler": "test images", "steps": "", "nfe": 0, "wall_s": 0.0, **floor}]
    print(json.dumps({"benchmark": "sampler_table", "run": a.run, "n": a.n, "floor": floor}), flush=True)
    for item in a.plan.split(","):
        name, _, steps = item.partition(":")
        kwargs = {"sampler": name, **({"steps": int(steps)} if steps else {})}
        t0 = time.perf_counter()
        x = genlab.sample(model, a.n, seed=0, **kwargs).cpu()
        wall = time.perf_counter() - t0
        n_steps = int(steps) if steps else default_steps(model, name)
        row = {"sampler": name, "steps": n_steps, "nfe": nfe(name, n_steps, len(getattr(model, "sigmas", ()))), "wall_s": round(wall, 1),
               **measure(x, features, real, want)}
        rows.append(row)
        print(json.dumps({"benchmark": "sampler_table", **row}), flush=True)
    emit(["sampler", "steps", "NFE", f"domain FD (n = {a.n})", "domain KID", "largest class-share gap",
          f"wall s ({device})"],
         [[r["sampler"], r["steps"], r["nfe"], r["domain_fd"], r["domain_kid"], r["class_gap"], r["wall_s"]]
          for r in rows], a.out)

if __name__ == "__main__":
    main()
