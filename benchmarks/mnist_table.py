"""Every family on MNIST, each trained from its committed preset and measured the same way: one table.

For each row: train `genlab train FAMILY --preset PRESET` into RUNS/FAMILY-PRESET (a finished run there is
measured again without retraining, an unfinished one resumed), then measure
- the likelihood where the family has one: exact (made, flow) or a bound (vae: importance-weighted,
  ddpm: the variational bound), in nats for binarised families and bits/dim for 8-bit ones;
- n samples against the training split with the domain features (the offline MNIST classifier behind
  `genlab eval --features domain`): Frechet distance, KID, precision, recall, and the share of each class
  as the classifier labels them (the largest deviation from the training set's shares is the class gap);
- cyclegan (MNIST to its inversion) the mean absolute error of G(x) to 1 - x on the test set,
  inpaint-gan the mean squared error inside a centred box of the test images, against the training mean,
  and the ncsn of seed 002's CS446 points the share of n samples within 5% of the text's height of the
  strokes and the largest gap between a character's share of them and its share of the ink;
- the training time (stage 1 included) and the device.
The floor rows are the test set measured like the samples (and binarised, for the binarised families),
so a distance reads as a multiple of what separates real test images from the training set.
Writes OUT/table.json and OUT/table.md and prints one JSON line per row.

    python benchmarks/mnist_table.py [--rows ddpm,vae,gan:mnist-dcgan,...] [--gpu] [--runs DIR] [--n 10000]
        [--data-dir DIR] [--device auto] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import genlab
from genlab import presets
from genlab.data import binarize_fixed
from genlab.device import resolve_device
from genlab.errors import GenlabError
from genlab.evaluation import Features, reference_features
from genlab.runs import is_finished, prepare_data
from genlab.trainer import read_metrics
from sampler_table import measure
from tables import emit, train_seconds


@dataclass
class Row:
    family: str
    preset: str = "mnist"
    sampler: str | None = None  # SAMPLER:STEPS for the sample metrics; None: the family's own sampling
    nll_n: int | str | None = None  # test examples for the likelihood (0: all; "run": the run's own); None: none


# the ddpm bound costs T = 1000 network passes per test example (about 2.6 minutes per 100 on two cores): the
# number of its own end of run (--final-eval-n in the preset), not computed again. The ddpm and ncsn rows sample
# with DPM-Solver++(2M) SDE on 20 levels: for the CPU ddpm it is nearer the data than ancestral sampling on all
# 1000 levels (FD of 1,000 samples 24.3 against 28.7; the ODE form of the same solver 47.9), and for the MNIST
# ncsn within 1% of its own annealed Langevin at a fiftieth of the cost (89.0 against 88.1; README). The ldm's
# latent model samples better ancestrally on 50 levels (31.6 against 38.0 for DPM-Solver++(2M) SDE on 20).
ROWS = [Row("ddpm", sampler="dpmpp_2m_sde:20", nll_n="run"), Row("ldm", sampler="ancestral:50"),
        Row("ncsn", sampler="dpmpp_2m_sde:20"), Row("vae", nll_n=0), Row("made", nll_n=0), Row("flow", nll_n=0),
        Row("gan"), Row("gan", "mnist-dcgan"), Row("cyclegan"), Row("inpaint-gan"), Row("ncsn", "cs446")]
OWN_MEASURE = {"cyclegan", "inpaint-gan"}  # they translate or complete images rather than sample them


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class Judge:
    """The domain features of one image size, the training split's reference features and class shares, and
    the floors: n test images (and the same drawn binary, as the binarised families see them) measured like
    samples."""

    def __init__(self, dataset: str, data_dir: str | None, size: int, n: int, device: str):
        grey = prepare_data(genlab.make_config("ddpm", dataset=dataset, data_dir=data_dir, image_size=size))
        self.features = Features("domain", grey, device, print)
        self.real = reference_features(self.features, grey, 10000)
        self.want = np.bincount(grey.train_labels.numpy(), minlength=len(grey.classes)) / len(grey.train_labels)
        test = grey.floats("test")[:n]
        # the binarised families learn x ~ Bernoulli(pixel) and are scored on binarize_fixed's test split: their
        # floor is that split (rounding instead, a cleaner image than any Bernoulli draw, halves the floor)
        binary = binarize_fixed(grey.test[:n]).float() / 255
        self.floors = {"test": self(test), "test_binarised": self(binary)}
        print(json.dumps({"benchmark": "mnist_table", "size": size, "floors": self.floors,
                          "domain_accuracy": self.features.accuracy}), flush=True)

    def __call__(self, x: torch.Tensor) -> dict:
        return sample_measures(x, self.features, self.real, self.want)


def sample_measures(x: torch.Tensor, features: Features, real: np.ndarray, want: np.ndarray) -> dict:
    m = measure(x, features, real, want, detail=True)
    return {"fd": m.pop("domain_fd"), "kid": m.pop("domain_kid"), **m}


def likelihood(run: Path, model, n: int) -> dict:
    """The run's own final test record when it measured the same examples (or n is "run"), else
    `genlab eval --metrics nll` on n test examples."""
    final = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "test" and "nll_nats" in r]
    if n == "run":
        if not final:
            return {}
        rec = final[-1]
    elif final and final[-1].get("nll_n") == (n or len(prepare_data(model.config).test)) \
            and not final[-1].get("quick_end"):
        rec = final[-1]
    else:
        rec = genlab.evaluate(run, metrics=("nll",), n=n, device=str(model.device), log=False)
    if model.config.data.binarize:
        return {"nll": round(rec["nll_nats"], 2), "nll_unit": "nats", "nll_n": rec["nll_n"]}
    return {"nll": round(rec["bpd"], 4), "nll_unit": "bits/dim", "nll_n": rec["nll_n"]}


@torch.no_grad()
def own_measure(family: str, model, data) -> dict:
    x = data.floats("test").to(model.device)
    if family == "cyclegan":
        fake = torch.cat([model.translate(c) for c in x.split(500)])
        return {"translation_mae": round(float((fake - (1 - x)).abs().mean()), 4),
                "identity_mae": round(float((x - (1 - x)).abs().mean()), 4)}
    H, W = x.shape[-2:]
    m = torch.zeros_like(x[:1])
    m[..., H // 4: H // 4 + H // 2, W // 4: W // 4 + W // 2] = 1  # a centred box of half the side
    done = torch.cat([model.inpaint(c, m.expand_as(c)) for c in x.split(500)])
    mean = data.floats("train").mean(0, keepdim=True).to(x.device)
    inside = m.sum() * len(x)
    return {"hole_mse": round(float(((done - x) * m).pow(2).sum() / inside), 4),
            "hole_mse_train_mean": round(float(((mean - x) * m).pow(2).sum() / inside), 4),
            "outside_changed": int(((done - x) * (1 - m)).abs().gt(0).sum())}


def text_measure(model, data, n: int) -> dict:
    """n samples of a text:STRING model: the share within 5% of the text's height of a training point (the
    strokes), and the largest gap between a character's share of those samples and its share of the ink."""
    from genlab.score import mode_coverage

    height = float(data.train[:, 1].max() - data.train[:, 1].min())
    x = genlab.sample(model, n, seed=0).float().cpu()
    cover = mode_coverage(x, data, radius=0.05 * height)
    return {"near_5pct": round(cover["near"], 4), "char_share_gap": round(cover.get("share_error", 1.0), 4),
            "sampler": "langevin"}


