"""Sample quality: FID, KID, precision/recall and IS on features of real and generated images.

Features come from the FID Inception-v3 (genlab.inception; clean-fid's resizing and scaling)
or, offline, from a "domain" classifier trained once per data set and size and cached; its
Frechet distance is reported as `domain_fd`, never as FID. 2-D points are their own features
(`raw_fd`, ...). Reference features of the training split are cached per data set, features,
resolution and count. The maths is in genlab.metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from genlab import metrics
from genlab.data import Dataset, cache_dir
from genlab.errors import GenlabError

SAMPLE_METRICS = ("fid", "kid", "pr", "is")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[-60:]


# ---------------------------------------------------------------------------
# The domain classifier


class DomainClassifier(nn.Module):
    """A small CNN: two conv pairs with max pooling, a 128-d embedding (the features), a linear head."""

    def __init__(self, channels: int, size: int, classes: int, width: int = 32):
        super().__init__()
        s = size // 4
        self.embed = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * s * s, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, classes))

    def forward(self, x):
        return self.head(self.embed(x))


def _shift(x, g):
    """Random translations by up to 2 pixels (zero padding): the classifier's only augmentation."""
    pad = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[..., dy: dy + x.shape[-2], dx: dx + x.shape[-1]]


def train_domain_classifier(data: Dataset, epochs: int = 4, device="cpu", seed: int = 0, log=print,
                            min_steps: int = 1000):
    """Train on the training split (Adam, one-cycle, batch 128, shifted images) for `epochs`, or more
    epochs if that is fewer than `min_steps` steps; returns (model, test accuracy)."""
    if data.train_labels is None or not data.classes:
        raise GenlabError(f"{data.name} has no labels, so no domain classifier can be trained; "
                          "use --features inception")
    C, H, W = data.shape
    with torch.random.fork_rng():  # never disturb the caller's random stream (e.g. a training run)
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        per_epoch = len(data.train) // 128
        epochs = max(epochs, -(-min_steps // per_epoch))
        model = DomainClassifier(C, H, len(data.classes)).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * per_epoch)
        x_all, y_all = data.train, data.train_labels
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=g)
            for i in range(0, len(order) - 127, 128):
                idx = order[i: i + 128]
                x = _shift(x_all[idx].float().div(255), g).to(device)
                loss = F.cross_entropy(model(x), y_all[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        acc = classifier_accuracy(model, data, device)
        log(f"domain classifier for {data.name}: {epochs} epochs, test accuracy {acc:.4f}")
    return model.eval(), acc


@torch.no_grad()
def classifier_accuracy(model, data: Dataset, device) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data.test), 500):
        x = data.test[i: i + 500].float().div(255).to(device)
        correct += (model(x).argmax(1).cpu() == data.test_labels[i: i + 500]).sum().item()
    return correct / len(data.test)


def domain_classifier(data: Dataset, device="cpu", log=print) -> tuple[DomainClassifier, float]:
    """The cached classifier for this data set and image shape, trained on first use."""
    C, H, W = data.shape
    key = f"{_slug(data.name)}-{C}x{H}x{W}"
    root = cache_dir() / "domain"
    weights, info = root / f"{key}.safetensors", root / f"{key}.json"
    model = DomainClassifier(C, H, len(data.classes or [0]))
    if weights.is_file() and info.is_file():
        try:
            model.load_state_dict(load_file(str(weights)))
            return model.to(device).eval(), json.loads(info.read_text())["test_accuracy"]
        except (OSError, RuntimeError, KeyError, ValueError):
            log(f"cached domain classifier {weights} is unusable; training it again")
    log(f"training the domain classifier for {data.name} ({C}x{H}x{W}) once; it is cached in {root}")
    model, acc = train_domain_classifier(data, device=device, log=log)
    root.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    info.write_text(json.dumps({"test_accuracy": acc, "data": data.name, "shape": [C, H, W]}))
    return model.to(device).eval(), acc


# ---------------------------------------------------------------------------
# Features


