import gzip
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data
from genlab.data import EpochBatches, load_dataset, read_idx, text_points
from genlab.errors import GenlabError


def test_digits_resized_with_fixed_split():
    a = load_dataset("digits", image_size=16)
    b = load_dataset("digits", image_size=16)
    assert a.train.shape == (1497, 1, 16, 16) and a.test.shape == (300, 1, 16, 16)
    assert a.train.dtype == torch.uint8 and a.train.max() > 200
    assert torch.equal(a.test, b.test) and torch.equal(a.test_labels, b.test_labels)
    assert sorted(a.train_labels.unique().tolist()) == list(range(10))
    assert load_dataset("digits").train.shape[-1] == 32  # the family default size when the data has none


def test_digits_file_read_directly_is_what_scikit_learn_loads():
    from sklearn.datasets import load_digits

    from genlab.data import _sklearn_digits

    pixels, target = _sklearn_digits()
    d = load_digits()
    assert np.array_equal(pixels, d.data) and np.array_equal(target, d.target)


def test_mnist_from_shared_idx_files():
    d = load_dataset("mnist", data_dir=str(shared_data("mnist")))
    assert d.train.shape == (60000, 1, 28, 28) and d.test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert load_dataset("mnist", data_dir=str(shared_data("mnist")), image_size=32).train.shape[-1] == 32


def test_fashion_mnist_is_not_confused_with_mnist():
    """Both sets use the same file names; the checksums tell them apart."""
    root = shared_data("mnist").parent
    d = load_dataset("fashion-mnist", data_dir=str(root))
    assert d.classes[9] == "Ankle boot"
    assert torch.bincount(d.test_labels).tolist() == [1000] * 10
    with pytest.raises(GenlabError, match="do not have the published checksums"):
        load_dataset("fashion-mnist", data_dir=str(root / "mnist"), download=False)


def test_missing_mnist_names_the_files_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENLAB_DATA", raising=False)
    with pytest.raises(GenlabError) as e:
        load_dataset("mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg and "\n" not in msg


def test_corrupt_idx_file_is_reported(tmp_path):
    src = shared_data("mnist")
    for f in src.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.raises(GenlabError, match="checksums"):
        load_dataset("mnist", data_dir=str(tmp_path), download=False)


def test_read_idx_rejects_truncated_files(tmp_path):
    p = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(5))
    with pytest.raises(GenlabError, match="truncated"):
        read_idx(p)


def test_folder_of_images_with_a_corrupt_file(tmp_path, capsys):
    rng = np.random.RandomState(0)
    for i in range(30):
        Image.fromarray(rng.randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    d = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert "broken.jpg" in capsys.readouterr().err
    assert len(d.train) + len(d.test) == 30 and len(d.test) >= 1
    assert d.train.shape[1:] == (3, 16, 16) and d.train_labels is None
    grey = load_dataset(f"folder:{tmp_path}", image_size=8, channels=1)
    assert grey.train.shape[1:] == (1, 8, 8)


def test_folder_subfolders_become_labels(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.new("RGB", (10, 10), (i * 20, 0, 0)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert d.classes == ["cats", "dogs"]
    assert set(d.train_labels.tolist()) == {0, 1}


def test_afhq_cats_at_32():
    d = load_dataset(f"folder:{shared_data('afhq-cat') / 'cat'}", image_size=32)
    assert len(d.train) + len(d.test) == 1000
    assert d.train.shape[1:] == (3, 32, 32)
    assert 80 < len(d.test) < 130  # about a tenth, by a stable hash of the file names


def test_folder_errors(tmp_path):
    with pytest.raises(GenlabError, match="no such directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(GenlabError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")


def test_unknown_dataset():
    with pytest.raises(GenlabError, match="unknown data set 'nonsense'"):
        load_dataset("nonsense")


@pytest.mark.parametrize("name", ["moons", "swiss-roll", "8gaussians", "checkerboard", "rings", "text:CS446"])
def test_toy_sets(name):
    d = load_dataset(name)
    assert d.kind == "points" and d.train.shape == (20000, 2) and d.test.shape == (5000, 2)
    assert torch.isfinite(d.train).all() and d.train.abs().max() < 10
    assert not torch.equal(d.train[:100], d.test[:100])


def test_text_points_cover_every_character_in_order():
    x, labels, chars = text_points("CS446", 20000, seed=0)
    assert chars == list("CS446")
    assert set(labels.tolist()) == {0, 1, 2, 3, 4}
    centres = [x[labels == k, 0].mean() for k in range(5)]
    assert centres == sorted(centres)  # characters left to right
    assert abs(x[:, 1].max() - x[:, 1].min() - 1.0) < 0.05  # one unit tall, as seed 002's pattern
    assert 4 < x[:, 0].max() - x[:, 0].min() < 5


def test_epoch_batches_are_a_function_of_seed_and_epoch_and_shard_the_global_batch():
    s = EpochBatches(100, 10, seed=3)
    s.set_position(2, 0)
    full = list(s)
    s.set_position(2, 4)
    assert list(s) == full[4:]  # starting mid-epoch, as a resumed run does
    s0, s1 = EpochBatches(100, 10, 3, rank=0, world=2), EpochBatches(100, 10, 3, rank=1, world=2)
    for s_ in (s0, s1):
        s_.set_position(2, 0)
    assert [a + b for a, b in zip(s0, s1)] == full
    s.set_position(3, 0)
    assert list(s) != full
