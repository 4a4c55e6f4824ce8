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
.wide{overflow-x:auto}
"""


# What each figure shows, by file name (grids read left to right, top to bottom).
CAPTIONS = {
    "final": "samples of the trained model (EMA weights where the run keeps them)",
    "loss": "training loss (per log line) and test loss",
    "curves": "the other logged quantities",
    "fid": "sample quality during training",
    "forward": "forward process q(x_t | x_0): rows are images, columns 0/25/50/75/99% of T",
    "backward": "backward process from the 99% column of the forward figure, at the same time steps",
    "strip": "one sampling run from pure noise: x_t at the time steps shown",
    "samples": "samples of the trained model",
    "samples_t07": "samples at temperature 0.7",
    "test_images": "test images, for comparison with the samples",
    "reconstructions": "pairs in each row: a test image, then its reconstruction",
    "interpolations": "decoded interpolations between the latents of two test images, one pair per row",
    "traversal": "decoder means over a grid of two latent dimensions, the others at 0",
    "inpaint": "masked input (hole in grey), completion(s), original",
    "inpaint_box": "input with a box hole (grey), completion, original",
    "inpaint_free": "input with free-form holes (grey), completion, original",
    "translate_xy": "rows: x, G(x), F(G(x))",
    "translate_yx": "rows: y, F(y), G(F(y))",
    "density": "training data, model density and samples over the same area",
    "score_field": "the learned score at the smallest and largest noise level",
    "langevin_steps": "samples along one annealed Langevin run",
    "langevin_levels": "one row per sample: its state at the end of each noise level, largest first",
    "trajectories": "two Langevin trajectories over the smaller noise levels, coloured by step",
    "autoencoder": "latent diffusion, stage 1: test images and their reconstructions (PSNR above each)",
    "latents": "latent diffusion: an image and each channel of its scaled latent mean",
    "autoencoder_loss": "latent diffusion, stage 1: the autoencoder's training curves",
}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = CAPTIONS.get(path.stem) or CAPTIONS.get(path.stem.split("_")[0], "")
    caption = f"{path.stem}: {caption}" if caption else path.stem
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(records: list[dict]) -> str:
    if not records:
        return "<p>No metrics yet.</p>"
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("split", "step")]
    rows = ["<tr><th>split</th><th>step</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"]
    for r in records:
        cells = "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys)
        rows.append(f"<tr><td>{html.escape(str(r.get('split')))}</td><td>{r.get('step')}</td>{cells}</tr>")
    return "<div class='wide'><table>" + "".join(rows) + "</table></div>"  # a wide table scrolls, not the page


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
    steps = last_train[0]["step"] if last_train else 0
    # the end-of-run test record and later `genlab eval` lines; tests during training are in the curves
    finals = [r for r in records if (r.get("split") == "test" and r.get("step") == steps) or r.get("split") == "eval"]
    figures = sorted((run_dir / "figures").glob("*.png"))
    samples = sorted((run_dir / "samples").glob("*.png"))
    final = [p for p in samples if p.stem == "final"] or samples[-1:]
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
