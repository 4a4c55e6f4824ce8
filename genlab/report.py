"""RUN/report.html: one self-contained page (images inlined) with the config, curves, metrics and figures."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from genlab.config import dump_yaml
from genlab.trainer import read_metrics

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
figure{display:inline-block;margin:.5em;vertical-align:top} figcaption{font-size:.85em;color:#555}
img{max-width:100%;image-rendering:pixelated}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">' \
           f"<figcaption>{html.escape(path.name)}</figcaption></figure>"


def _table(records: list[dict]) -> str:
    if not records:
        return "<p>No metrics yet.</p>"
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("split", "step")]
    rows = ["<tr><th>split</th><th>step</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"]
    for r in records:
        cells = "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys)
        rows.append(f"<tr><td>{html.escape(str(r.get('split')))}</td><td>{r.get('step')}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return "" if v is None else html.escape(str(v))


def write_report(run_dir: str | Path) -> Path:
    from genlab.runs import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    last_train = [r for r in records if r.get("split") == "train"][-1:]
    finals = [r for r in records if r.get("split") in ("test", "eval")][-4:]
    figures = sorted((run_dir / "figures").glob("*.png"))
    samples = sorted((run_dir / "samples").glob("*.png"))
    final = [p for p in samples if p.stem == "final"] or samples[-1:]
    steps = last_train[0]["step"] if last_train else 0
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>genlab {html.escape(cfg.family)}: {html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(cfg.family)} on {html.escape(cfg.data.dataset)}: {html.escape(run_dir.name)}</h1>",
        f"<p>{steps} training steps.</p>",
        "<h2>Final metrics</h2>", _table(last_train + finals),
        "<h2>Samples</h2>", "".join(_img(p) for p in final),
        "<h2>Figures</h2>", "".join(_img(p) for p in figures) or "<p>No figures yet.</p>",
        "<h2>Sample grids during training</h2>", "".join(_img(p) for p in samples if p not in final) or "<p>None.</p>",
        "<h2>Configuration</h2>", f"<pre>{html.escape(dump_yaml(cfg.to_dict()))}</pre>",
        "</body></html>",
    ]
    out = run_dir / "report.html"
    tmp = run_dir / ".report.html.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