def command(row: Row, data_dir: str | None, overrides: dict) -> str:
    extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    return (f"genlab train {row.family} --preset {row.preset}" + (f" --data-dir {data_dir}" if data_dir else "")
            + extra)


def train_or_reuse(row: Row, run: Path, data_dir, device: str, overrides: dict) -> float:
    """Wall seconds spent training now (0 when the run was already finished)."""
    t0 = time.perf_counter()
    if run.is_dir():
        try:
            if is_finished(run, genlab.load(run).step):
                return 0.0
        except GenlabError:  # stopped before its first checkpoint: resume trains it from step 0
            pass
        genlab.train(resume=run)
    else:
        genlab.train(row.family, preset=row.preset, out=run, data_dir=data_dir, device=device, progress=False,
                     **overrides)
    return time.perf_counter() - t0


def parse_rows(text: str | None, gpu: bool) -> list[Row]:
    rows = ROWS
    if text:
        picked = []
        for item in text.split(","):
            family, _, preset = item.strip().partition(":")
            match = [r for r in ROWS if r.family == family and (not preset or r.preset == preset)]
            picked += match or [Row(family, preset or "mnist")]
        rows = picked
    if gpu:  # the GPU recipe where there is one
        rows = [Row(r.family, f"{r.preset}-gpu", r.sampler, r.nll_n) if f"{r.preset}-gpu" in presets.available(r.family)
                else r for r in rows]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", help="comma-separated FAMILY[:PRESET]; a family alone: all its rows (gan: both)"
                                  " (default: every row)")
    p.add_argument("--gpu", action="store_true", help="use each family's PRESET-gpu recipe where it has one")
    p.add_argument("--runs", default="runs/mnist-table", help="where the runs are trained (or found)")
    p.add_argument("--n", type=int, default=10000, help="samples (and test images of the floor) per distance")
    p.add_argument("--data-dir", default=None, help="the folder holding mnist/ (default: $GENLAB_DATA, the cache)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="where table.json and table.md go (default: the runs folder)")
    p.add_argument("--dataset", default="mnist", help="another data set for a quick check of the table code")
    p.add_argument("--steps", type=int, default=0, help="train every row for this many steps (0: the preset's)")
    p.add_argument("--image-size", type=int, default=0, help="train every row at this size (0: the preset's)")
    p.add_argument("--markdown-only", action="store_true", help="only rewrite OUT/table.md from OUT/table.json")
    a = p.parse_args()
    if a.markdown_only:
        table = json.loads((Path(a.out or a.runs) / "table.json").read_text())
        emit(*markdown(table["rows"], table["floors"], table["n"]), str(Path(a.out or a.runs) / "table.md"))
        return
    device = resolve_device(a.device)
    root, out = Path(a.runs), Path(a.out or a.runs)
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in (("dataset", a.dataset if a.dataset != "mnist" else None),
                                   ("steps", a.steps or None), ("image_size", a.image_size or None))
                 if v is not None}

    judges: dict[tuple, Judge] = {}
    for row in parse_rows(a.rows, a.gpu):
        run = root / f"{row.family}-{row.preset}"
        on_mnist = presets.values(row.family, row.preset).get("data", {}).get("dataset") == "mnist"
        own = {k: v for k, v in overrides.items() if on_mnist or k == "steps"}  # the quick check's data replace MNIST
        wall = train_or_reuse(row, run, a.data_dir, a.device, own)
        model = genlab.load(run, device=str(device))
        data = prepare_data(model.config)
        result = {"family": row.family, "preset": row.preset, "command": command(row, a.data_dir, own),
                  "device": machine(device), "train_s": round(train_seconds(run), 1), "run_wall_s": round(wall, 1),
                  "steps": model.step, "binarised": bool(model.config.data.binarize)}
        if row.nll_n is not None:
            result.update(likelihood(run, model, row.nll_n))
        if data.kind == "points":
            result.update(text_measure(model, data, a.n))
        elif row.family in OWN_MEASURE:
            result.update(own_measure(row.family, model, data))
        else:
            if data.shape not in judges:  # features, reference and floors of this image size, once
                judges[data.shape] = Judge(a.dataset, a.data_dir, data.shape[-1], a.n, str(device))
            judge = judges[data.shape]
            name, _, steps = (row.sampler or "").partition(":")
            kwargs = {"sampler": name, "steps": int(steps)} if name else {}
            t0 = time.perf_counter()
            x = genlab.sample(model, a.n, seed=0, **kwargs).float().cpu()
            result.update(sampler=row.sampler or "own", sample_ms_per_image=round(1000 * (time.perf_counter() - t0)
                                                                                   / a.n, 2))
            result.update(judge(x), size=data.shape[-1])
            floor = judge.floors["test_binarised" if result["binarised"] else "test"]["fd"]
            result["fd_over_floor"] = round(result["fd"] / floor, 2)
        print(json.dumps({"benchmark": "mnist_table", "n": a.n, **result}), flush=True)
        write_tables(out, a.n, result, {str(size[-1]): judge.floors for size, judge in judges.items()})


