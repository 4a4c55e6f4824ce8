"""A Markdown table printed, and written to a file when asked: the shared output of the table benchmarks."""

from __future__ import annotations

import json
from pathlib import Path


def emit(header: list[str], rows: list[list], out: str | None = None) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")
    return table


def train_seconds(run: Path) -> float:
    """Training time of a run, an ldm's stage 1 included (without sampling, evaluation and checkpoints)."""
    from genlab.trainer import read_metrics

    total = [r for r in read_metrics(Path(run) / "metrics.jsonl") if r["split"] == "train"][-1]["elapsed"]
    done = Path(run) / "autoencoder" / "done.json"
    return total + (json.loads(done.read_text())["elapsed"] if done.is_file() else 0.0)
