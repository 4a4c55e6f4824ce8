"""Evaluation maths against independent oracles, and the FID Inception against its published layout."""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from genlab import inception, metrics
from genlab.errors import GenlabError
from genlab.inception import WEIGHTS_NAME, FIDInception, clean_resize, load_fid_inception
from genlab.metrics import (feature_stats, frechet_distance, inception_score, kernel_inception_distance,
                            precision_recall)


def correlated_gaussian(rng, n, d, shift=0.0):
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / math.sqrt(d) + shift


# ---------------------------------------------------------------------------
# Frechet distance


def test_feature_stats_are_the_sample_mean_and_unbiased_covariance():
    x = np.random.default_rng(0).normal(size=(40, 3))
    mu, sigma = feature_stats(torch.from_numpy(x))
    xc = x - x.sum(0) / 40
    np.testing.assert_allclose(mu, x.sum(0) / 40, rtol=1e-12)
    np.testing.assert_allclose(sigma, xc.T @ xc / 39, rtol=1e-12)


def test_frechet_distance_matches_the_symmetric_square_root_formula():
    rng = np.random.default_rng(0)
    mu1, s1 = feature_stats(correlated_gaussian(rng, 500, 64))
    mu2, s2 = feature_stats(correlated_gaussian(rng, 500, 64, shift=0.3))
    # tr (s1 s2)^(1/2) = tr (s1^(1/2) s2 s1^(1/2))^(1/2), a root of a symmetric PSD matrix
    r1 = linalg.sqrtm(s1).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_of_diagonal_gaussians_in_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    a, b = rng.uniform(0.1, 3, size=10), rng.uniform(0.1, 3, size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(2)
    mu1, s1 = feature_stats(rng.normal(size=(50, 100)))  # rank-49 covariances
    mu2, s2 = feature_stats(rng.normal(size=(50, 100)) + 0.1)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(d) and d > 0


def test_frechet_distance_retries_with_eps_and_drops_small_imaginary_parts(monkeypatch):
    sqrtm, calls = linalg.sqrtm, []

    def nan_then_complex(a, *args):
        calls.append(a)
        if len(calls) == 1:
            return np.full_like(a, np.nan)
        return sqrtm(a) + 1e-5j  # numerical noise below the 1e-3 tolerance

    monkeypatch.setattr(metrics.linalg, "sqrtm", nan_then_complex)
    a, b = np.array([1.0, 2.0]), np.array([3.0, 0.5])
    d = frechet_distance(np.zeros(2), np.diag(a), np.ones(2), np.diag(b), eps=0.01)
    np.testing.assert_allclose(calls[1], np.diag((a + 0.01) * (b + 0.01)))  # eps * I added to both
    assert d == pytest.approx(2 + np.sum(a + b - 2 * np.sqrt((a + 0.01) * (b + 0.01))), rel=1e-12)

    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda a, *args: sqrtm(a) + 1e-2j)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag(a), np.ones(2), np.diag(b))


# ---------------------------------------------------------------------------
# KID


