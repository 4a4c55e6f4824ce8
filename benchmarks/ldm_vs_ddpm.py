"""Latent against pixel diffusion at the same U-Net width and the same wall-clock training time.

Both models get about --minutes of training each, the ldm's autoencoder (stage 1) and the encoding of the
data set included in its share. A short probe run of each first measures its rates, which set the steps.
Then, for each: training img/s of the diffusion network, sampling ms per image (the same sampler and steps
for both, batches of 250), and with the domain features of the data set (the offline classifier behind
`genlab eval --features domain`) the Frechet distance, KID and largest class-share gap of n samples against
the training split. The first row is the floor: n test images measured the same way. JSON lines, then a table.

    python benchmarks/ldm_vs_ddpm.py [--dataset fashion-mnist] [--minutes 15] [--n 10000] \
        [--sampler dpmpp_2m:20] [--runs DIR] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import genlab
from genlab.evaluation import Features, reference_features
from genlab.runs import prepare_data
from genlab.trainer import read_metrics
from sampler_table import measure
from tables import emit, train_seconds

# the U-Net and diffusion of the README's MNIST DDPM, for pixels and for latents alike
DIFFUSION = ["model.time_steps=1000", "model.dim=16", "model.dim_mults=[1,2,2]", "model.num_res_blocks=1",
             "model.attn_levels=1", "model.loss=l2", "model.schedule=cosine"]
# no sample grids during training: at T = 1000 each grid of the pixel model is minutes of ancestral sampling
TRAIN = dict(batch_size=128, lr=2e-3, ema_decay=0.999, progress=False, final_eval_n=16, log_every=50,
             sample_every=10 ** 9)
AUTOENCODER = ["model.ae_steps={ae_steps}", "model.ae_batch_size=64"]


def rate(path: Path) -> float:
    """Training img/s of a run's last logged interval."""
    return [r for r in read_metrics(path) if r["split"] == "train"][-1]["img_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--minutes", type=float, default=15.0, help="training time of each model")
    p.add_argument("--ae-steps", type=int, default=1500, help="autoencoder steps (batch 64)")
    p.add_argument("--n", type=int, default=10000, help="samples for the distances")
    p.add_argument("--sampler", default="dpmpp_2m:20")
    p.add_argument("--runs", help="where the runs go (default: a temporary folder)")
    p.add_argument("--out", help="also write the table as Markdown here")
    a = p.parse_args()
    root = Path(a.runs or tempfile.mkdtemp(prefix="ldm-vs-ddpm-"))
    budget = 60 * a.minutes
    ae = [s.format(ae_steps=a.ae_steps) for s in AUTOENCODER]
    common = dict(dataset=a.dataset, **TRAIN)

    # probes: 90 steps of each network, the rate of the last 30; stage 1 and stage 2 of the ldm separately
    probe = dict(common, log_every=30)
    genlab.train("ddpm", out=root / "probe-ddpm", steps=90, sets=DIFFUSION, **probe)
    genlab.train("ldm", out=root / "probe-ldm", steps=90, sets=DIFFUSION + ["model.ae_steps=90",
                                                                            "model.ae_batch_size=64"], **probe)
    r_pixel, r_latent = rate(root / "probe-ddpm" / "metrics.jsonl"), rate(root / "probe-ldm" / "metrics.jsonl")
    r_ae = rate(root / "probe-ldm" / "autoencoder" / "metrics.jsonl")
    stage_one = a.ae_steps * 64 / r_ae + 15  # + encoding the data set
    steps = {"ddpm": int(budget * r_pixel / TRAIN["batch_size"]),
             "ldm": int(max(budget - stage_one, 60) * r_latent / TRAIN["batch_size"])}
    print(json.dumps({"benchmark": "ldm_vs_ddpm", "probe_img_per_s": {"ddpm": round(r_pixel, 1),
                      "ldm_stage2": round(r_latent, 1), "ldm_stage1": round(r_ae, 1)}, "steps": steps,
                      "runs": str(root)}), flush=True)

    data = prepare_data(genlab.make_config("ddpm", dataset=a.dataset))
    features = Features("domain", data, "cpu", print)
    real = reference_features(features, data, 10000)
    want = np.bincount(data.train_labels.numpy()) / len(data.train_labels)
    floor = measure(data.floats("test")[: a.n], features, real, want)
    print(json.dumps({"benchmark": "ldm_vs_ddpm", "floor": floor}), flush=True)
    name, _, n_steps = a.sampler.partition(":")
    rows = []
    for family in ("ddpm", "ldm"):
        run = root / family
        t0 = time.perf_counter()
        model = genlab.train(family, out=run, steps=steps[family], sets=DIFFUSION + (ae if family == "ldm" else []),
                             **common)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = genlab.sample(model, a.n, seed=0, sampler=name, steps=int(n_steps), batch_size=250).cpu()
        ms = 1000 * (time.perf_counter() - t0) / a.n
        row = {"model": family, "steps": steps[family], "train_s": round(train_seconds(run), 1),
               "train_img_per_s": round(rate(run / "metrics.jsonl"), 1), "sample_ms_per_image": round(ms, 2),
               "run_wall_s": round(wall, 1), **measure(x, features, real, want)}
        if family == "ldm":
            final = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "test"][-1]
            row.update(ae_psnr=round(final.get("ae_psnr", float("nan")), 2),
                       ae_train_s=round(final.get("ae_elapsed", 0.0), 1))
        rows.append(row)
        print(json.dumps({"benchmark": "ldm_vs_ddpm", "n": a.n, "sampler": a.sampler, **row}), flush=True)
    pixel, latent = rows
    print(json.dumps({"benchmark": "ldm_vs_ddpm", "speedup_train_per_image":
                      round(latent["train_img_per_s"] / pixel["train_img_per_s"], 2),
                      "speedup_sample_per_image": round(pixel["sample_ms_per_image"] / latent["sample_ms_per_image"], 2)}),
          flush=True)
    emit(["model", "training s (stage 1 incl.)", "steps (batch 128)", "training img/s", f"sampling ms/image ({a.sampler})",
          f"domain FD (n = {a.n})", "domain KID", "largest class-share gap"],
         [["test images", "", "", "", "", floor["domain_fd"], floor["domain_kid"], floor["class_gap"]]]
         + [[r["model"], r["train_s"], r["steps"], r["train_img_per_s"], r["sample_ms_per_image"], r["domain_fd"],
             r["domain_kid"], r["class_gap"]] for r in rows], a.out)


if __name__ == "__main__":
    main()
