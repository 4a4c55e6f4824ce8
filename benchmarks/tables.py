"""A Markdown table printed, and written to a file when asked: the shared output of the table benchmarks."""

from __future__ import annotations


def emit(header: list[str], rows: list[list], out: str | None = None) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")
    return table
