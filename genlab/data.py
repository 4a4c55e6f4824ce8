"""Data sets: one registry of names, each loaded into memory with a fixed train/test split.

Images are kept as uint8 tensors (N, C, H, W); models receive floats in [0, 1].
2-D toy sets are float32 (N, 2). Labels are kept where the data has them.

Files are looked up in `--data-dir`, then `$GENLAB_DATA`, then the user cache
(`$GENLAB_CACHE` or ~/.cache/genlab); missing files are downloaded with a
checksum check when online (not when `$GENLAB_OFFLINE` is set).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import GenlabError


@dataclass
class Dataset:
    name: str
    kind: str  # "image", "points", or "latent" (float32 codes of images)
    train: torch.Tensor  # uint8 (N, C, H, W), float32 (N, 2), or float32 latents (N, c, h, w)
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    classes: list[str] | None = None
    train_b: torch.Tensor | None = None  # a second, unpaired domain (CycleGAN)
    test_b: torch.Tensor | None = None
    images: Dataset | None = None  # latent data: the images they encode

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def floats(self, split: str = "train") -> torch.Tensor:
        """The split as float32: images in [0, 1], points as they are."""
        x = self.train if split == "train" else self.test
        return x.float() / 255 if self.kind == "image" else x

    def labels(self, split: str = "train") -> torch.Tensor | None:
        return self.train_labels if split == "train" else self.test_labels


# ---------------------------------------------------------------------------
# Where files live


def cache_dir() -> Path:
    root = os.environ.get("GENLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "genlab"
    )
    return Path(root)


def search_dirs(data_dir: str | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("GENLAB_DATA"):
        dirs.append(Path(os.environ["GENLAB_DATA"]).expanduser())
    dirs.append(cache_dir())
    return dirs


def file_hash(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: Path) -> str:
    return file_hash(path, "md5")


def download(url: str, dest: Path, md5: str | None = None, sha256_prefix: str | None = None) -> None:
    """Fetch `url` into `dest` atomically, refusing a file whose md5 (or sha256 prefix) differs."""
    if os.environ.get("GENLAB_OFFLINE"):
        raise OSError("offline ($GENLAB_OFFLINE is set)")
    print(f"downloading {url}", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=20) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
        if (md5 and md5sum(Path(tmp)) != md5) or (
                sha256_prefix and not file_hash(Path(tmp), "sha256").startswith(sha256_prefix)):
            raise OSError(f"checksum mismatch for {url}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def locate(files: dict[str, str], data_dir: str | None, subdirs: list[str]) -> tuple[dict[str, Path] | None, Path | None]:
    """The first folder in the search path holding every file with its published md5.

    Returns (paths, None), or (None, a folder whose files are there but differ) or (None, None).
    MNIST and Fashion-MNIST share file names, so a folder with the other set's files is passed over.
    """
    corrupt = None
    for d in search_dirs(data_dir):
        for sub in subdirs:
            found = {f: d / sub / f for f in files if (d / sub / f).is_file()}
            if len(found) == len(files):
                if all(md5sum(p) == files[f] for f, p in found.items()):
                    return found, None
                corrupt = corrupt or d / sub
    return None, corrupt


def find_files(name: str, files: dict[str, str], data_dir: str | None, allow_download: bool,
               mirrors: list[str], subdirs: list[str]) -> dict[str, Path]:
    """Locate every file of a data set (name -> md5) in the search path, or download them."""
    found, corrupt = locate(files, data_dir, subdirs)
    if found:
        return found
    target = cache_dir() / subdirs[0]
    reason = "downloads are off (data.download=false)"
    if allow_download:
        try:
            for f, md5 in files.items():
                if not (target / f).is_file() or md5sum(target / f) != md5:
                    _download_from(mirrors, f, target / f, md5)
            return {f: target / f for f in files}
        except OSError as e:
            reason = f"download failed: {e}"
    if corrupt:
        reason = f"the files in {corrupt} do not have the published checksums (corrupt, or another data set); " + reason
    where = ", ".join(str(d / subdirs[0]) for d in search_dirs(data_dir))
    raise GenlabError(f"{name} not found: put {', '.join(files)} in one of: {where} "
                      f"(or pass --data-dir DIR / set $GENLAB_DATA); {reason}")


def _download_from(mirrors, fname, dest, md5):
    if os.environ.get("GENLAB_OFFLINE"):
        raise OSError("offline ($GENLAB_OFFLINE is set)")
    last = None
    for base in mirrors:
        try:
            return download(base + fname, dest, md5)
        except OSError as e:
            last = e
    raise last


# ---------------------------------------------------------------------------
# Image sets


IDX_SETS = {
    "mnist": {
        "files": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "subdirs": ["mnist", "MNIST/raw", ""],
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "files": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "subdirs": ["fashion-mnist", "FashionMNIST/raw", ""],
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or not): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise GenlabError(f"cannot read {path}: {e}") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (2049, 2051):
        raise GenlabError(f"{path} is not an IDX file (magic number {magic})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise GenlabError(f"{path} is truncated: expected {np.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def load_idx_set(name: str, data_dir, allow_download) -> Dataset:
    spec = IDX_SETS[name]
    paths = find_files(name, spec["files"], data_dir, allow_download, spec["mirrors"], spec["subdirs"])
    arr = {f.split("-")[0] + "-" + f.split("-")[1]: read_idx(p) for f, p in paths.items()}
    train, test = arr["train-images"], arr["t10k-images"]
    return Dataset(
        name, "image",
        torch.from_numpy(train.copy()).unsqueeze(1), torch.from_numpy(test.copy()).unsqueeze(1),
        torch.from_numpy(arr["train-labels"].astype(np.int64)), torch.from_numpy(arr["t10k-labels"].astype(np.int64)),
        spec["classes"],
    )


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (16 grey levels), a fixed 1,497/300 split."""
    pixels, target = _sklearn_digits()
    images = np.round(pixels.reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)  # (N, 1, 8, 8)
    order = np.random.RandomState(0).permutation(len(images))
    tr, te = order[:-300], order[-300:]
    return Dataset("digits", "image", torch.from_numpy(images[tr]), torch.from_numpy(images[te]),
                   torch.from_numpy(target[tr]), torch.from_numpy(target[te]), [str(i) for i in range(10)])


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' (1797, 64) pixels and labels, read from the file scikit-learn ships without importing
    scikit-learn (3 s of a short run's start); through `sklearn.datasets.load_digits` if the file moved."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :64], table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.data, d.target.astype(np.int64)


CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches without running arbitrary code: numpy arrays only."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10(data_dir, allow_download) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = None
    for d in search_dirs(data_dir):
        for sub in ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"]:
            if all((d / sub / n).is_file() for n in names):
                folder = d / sub
                break
        if folder:
            break
    if folder is None:
        archive = cache_dir() / "cifar-10-python.tar.gz"
        reason = "downloads are off (data.download=false)"
        if allow_download:
            try:
                if not archive.is_file():
                    download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", archive, CIFAR10_MD5)
                with tarfile.open(archive) as tf:
                    tf.extractall(cache_dir(), filter="data")
                folder = cache_dir() / "cifar-10-batches-py"
            except (OSError, tarfile.TarError) as e:
                reason = f"download failed: {e}"
        if folder is None:
            dirs = ", ".join(str(d / "cifar-10-batches-py") for d in search_dirs(data_dir))
            raise GenlabError(f"cifar10 not found: put {', '.join(names)} in one of: {dirs}; {reason}")
    parts = {}
    for n in names:
        try:
            with open(folder / n, "rb") as f:
                parts[n] = _SafeUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, OSError) as e:
            raise GenlabError(f"cifar10: {folder / n} is corrupt: {e}") from None

    def stack(ns):
        x = np.concatenate([parts[n][b"data"] for n in ns]).reshape(-1, 3, 32, 32)
        y = np.concatenate([parts[n][b"labels"] for n in ns]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    xtr, ytr = stack(names[:5])
    xte, yte = stack(names[5:])
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return Dataset("cifar10", "image", xtr, xte, ytr, yte, classes)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def load_folder(path: str, size: int, channels: int) -> Dataset:
    """Every image under `path`, resized (shorter side) and centre-cropped to size x size.

    Unreadable files are reported and skipped. Sub-folders become class labels.
    The test split is the files whose name hashes to 0 mod 10, stable as files are added.
    """
    from PIL import Image

    root = Path(path).expanduser()
    if not root.is_dir():
        raise GenlabError(f"folder:{path}: no such directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GenlabError(f"folder:{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    mode = "L" if channels == 1 else "RGB"
    images, labels, good, bad = [], [], [], []
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(_resize_crop(im.convert(mode), size), dtype=np.uint8))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            bad.append(f"{p.name} ({type(e).__name__})")
            continue
        good.append(p)
        labels.append(classes.index(p.parent.relative_to(root).as_posix()))
    if bad:
        print(f"warning: skipped {len(bad)} unreadable file(s) in {root}: {', '.join(bad[:5])}"
              + (" ..." if len(bad) > 5 else ""), file=sys.stderr)
    if not images:
        raise GenlabError(f"folder:{path}: none of the {len(files)} image files could be read")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    is_test = np.array([hashlib.sha1(p.relative_to(root).as_posix().encode()).digest()[0] % 10 == 0 for p in good])
    if is_test.all() or not is_test.any():  # tiny folders: keep at least one image on each side
        is_test = np.arange(len(x)) % 10 == 9 if len(x) > 1 else np.zeros(len(x), bool)
    y = torch.tensor(labels)
    has_labels = len(classes) > 1
    xt = torch.from_numpy(np.ascontiguousarray(x))
    return Dataset(f"folder:{path}", "image", xt[~is_test], xt[is_test] if is_test.any() else xt[:1],
                   y[~is_test] if has_labels else None, y[is_test] if has_labels else None,
                   classes if has_labels else None)


def _resize_crop(im, size):
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch (N, C, H, W) to size x size (antialiased bicubic), still uint8."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for chunk in x.split(4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels in (0, x.shape[1]):
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and x.shape[1] == 3:  # ITU-R 601-2 luma, as PIL's convert("L")
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise GenlabError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


# ---------------------------------------------------------------------------
# 2-D toy sets (as in FFJORD's toy data, and seed 002's "CS446" pattern)


N_TRAIN_POINTS, N_TEST_POINTS = 20000, 5000


def toy_points(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.RandomState(seed)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, y = make_moons(n, noise=0.05, random_state=rng)
        return x * 2 + np.array([-1.0, -0.2]), y
    if name == "swiss-roll":
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n, noise=0.5, random_state=rng)
        return x[:, [0, 2]] / 5, None
    if name == "8gaussians":
        k = rng.randint(0, 8, n)
        angle = k * np.pi / 4
        centers = 4 * np.stack([np.cos(angle), np.sin(angle)], 1)
        return (centers + 0.5 * rng.randn(n, 2)) / 1.414, k
    if name == "checkerboard":
        x1 = rng.rand(n) * 4 - 2
        x2 = rng.rand(n) - rng.randint(0, 2, n) * 2 + np.floor(x1) % 2
        return np.stack([x1, x2], 1) * 2, None
    if name == "rings":
        k = rng.randint(0, 4, n)
        angle = rng.rand(n) * 2 * np.pi
        radius = 3.0 * (k + 1) / 4
        x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
        return x + 0.08 * rng.randn(n, 2), k
    raise KeyError(name)


def text_points(text: str, n: int, seed: int, height: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Points spread uniformly over `text` rendered in DejaVu Sans Bold; labels = character index.

    The text is centred at the origin and `height` units tall, as seed 002's CS446 pattern
    (about 4.5 x 1 for CS446).
    """
    from PIL import Image, ImageDraw, ImageFont
    import matplotlib

    font_path = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans-Bold.ttf"
    font = ImageFont.truetype(str(font_path), 200)
    left, top, right, bottom = font.getbbox(text)
    pad = 10
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=255)
    ink = np.asarray(img) > 127
    rows, cols = np.nonzero(ink)
    if len(rows) == 0:
        raise GenlabError(f"text:{text} renders no visible pixels")
    # Which character each ink column belongs to: boundaries at the advance of each prefix.
    bounds = np.array([font.getlength(text[:i]) for i in range(1, len(text))]) + pad - left
    char_of_col = np.searchsorted(bounds, cols + 0.5)
    rng = np.random.RandomState(seed)
    pick = rng.randint(0, len(rows), n)
    px = cols[pick] + rng.rand(n)
    py = rows[pick] + rng.rand(n)
    scale = height / (rows.max() + 1 - rows.min())
    x = np.stack([(px - (cols.min() + cols.max() + 1) / 2) * scale, -(py - (rows.min() + rows.max() + 1) / 2) * scale], 1)
    return x, char_of_col[pick], list(text)


# ---------------------------------------------------------------------------
# The registry


IMAGE_SETS = {
    "digits": "scikit-learn's 8x8 handwritten digits (bundled, no download), resized",
    "mnist": "MNIST handwritten digits, 28x28 grey (IDX files)",
    "fashion-mnist": "Fashion-MNIST clothing, 28x28 grey (IDX files)",
    "cifar10": "CIFAR-10, 32x32 colour (python batches)",
}
POINT_SETS = {
    "moons": "two interleaved half circles",
    "swiss-roll": "a 2-D swiss roll",
    "8gaussians": "eight Gaussians on a circle",
    "checkerboard": "an 4x4 checkerboard of uniform squares",
    "rings": "four concentric rings",
}
PATTERNS = {
    "folder:PATH": "every image under PATH (sub-folders become labels), resized and centre-cropped",
    "text:STRING": "2-D points spread over STRING rendered in a bold font (seed 002: text:CS446)",
}
NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}


def kind_of(name: str) -> str:
    if name in POINT_SETS or name.startswith("text:"):
        return "points"
    if name in IMAGE_SETS or name.startswith("folder:"):
        return "image"
    known = ", ".join(list(IMAGE_SETS) + list(POINT_SETS) + list(PATTERNS))
    raise GenlabError(f"unknown data set '{name}' (known: {known})")


def default_image_size(name: str, requested: int, family_default: int = 32) -> int:
    return requested or NATIVE_SIZE.get(name, family_default)


def load_dataset(name: str, data_dir: str | None = None, image_size: int = 0, channels: int = 0,
                 download: bool = True, family_size: int = 32) -> Dataset:
    """Load a data set by name; images come back at image_size (0: native or family_size)."""
    kind = kind_of(name)
    if kind == "points":
        if name.startswith("text:"):
            text = name[len("text:"):]
            if not text.strip():
                raise GenlabError("text: needs a non-empty string, e.g. text:CS446")
            xtr, ytr, classes = text_points(text, N_TRAIN_POINTS, seed=0)
            xte, yte, _ = text_points(text, N_TEST_POINTS, seed=1)
        else:
            (xtr, ytr), (xte, yte) = toy_points(name, N_TRAIN_POINTS, 0), toy_points(name, N_TEST_POINTS, 1)
            classes = None

        def lab(y):
            return None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))

        return Dataset(name, "points", torch.from_numpy(xtr.astype(np.float32)), torch.from_numpy(xte.astype(np.float32)),
                       lab(ytr), lab(yte), classes)

    size = default_image_size(name, image_size, family_size)
    if name.startswith("folder:"):
        return load_folder(name[len("folder:"):], size, channels)
    if name == "digits":
        ds = load_digits()
    elif name == "cifar10":
        ds = load_cifar10(data_dir, download)
    else:
        ds = load_idx_set(name, data_dir, download)
    ds.train = set_channels(resize_images(ds.train, size), channels)
    ds.test = set_channels(resize_images(ds.test, size), channels)
    return ds


def binarize_fixed(x: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """x ~ Bernoulli(pixel / 255) with a fixed seed, as uint8 0/255: the same binary test set for every family."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return ((u < x.float() / 255) * 255).to(torch.uint8)


def availability(data_dir: str | None = None) -> list[tuple[str, str, str]]:
    """(name, status, description) of every known data set, for `genlab datasets`."""
    rows = []
    for name, desc in IMAGE_SETS.items():
        if name == "digits":
            status = "bundled"
        elif name == "cifar10":
            found = [d for d in search_dirs(data_dir) for sub in ["cifar-10-batches-py", "cifar10"]
                     if (d / sub / "test_batch").is_file()]
            status = f"on disk: {found[0]}" if found else "missing (downloaded on first use when online)"
        else:
            spec = IDX_SETS[name]
            found, _ = locate(spec["files"], data_dir, spec["subdirs"])
            status = f"on disk: {next(iter(found.values())).parent}" if found else (
                f"missing: put {', '.join(spec['files'])} in {search_dirs(data_dir)[-1] / spec['subdirs'][0]}")
        rows.append((name, status, desc))
    rows += [(name, "generated", desc) for name, desc in POINT_SETS.items()]
    rows += [(name, "", desc) for name, desc in PATTERNS.items()]
    return rows


# ---------------------------------------------------------------------------
# Batches


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled mini-batches whose order is a pure function of (seed, epoch).

    Yields this process's share of each global batch (contiguous slices under
    torchrun), and can start in the middle of an epoch, which is what makes a
    resumed run see exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise GenlabError(f"batch size {batch_size} must be divisible by the {world} processes")
        if n < batch_size:
            raise GenlabError(f"batch size {batch_size} is larger than the training set ({n} examples)")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    def __len__(self):
        return self.n // self.batch_size - self.start

    def set_position(self, epoch: int, batch: int):
        self.epoch, self.start = epoch, batch

    def order(self) -> torch.Tensor:
        """The epoch's permutation of the training set (drawn on the host, the same on every device)."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))

    def index_batches(self, order: torch.Tensor):
        """This process's indices of each remaining batch of the epoch, as slices of `order`."""
        local = self.batch_size // self.world
        for b in range(self.start, self.n // self.batch_size):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            yield idx[self.rank * local: (self.rank + 1) * local]

    def __iter__(self):
        for idx in self.index_batches(self.order()):
            yield idx.tolist()


class InMemory(torch.utils.data.Dataset):
    """Batched access to in-memory tensors: one indexing operation per batch, not per example."""

    def __init__(self, data: Dataset, split: str = "train"):
        self.x = data.train if split == "train" else data.test
        self.y = data.labels(split)
        self.is_image = data.kind == "image"
        self.xb = data.train_b if split == "train" else data.test_b
        if self.xb is not None:
            # Training: a fixed random partner in the second domain for every example. Batches are
            # reshuffled every epoch, so the partners that meet in a batch change too. Test: aligned,
            # so that a known translation can be checked example by example.
            g = torch.Generator().manual_seed(0)
            self.partner = torch.randperm(len(self.xb), generator=g) if split == "train" else torch.arange(len(self.xb))

    def __len__(self):
        return len(self.x)

    def __getitems__(self, idx):
        x = self.x[idx]
        x = x.float() / 255 if self.is_image else x
        y = self.y[idx] if self.y is not None else torch.zeros(len(idx), dtype=torch.long)
        if self.xb is None:
            return x, y
        return x, y, self.xb[self.partner[torch.as_tensor(idx) % len(self.partner)]].float() / 255

    def __getitem__(self, i):
        return self.__getitems__([i])


def data_bytes(data: Dataset) -> int:
    """Bytes the training split (and a second domain) take in memory."""
    parts = [data.train, data.train_labels, data.train_b]
    return sum(t.numel() * t.element_size() for t in parts if t is not None)


class DeviceBatches:
    """The training split held on the training device, batched by indexing there.

    The same batches, in the same order, as a DataLoader over `InMemory` with the
    same sampler: the permutation is drawn on the host from the seeded generator
    (one copy to the device per epoch) and uint8 images become floats in [0, 1]
    on the device. Nothing crosses from the host per step.
    """

    def __init__(self, data: Dataset, sampler: EpochBatches, device):
        self.sampler, self.device = sampler, torch.device(device)
        self.is_image = data.kind == "image"
        self.x = data.train.to(self.device)
        n = len(data.train)
        labels = data.train_labels if data.train_labels is not None else torch.zeros(n, dtype=torch.long)
        self.y = labels.to(self.device)
        self.xb = self.partner = None
        if data.train_b is not None:
            self.xb = data.train_b.to(self.device)
            self.partner = InMemory(data, "train").partner.to(self.device)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        order = self.sampler.order().to(self.device)
        for idx in self.sampler.index_batches(order):
            x = self.x[idx]
            x = x.float() / 255 if self.is_image else x
            if self.xb is None:
                yield x, self.y[idx]
            else:
                yield x, self.y[idx], self.xb[self.partner[idx % len(self.partner)]].float() / 255


def batches(data: Dataset, split: str, batch_size: int):
    """Plain in-order batches of a split, (x, y) with x as floats, for evaluation."""
    ds = InMemory(data, split)
    for i in range(0, len(ds), batch_size):
        yield ds.__getitems__(list(range(i, min(i + batch_size, len(ds)))))