def write_tables(out: Path, n: int, result: dict, floors: dict) -> None:
    """Add one row to OUT/table.json (replacing that preset's earlier row; rows of other invocations with the
    same n are kept, so the table can be built in pieces) and rewrite OUT/table.md from it."""
    path = out / "table.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    if table.get("n") != n:
        table = {"n": n, "floors": {}, "rows": []}
    table["floors"].update(floors)
    rows = [r for r in table["rows"] if (r["family"], r["preset"]) != (result["family"], result["preset"])]
    table["rows"] = sorted(rows + [result], key=order)
    tmp = path.with_name(".table.json.tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
    emit(*markdown(table["rows"], table["floors"], n), str(out / "table.md"))


def order(result: dict) -> int:
    keys = [(r.family, r.preset.removesuffix("-gpu")) for r in ROWS]
    key = (result["family"], result["preset"].removesuffix("-gpu"))
    return keys.index(key) if key in keys else len(keys)


def markdown(results: list[dict], floors: dict, n: int) -> tuple[list[str], list[list]]:
    header = ["model", "likelihood", f"domain FD (n = {n})", "FD / floor", "KID", "precision", "recall",
              "class gap", "class shares", "other", "training", "sampler"]

    def shares(r):
        return f"{100 * min(r['class_shares']):.1f}-{100 * max(r['class_shares']):.1f}%" if "class_shares" in r else ""

    rows = [[f"test images{' (binarised)' if k == 'test_binarised' else ''}, {size}x{size}", "", f["fd"], "1",
             f["kid"], f["precision"], f["recall"], f["class_gap"], shares(f), "", "", ""]
            for size, by_kind in floors.items() for k, f in by_kind.items()]
    for r in results:
        like = f"{r['nll']} {r['nll_unit']}" + ("" if r["nll_n"] == 10000 else f" ({r['nll_n']} images)") \
            if "nll" in r else ""
        other = (f"G(x) vs 1 - x: MAE {r['translation_mae']} (identity {r['identity_mae']})" if "translation_mae" in r
                 else f"box MSE {r['hole_mse']} (training mean {r['hole_mse_train_mean']})" if "hole_mse" in r
                 else f"{100 * r['near_5pct']:.1f}% on the strokes, character shares within "
                      f"{100 * r['char_share_gap']:.1f} points" if "near_5pct" in r else "")
        rows.append([f"`{r['family']} --preset {r['preset']}`", like, r.get("fd", ""), r.get("fd_over_floor", ""),
                     r.get("kid", ""), r.get("precision", ""), r.get("recall", ""), r.get("class_gap", ""), shares(r),
                     other,
                     f"{r['train_s'] / 60:.1f} min, {r['steps']} steps", r.get("sampler", "")])
    return header, rows


if __name__ == "__main__":
    main()
