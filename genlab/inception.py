"""The FID Inception-v3: TensorFlow's 2015-12-05 ImageNet graph as ported by pytorch-fid.

Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision"; the FID
(Heusel et al. 2017) and Inception Score (Salimans et al. 2016) networks. The layout and the
parameter names are torchvision's Inception3, so pytorch-fid's weight file loads unchanged;
the FID graph differs from torchvision's in three places (FIDInceptionA/C/E_1/E_2 below):
average pools that ignore the zero padding, a max pool in the last block, and 1008 classes.
Written by hand because torchvision does not load here.

`FIDInception(x)` returns the 2048-d pool3 features (FID, KID) and the 1008-way logits (IS).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from genlab.data import cache_dir, download, file_hash, search_dirs
from genlab.errors import GenlabError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
# torch.hub names a weight file <name>-<first 8 hex digits of its sha256>.pth; that prefix is
# the only checksum published for this file, so it is what we check.
WEIGHTS_SHA256_PREFIX = "6726825d"


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (TF's eps 0.001) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool(x):
    """3x3 stride-1 average pool that, like TensorFlow's, leaves the zero padding out of the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pool branches (Mixed_5b..5d)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)  # (N, 224 + pool_features, H, W)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a), the same in torchvision and the FID graph."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, b3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)  # (N, 480 + C, H', W')


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1) (Mixed_6b..6e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        bp = self.branch_pool(tf_avg_pool(x))
        return torch.cat([b1, b7, b7dbl, bp], 1)  # (N, 768, 17, 17)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a), the same in torchvision and the FID graph."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)  # (N, 1280, 8, 8)


class FIDInceptionE_1(nn.Module):
    """8x8 block whose 3x3 branches split into parallel 1x3 and 3x1 convolutions (Mixed_7b)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def pool(self, x):
        return tf_avg_pool(x)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        bp = self.branch_pool(self.pool(x))
        return torch.cat([b1, b3, b3dbl, bp], 1)  # (N, 2048, 8, 8)


class FIDInceptionE_2(FIDInceptionE_1):
    """Mixed_7c: as E_1, but the TF graph max-pools here (likely a bug there; kept to match FID)."""

    def pool(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInception(nn.Module):
    """Inception-v3 of the FID: images in [0, 1] -> (pool3 features (N, 2048), logits (N, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(2048, 1008)  # the TF graph's 1008 ImageNet outputs, used by the IS

    def forward(self, x, resize: bool = True):
        """x: (N, 3, H, W) in [0, 1] (one channel is repeated as RGB).

        resize=True resizes to 299x299 bilinearly as pytorch-fid; pass resize=False for images
        already resized by `clean_resize` (clean-fid numerics).
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if resize:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1], the range the TF weights expect
        x = self.Conv2d_1a_3x3(x)  # (N, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (N, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (N, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d,  # (N, 288, 35, 35)
                      self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,  # (N, 768, 17, 17)
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # (N, 2048, 8, 8)
            x = block(x)
        pool3 = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 2048)
        logits = self.fc(pool3)  # (N, 1008); the dropout before fc is the identity at test time
        return pool3, logits


def clean_resize(images, size: int = 299) -> torch.Tensor:
    """clean-fid's "clean" resize: PIL bicubic on each channel as a float32 image, one image at a time.

    images: (N, C, H, W) uint8 (or values in [0, 255]), tensor or array. Returns float32
    (N, C, size, size) on the [0, 255] scale, clipped to [0, 255] as clean-fid does (bicubic
    overshoots at sharp edges: on binary digits by up to ~40 grey levels).
    For clean-fid numerics feed `clean_resize(x) / 256` to `FIDInception(..., resize=False)`:
    2 x / 256 - 1 = (x - 128) / 128 is the normalisation clean-fid applies to [0, 255] images.
    The default `FIDInception` bilinear resize instead gives pytorch-fid numerics.
    """
    x = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    n, c = x.shape[:2]
    out = np.empty((n, c, size, size), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            im = Image.fromarray(x[i, ch].astype(np.float32))  # a float32 array becomes mode "F"
            out[i, ch] = np.asarray(im.resize((size, size), resample=Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 255))


# ---------------------------------------------------------------------------
# Weights


def load_fid_inception(path: str | os.PathLike | None = None, device="cpu") -> FIDInception:
    """The FID Inception with pytorch-fid's weights, in eval mode and without gradients.

    The file is looked up at `path` (a file or folder), then in $GENLAB_DATA, then in the cache
    folder, checked against its sha256 prefix, and downloaded there when missing and online.
    """
    where = [d / WEIGHTS_NAME for d in search_dirs(None)]  # $GENLAB_DATA, then the cache
    if path:
        p = Path(path).expanduser()
        where.insert(0, p / WEIGHTS_NAME if p.is_dir() else p)
    found, corrupt = None, None
    for candidate in where:
        if candidate.is_file():
            if file_hash(candidate, "sha256").startswith(WEIGHTS_SHA256_PREFIX):
                found = candidate
                break
            corrupt = corrupt or candidate
    if found is None:
        reason = "downloads are off ($GENLAB_OFFLINE is set)"
        if not os.environ.get("GENLAB_OFFLINE"):
            try:
                download(WEIGHTS_URL, cache_dir() / WEIGHTS_NAME, sha256_prefix=WEIGHTS_SHA256_PREFIX)
                found = cache_dir() / WEIGHTS_NAME
            except OSError as e:
                reason = f"download failed: {' '.join(str(e).split())}"  # one line
    if found is None:
        if corrupt:
            reason = f"{corrupt} is not the published file (sha256 does not begin {WEIGHTS_SHA256_PREFIX}); {reason}"
        places = ", ".join(str(p) for p in dict.fromkeys(where))
        raise GenlabError(f"FID Inception weights not found: put {WEIGHTS_NAME} (from {WEIGHTS_URL}) at one of: "
                          f"{places}; {reason}; `--features domain` works offline without them")
    # weights_only: loading a checkpoint must never run code from it
    state = torch.load(found, map_location=device, weights_only=True)
    net = FIDInception()
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False)