class Features:
    """Callable images (N, C, H, W) in [0, 1] -> (features (N, d) float64, class probabilities or None)."""

    def __init__(self, kind: str, data: Dataset, device="cpu", log=print):
        self.kind, self.device = kind, torch.device(device)
        if data.kind == "points":
            self.kind, self.prefix, self.net = "raw", "raw_", None
        elif kind == "inception":
            from genlab.inception import load_fid_inception

            self.prefix, self.net = "", load_fid_inception(device=device)
        elif kind == "domain":
            self.net, self.accuracy = domain_classifier(data, device, log)
            self.prefix = "domain_"
        else:
            raise GenlabError(f"unknown features '{kind}' (inception, domain, auto)")
        self.key = f"{self.kind}-{_slug(data.name)}-{'x'.join(map(str, data.shape))}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch: int = 500):
        if self.kind == "raw":
            return x.double().numpy(), None
        feats, probs = [], []
        for chunk in x.split(batch if self.kind == "domain" else 50):
            chunk = chunk.to(self.device).float()
            if self.kind == "domain":
                f = self.net.embed(chunk)
                p = torch.softmax(self.net.head(f), 1)
            else:
                from genlab.inception import clean_resize

                u8 = (chunk.clamp(0, 1) * 255).round().to(torch.uint8)
                f, logits = self.net(clean_resize(u8).to(self.device) / 256, resize=False)
                p = torch.softmax(logits[:, 1:1001], 1)  # the 1000 ImageNet classes of the 1008 outputs
            feats.append(f.double().cpu())
            probs.append(p.double().cpu())
        return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def choose_features(kind: str, data: Dataset, device="cpu", log=print) -> Features:
    """'auto': Inception when its weights are at hand, otherwise the domain classifier (said once)."""
    if kind != "auto" or data.kind == "points":
        return Features(kind if kind != "auto" else "domain", data, device, log)
    import os

    offline = os.environ.get("GENLAB_OFFLINE")
    try:
        os.environ["GENLAB_OFFLINE"] = "1"  # 'auto' never downloads 90 MB behind the user's back
        return Features("inception", data, device, log)
    except GenlabError:
        log("Inception weights not found: using domain features (reported as domain_*, not FID)")
        return Features("domain", data, device, log)
    finally:
        if offline is None:
            os.environ.pop("GENLAB_OFFLINE", None)
        else:
            os.environ["GENLAB_OFFLINE"] = offline


def reference_features(features: Features, data: Dataset, n: int = 10000, split: str = "train") -> np.ndarray:
    """Features of the first n images of a split, cached on disk."""
    size = len(data.train if split == "train" else data.test)
    n = min(n, size) if n else size
    path = cache_dir() / "stats" / f"{features.key}-{split}-{n}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["features"].double().numpy()
        except (OSError, KeyError, ValueError):
            pass
    x = data.floats(split)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    feats, _ = features(x[order])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"features": torch.from_numpy(feats).float()}, str(tmp))
    tmp.replace(path)
    return feats


def sample_metrics(samples: torch.Tensor, data: Dataset, features: Features, which=SAMPLE_METRICS,
                   n_ref: int = 10000) -> dict[str, float]:
    """FID/KID/precision-recall/IS of samples against the training split, named by the features used."""
    unknown = set(which) - set(SAMPLE_METRICS)
    if unknown:
        raise GenlabError(f"unknown metric(s) {', '.join(sorted(unknown))}")
    if tuple(samples.shape[1:]) != tuple(data.shape):
        raise GenlabError(f"samples of shape {tuple(samples.shape[1:])} do not match the data's {tuple(data.shape)}")
    real = reference_features(features, data, n_ref)
    fake, probs = features(samples)
    p = features.prefix
    out: dict[str, float] = {}
    if "fid" in which:
        name = "fid" if features.kind == "inception" else f"{p}fd"
        out[name] = metrics.frechet_distance(*metrics.feature_stats(fake), *metrics.feature_stats(real))
    if "kid" in which:
        out[f"{p}kid"] = metrics.kernel_inception_distance(fake, real, max_subset_size=min(1000, len(fake), len(real)))
    if "pr" in which:
        prec, rec = metrics.precision_recall(torch.from_numpy(real).float(), torch.from_numpy(fake).float())
        out[f"{p}precision"], out[f"{p}recall"] = prec, rec
    if "is" in which and probs is not None:
        mean, std = metrics.inception_score(probs, splits=min(10, len(samples)))
        out[f"{p}is"], out[f"{p}is_std"] = mean, std
    if features.kind == "domain":
        out["domain_accuracy"] = features.accuracy
    out["samples_n"] = len(samples)
    return out


def fid_curve(path: str | Path, records: list[dict]) -> bool:
    """The FID (or domain distance) logged during training, against the step."""
    from genlab.viz import plot_curves

    keys = [k for k in ("fid", "domain_fd", "raw_fd") if any(k in r for r in records)]
    return plot_curves(path, [r for r in records if r.get("split") == "test"], keys, title="sample quality during training")


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

