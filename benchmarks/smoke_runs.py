"""Wall time of a 3-step run of every family with its default options, start to end, as one JSON line.

A smoke run is the first thing a user does with a new family; with the default options it should be
done in seconds, end-of-run evaluation and figures included. MNIST is used where the files are found
($GENLAB_DATA, --data-dir or ../shared/data/mnist), else each family's default data.

    python benchmarks/smoke_runs.py [--data-dir DIR] [--steps 3] [--only ddpm,flow]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# family -> extra flags on MNIST (None: the family's own default data)
RUNS = {
    "ddpm": [], "vae": [], "gan": [], "inpaint-gan": [], "cyclegan": [],
    "ncsn": [], "made": ["--binarize", "true"], "flow": [], "ldm": [],
}
POINTS = {"ncsn-points": ("ncsn", []), "flow-points": ("flow", ["--dataset", "moons"])}


def find_mnist(data_dir: str | None) -> str | None:
    root = Path(__file__).resolve().parents[1]
    for d in [data_dir, os.environ.get("GENLAB_DATA"), root.parent / "shared" / "data"]:
        if d and (Path(d) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return str(Path(d) / "mnist")
        if d and (Path(d) / "train-images-idx3-ubyte.gz").is_file():
            return str(d)
    return None


def timed_run(args: list[str], out: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "genlab", "train", *args, "--out", str(out), "--progress", "false"],
                       capture_output=True, text=True, env={**os.environ, "GENLAB_OFFLINE": "1", "MPLBACKEND": "Agg"})
    return time.perf_counter() - t0, r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", help="comma-separated names (families, ncsn-points, flow-points)")
    a = p.parse_args()
    mnist = find_mnist(a.data_dir)
    plan = {}
    for fam, extra in RUNS.items():
        data = ["--dataset", "mnist", "--data-dir", mnist] if mnist else []
        plan[fam] = (fam, data + extra)
    if mnist is None:
        plan["made"] = ("made", ["--binarize", "true"])
    plan.update(POINTS)
    if a.only:
        plan = {k: v for k, v in plan.items() if k in a.only.split(",")}
    times, failed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fam, extra) in plan.items():
            s, code, last = timed_run([fam, *extra, "--steps", str(a.steps)], Path(tmp) / name)
            times[name] = round(s, 1)
            if code:
                failed[name] = last
    print(json.dumps({"benchmark": "smoke_runs", "steps": a.steps, "data": "mnist" if mnist else "defaults",
                      "wall_s": times, "max_s": max(times.values()), **({"failed": failed} if failed else {})}))


if __name__ == "__main__":
    main()
