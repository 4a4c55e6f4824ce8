"""Image grids, scatter plots and metric curves (PIL and matplotlib; no torchvision)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("MPLBACKEND", "Agg")


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into one uint8 array (H', W', C)."""
    x = x.detach().float().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top: top + h, left: left + w] = x[i]
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if c == 1 else arr


def save_png(path: str | Path, array: np.ndarray, scale: int = 1) -> None:
    """Write an image atomically (a temporary file renamed into place)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    im.save(tmp)
    os.replace(tmp, path)


def save_grid(path: str | Path, x: torch.Tensor, nrow: int | None = None) -> None:
    """Save a grid of images; small images are enlarged so the file is easy to look at."""
    arr = make_grid(x, nrow)
    save_png(path, arr, scale=max(1, 256 // max(arr.shape[0], arr.shape[1]) + 1) if arr.shape[0] < 256 else 1)


@torch.no_grad()
def samples_beside_data(model, data, out_dir, generator, n: int = 100) -> list[str]:
    """Two 10 x 10 grids: n samples, and n test images to compare them with."""
    paths = [f"{out_dir}/samples.png", f"{out_dir}/test_images.png"]
    save_grid(paths[0], model.sample(n, generator=generator), nrow=10)
    save_grid(paths[1], data.floats("test")[:n], nrow=10)
    return paths


def save_image(path: str | Path, x: torch.Tensor) -> None:
    """One image (C, H, W) in [0, 1] as a PNG of exactly its size."""
    save_png(path, make_grid(x[None], nrow=1, padding=0))


def _savefig(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def save_scatter(path: str | Path, points, title: str = "", lim: float | None = None, s: float = 2.0) -> None:
    import matplotlib.pyplot as plt

    p = np.asarray(points)
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.6, linewidths=0)
    if lim:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    _savefig(fig, path)


def save_sample_file(path: str | Path, samples: torch.Tensor) -> None:
    """`.npz` (key `samples`) for other tools, `.png` a grid or, for 2-D points, a scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, samples=samples.detach().float().cpu().numpy())
        os.replace(tmp, path)
    elif samples.dim() == 2:
        save_scatter(path, samples.cpu().numpy(), title=f"{len(samples)} samples")
    else:
        save_grid(path, samples)


def image_table(path: str | Path, rows: list, col_titles: list[str], row_titles: list[str] | None = None,
                title: str = "") -> None:
    """A figure whose cells are single images: rows[i] is (n_cols, C, H, W) in [0, 1] (or a list of (C, H, W)).

    The cells, each scaled (nearest) to the largest cell's size, are tiled by make_grid into one picture
    drawn by a single imshow, with a thin frame and the titles as text: 0.3 s for 4 x 10 cells where one
    matplotlib axes per cell took 1.6 s.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    nr, nc = len(rows), len(col_titles)
    cells = [row[j].detach().float().cpu() for row in rows for j in range(nc)]
    h, w = max(c.shape[1] for c in cells), max(c.shape[2] for c in cells)
    gap = max(1, round(0.1 * max(h, w)))
    tiles = torch.stack([F.interpolate(c[None], size=(h, w), mode="nearest")[0].expand(3, h, w) for c in cells])
    fig = plt.figure(figsize=(1.3 * nc + 0.4, 1.3 * nr + 0.5))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(make_grid(tiles, nrow=nc, padding=gap), interpolation="nearest")
    ax.set_axis_off()
    left = [gap + j * (w + gap) - 0.5 for j in range(nc)]  # pixel edges of the cells in the grid
    top = [gap + i * (h + gap) - 0.5 for i in range(nr)]
    ax.add_collection(PatchCollection([Rectangle((x, y), w, h) for y in top for x in left],
                                      facecolor="none", edgecolor="black", linewidth=0.6, clip_on=False))
    for x, text in zip(left, col_titles):
        if text:
            ax.text(x + w / 2, top[0] - gap / 2, text, ha="center", va="bottom", fontsize=9)
    for y, text in zip(top, row_titles or []):
        ax.text(left[0] - gap / 2, y + h / 2, text, ha="right", va="center", fontsize=9, rotation=90)
    if title:
        ax.set_title(title, fontsize=10, pad=18 if any(col_titles) else 6)
    _savefig(fig, path)


def inpaint_table(path: str | Path, x: torch.Tensor, m: torch.Tensor, done: torch.Tensor, title: str = "",
                  per_row: int = 3) -> None:
    """Inpainting results, `per_row` examples to a row, each as masked input (hole grey), completion, original."""
    cells = torch.stack([x * (1 - m) + 0.5 * m, done, x], 1)  # (B, 3, C, H, W)
    per_row = min(per_row, len(x))
    rows = [cells[i: i + per_row].flatten(0, 1) for i in range(0, len(x) - per_row + 1, per_row)]
    image_table(path, rows, ["masked", "completion", "original"] * per_row, title=title)


def plot_curves(path: str | Path, records: list[dict], keys: list[str], title: str = "", logy: bool = False) -> bool:
    """Plot each key against step for train (smoothed) and test records; False if nothing to plot."""
    import matplotlib.pyplot as plt

    records = [r for r in records if r.get("split") in ("train", "test")]
    present = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    if not present:
        return False
    cols = min(3, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, present):
        for split, style in (("train", "-"), ("test", "o-")):
            pts = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r
                   and r[key] is not None and math.isfinite(r[key])]
            if not pts:
                continue
            steps, vals = map(np.array, zip(*pts))
            ax.plot(steps, vals, style, label=split, alpha=0.35 if split == "train" and len(vals) > 20 else 1,
                    markersize=3)
            if split == "train" and len(vals) > 20:
                k = max(2, len(vals) // 20)
                ax.plot(steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid"), "-", color="C0",
                        label=f"train (mean of {k})")
        ax.set_xlabel("step")
        ax.set_title(key)
        if logy and all(v > 0 for r in records for v in [r.get(key)] if isinstance(v, (int, float))):
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _savefig(fig, path)
    return True
