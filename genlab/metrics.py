"""Sample-quality metrics on feature arrays: FID, KID, precision/recall, Inception Score.

Pure functions of features (numpy or torch), whatever network produced them:
- Frechet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule
  converge to a local Nash equilibrium"), with the numerics of pytorch-fid and clean-fid.
- Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): unbiased
  MMD^2 with the cubic polynomial kernel over random subsets, as clean-fid's `kernel_distance`.
- Improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each point
  estimate each manifold, as in NVlabs' stylegan2-ada-pytorch `precision_recall.py`.
- Inception Score (Salimans et al. 2016, "Improved techniques for training GANs").
Written by hand because no usable library offers them without TF or torchvision.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg
from scipy.special import rel_entr


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1 normalised) of features (N, d), as pytorch-fid and clean-fid."""
    feats = _numpy(feats)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(_numpy(mu1)), np.atleast_1d(_numpy(mu2))
    sigma1, sigma2 = np.atleast_2d(_numpy(sigma1)), np.atleast_2d(_numpy(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    # pytorch-fid calls sqrtm(..., disp=False) and drops the error estimate; SciPy >= 1.16
    # deprecates `disp` (removed in 1.18) and returns the same root without it. A singular or
    # ill-conditioned product only warns: the result is checked explicitly below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # product (near-)singular, e.g. fewer samples than dimensions
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # numerical error can leave a slight imaginary component
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_inception_distance(feats1, feats2, num_subsets: int = 100, max_subset_size: int = 1000,
                              seed: int = 0) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets of equal size m.

    Same draws as clean-fid's `kernel_distance` after `np.random.seed(seed)`; computed in float64.
    """
    feats1, feats2 = _numpy(feats1), _numpy(feats2)
    rng = np.random.RandomState(seed)
    d = feats1.shape[1]
    m = min(feats1.shape[0], feats2.shape[0], max_subset_size)
    t = 0.0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        # within-set terms drop i == j (unbiased); the cross term keeps every pair
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def _kth_nn_radii(manifold: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set, itself excluded."""
    # the point itself is at distance 0, so the (k + 1)-th smallest distance is its k-th neighbour
    return torch.cat([torch.cdist(rows, manifold).kthvalue(k + 1, dim=1).values
                      for rows in manifold.split(batch_size)])


def _coverage(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of probes inside the k-NN ball of at least one manifold point."""
    inside = [(torch.cdist(rows, manifold) <= radii).any(dim=1) for rows in probes.split(batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real, fake, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake one).

    Distances are taken `batch_size` rows at a time with torch.cdist, so 10,000 x 10,000 points
    need only batch_size x N floats; they are computed in the dtype and on the device given.
    """
    real = torch.as_tensor(real)
    fake = torch.as_tensor(fake, dtype=real.dtype, device=real.device)
    if k >= min(len(real), len(fake)):
        raise ValueError(f"k = {k} needs more than k points in each set, got {len(real)} and {len(fake)}")
    with torch.no_grad():
        precision = _coverage(fake, real, _kth_nn_radii(real, k, batch_size), batch_size)
        recall = _coverage(real, fake, _kth_nn_radii(fake, k, batch_size), batch_size)
    return precision, recall


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) on each of `splits` parts of the class probabilities (N, C).

    Returns the mean and standard deviation over parts, split as in the original TF code.
    """
    probs = _numpy(probs)
    n = probs.shape[0]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        p_y = part.mean(axis=0, keepdims=True)  # marginal p(y) over this part
        kl = rel_entr(part, p_y).sum(axis=1)  # rel_entr takes 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