def brute_force_mmd2(x, y):
    """Unbiased MMD^2 of clean-fid/Binkowski et al. with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_is_the_unbiased_mmd2_of_the_whole_sets():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.5
    # one subset of m = 12 is a permutation of each whole set, and MMD^2 does not depend on order
    kid = kernel_inception_distance(x, y, num_subsets=1, max_subset_size=1000)
    assert kid == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted_ones():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    same = kernel_inception_distance(a, b, num_subsets=10, max_subset_size=500)
    shifted = kernel_inception_distance(a, b + 0.5, num_subsets=10, max_subset_size=500)
    assert abs(same) < 0.02 and shifted > 0.5
    assert kernel_inception_distance(a, b, num_subsets=3, max_subset_size=100, seed=7) == \
        kernel_inception_distance(a, b, num_subsets=3, max_subset_size=100, seed=7)


# ---------------------------------------------------------------------------
# Precision and recall


def brute_force_precision_recall(real, fake, k):
    def radii(x):  # column 0 of each sorted row is the point itself
        return np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, k]

    def coverage(probes, manifold, r):
        return np.mean((np.linalg.norm(probes[:, None] - manifold[None], axis=-1) <= r[None]).any(axis=1))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_in_batches():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 8)), 1.2 * rng.normal(size=(200, 8)) + 0.3
    for k in (1, 3, 5):
        got = precision_recall(real, fake, k=k, batch_size=64)
        expected = brute_force_precision_recall(real, fake, k)
        assert got == pytest.approx(expected, abs=1e-12)
        assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_precision_recall_on_constructed_cases():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(500, 2))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    # a tight cluster at the centre of the real data: all of it is realistic, little of the data is covered
    cluster = 0.01 * rng.normal(size=(500, 2))
    precision, recall = precision_recall(torch.from_numpy(real), torch.from_numpy(cluster))
    assert precision == 1.0 and recall < 0.05
    assert (precision, recall) == pytest.approx(brute_force_precision_recall(real, cluster, 3), abs=1e-12)
    # balls are closed, as in the reference (<=): 3.0 lies exactly on the ball of radius 1 around 2.0
    line = np.array([[0.0], [1.0], [2.0]])
    assert precision_recall(line, np.array([[3.0], [-1.0], [1.5], [5.0]]), k=1) == (0.75, 1.0)
    with pytest.raises(ValueError):
        precision_recall(real[:3], real[:3], k=3)


# ---------------------------------------------------------------------------
# Inception Score


def test_inception_score_of_uniform_and_of_confident_even_predictions():
    assert inception_score(np.full((100, 10), 0.1), splits=10) == pytest.approx((1.0, 0.0))
    one_hot = np.eye(10)[np.arange(1000) % 10]  # each split holds every class equally often
    assert inception_score(one_hot, splits=10) == pytest.approx((10.0, 0.0))


def test_inception_score_matches_the_definition_split_by_split():
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(103, 7)) * 2), dim=1).numpy()
    scores = []
    for i in range(4):
        part = probs[i * 103 // 4:(i + 1) * 103 // 4]
        p_y = [sum(p[c] for p in part) / len(part) for c in range(7)]
        kl = [sum(p[c] * math.log(p[c] / p_y[c]) for c in range(7)) for p in part]
        scores.append(math.exp(sum(kl) / len(kl)))
    assert inception_score(probs, splits=4) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)


# ---------------------------------------------------------------------------
# FID Inception: the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth


def block_a(c, pool):  # 35x35 (Szegedy et al. 2016, fig. 5)
    return {"branch1x1": (64, c, 1, 1), "branch5x5_1": (48, c, 1, 1), "branch5x5_2": (64, 48, 5, 5),
            "branch3x3dbl_1": (64, c, 1, 1), "branch3x3dbl_2": (96, 64, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3),
            "branch_pool": (pool, c, 1, 1)}


def block_b(c):  # 35x35 -> 17x17 reduction
    return {"branch3x3": (384, c, 3, 3), "branch3x3dbl_1": (64, c, 1, 1), "branch3x3dbl_2": (96, 64, 3, 3),
            "branch3x3dbl_3": (96, 96, 3, 3)}


def block_c(c, c7):  # 17x17 with factorised 7x7 (fig. 6)
    return {"branch1x1": (192, c, 1, 1), "branch7x7_1": (c7, c, 1, 1), "branch7x7_2": (c7, c7, 1, 7),
            "branch7x7_3": (192, c7, 7, 1), "branch7x7dbl_1": (c7, c, 1, 1), "branch7x7dbl_2": (c7, c7, 7, 1),
            "branch7x7dbl_3": (c7, c7, 1, 7), "branch7x7dbl_4": (c7, c7, 7, 1), "branch7x7dbl_5": (192, c7, 1, 7),
            "branch_pool": (192, c, 1, 1)}


def block_d(c):  # 17x17 -> 8x8 reduction
    return {"branch3x3_1": (192, c, 1, 1), "branch3x3_2": (320, 192, 3, 3), "branch7x7x3_1": (192, c, 1, 1),
            "branch7x7x3_2": (192, 192, 1, 7), "branch7x7x3_3": (192, 192, 7, 1), "branch7x7x3_4": (192, 192, 3, 3)}


def block_e(c):  # 8x8 with expanded filter banks (fig. 7)
    return {"branch1x1": (320, c, 1, 1), "branch3x3_1": (384, c, 1, 1), "branch3x3_2a": (384, 384, 1, 3),
            "branch3x3_2b": (384, 384, 3, 1), "branch3x3dbl_1": (448, c, 1, 1), "branch3x3dbl_2": (384, 448, 3, 3),
            "branch3x3dbl_3a": (384, 384, 1, 3), "branch3x3dbl_3b": (384, 384, 3, 1), "branch_pool": (192, c, 1, 1)}


CONV_SHAPES = {
    "Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
    "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3),
    **{f"{block}.{branch}": shape for block, table in [
        ("Mixed_5b", block_a(192, 32)), ("Mixed_5c", block_a(256, 64)), ("Mixed_5d", block_a(288, 64)),
        ("Mixed_6a", block_b(288)), ("Mixed_6b", block_c(768, 128)), ("Mixed_6c", block_c(768, 160)),
        ("Mixed_6d", block_c(768, 160)), ("Mixed_6e", block_c(768, 192)), ("Mixed_7a", block_d(768)),
        ("Mixed_7b", block_e(1280)), ("Mixed_7c", block_e(2048))] for branch, shape in table.items()},
}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FIDInception().eval()


def test_state_dict_names_and_shapes_are_the_published_ones(net):
    expected = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for name, shape in CONV_SHAPES.items():
        expected[f"{name}.conv.weight"] = shape
        for stat in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{name}.bn.{stat}"] = (shape[0],)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(CONV_SHAPES) == 94 and len(expected) == 472
    assert got == expected
    assert all(not isinstance(m, torch.nn.Conv2d) or m.bias is None for m in net.modules())
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_parameter_count_is_the_published_one(net):
    # torchvision lists 27,161,264 parameters for Inception3 with its aux classifier and 1000
    # classes; the FID graph has no aux classifier and 1008 classes.
    aux = (128 * 768 + 2 * 128) + (768 * 128 * 5 * 5 + 2 * 768) + (768 * 1000 + 1000)
    learnable = 27_161_264 - aux - (2048 * 1000 + 1000) + (2048 * 1008 + 1008)
    assert sum(p.numel() for p in net.parameters()) == learnable == 23_850_960
    # 23,885,392 values, 472 arrays, counting the BatchNorm running statistics too, as the JAX
    # port of these weights checks them
    stats = sum(v.numel() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var")))
    assert learnable + stats == 23_885_392


def test_forward_gives_pool3_features_and_logits(net):
    with torch.no_grad():
        pool3, logits = net(torch.rand(2, 3, 64, 64))
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool3).all() and torch.isfinite(logits).all()


def test_pools_follow_the_tf_graph(net):
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)
    # TF leaves the zero padding out of the mean, so a constant image stays constant at the border
    assert torch.equal(inception.tf_avg_pool(torch.ones(1, 2, 5, 5)), torch.ones(1, 2, 5, 5))
    assert torch.equal(net.Mixed_7b.pool(x), inception.tf_avg_pool(x))
    assert torch.equal(net.Mixed_7c.pool(x), F.max_pool2d(x, 3, stride=1, padding=1))


def pil_bicubic_float(channel: np.ndarray, size: int) -> np.ndarray:
    """clean-fid's resize of one channel, written out: PIL bicubic on a float32 ("F") image, then clipped."""
    from PIL import Image

    im = Image.fromarray(channel.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(im)


def test_clean_resize_matches_clean_fid_on_sharp_edges():
    # a binary digit: bicubic overshoots at its edges, and clean-fid clips the overshoot
    from genlab.data import load_dataset

    x = load_dataset("digits", image_size=28).test[:3]
    x = (x > 127).to(torch.uint8) * 255  # (3, 1, 28, 28) in {0, 255}
    out = clean_resize(x, size=299)
    assert out.shape == (3, 1, 299, 299) and out.dtype == torch.float32
    raw = pil_bicubic_float(x[0, 0].numpy(), 299)
    assert raw.min() < -1 and raw.max() > 256  # the case that matters: unclipped, it leaves [0, 255]
    np.testing.assert_array_equal(out[0, 0].numpy(), raw.clip(0, 255))
    assert 0 <= out.min() and out.max() <= 255 and not torch.equal(out, out.round())  # floats, not re-quantised


def test_clean_resize_leaves_smooth_images_unchanged_by_the_clip():
    yy, xx = np.mgrid[0:20, 0:20]
    blob = 40 + 150 * np.exp(-((yy - 9.5) ** 2 + (xx - 9.5) ** 2) / 40)  # inside (0, 255) with room to spare
    x = torch.from_numpy(np.stack([blob, blob[::-1].copy(), blob.T.copy()])[None]).to(torch.uint8)
    out = clean_resize(x, size=37)
    for c in range(3):
        raw = pil_bicubic_float(x[0, c].numpy(), 37)
        assert 0 < raw.min() and raw.max() < 255
        np.testing.assert_array_equal(out[0, c].numpy(), raw)


# ---------------------------------------------------------------------------
# Loading the weights


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENLAB_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    return tmp_path


def test_missing_weights_offline_is_one_clear_line(dirs):
    with pytest.raises(GenlabError) as e:
        load_fid_inception()
    msg = str(e.value)
    assert "\n" not in msg
    assert WEIGHTS_NAME in msg and str(dirs / "data") in msg and str(dirs / "cache") in msg
    assert "--features domain" in msg


def test_a_file_with_the_wrong_checksum_is_refused(dirs):
    bad = dirs / "data" / WEIGHTS_NAME
    bad.write_bytes(b"not the inception weights")
    for path in (None, bad):
        with pytest.raises(GenlabError, match="sha256") as e:
            load_fid_inception(path)
        assert "\n" not in str(e.value)


def test_weights_with_the_expected_checksum_load_unchanged(dirs, monkeypatch, net):
    path = dirs / "weights" / "mine.pth"
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    loaded = load_fid_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], net(x)[0])


class RunsCode:
    ran = False

    def __reduce__(self):
        return (setattr, (RunsCode, "ran", True))


def test_loading_never_runs_code_from_the_file(dirs, monkeypatch):
    path = dirs / "data" / WEIGHTS_NAME
    torch.save({"fc.weight": RunsCode()}, path)
    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    with pytest.raises(Exception):
        load_fid_inception()
    assert not RunsCode.ran
