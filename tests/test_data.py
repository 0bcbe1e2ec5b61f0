import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varlib.config import DataConfig, get_profile
from varlib.data import FMNIST_FILES, DataError, fashion_mnist_dir, load_split, to_uint8


def test_fashion_mnist_real_files():
    cfg = DataConfig()
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.images_u8.shape == (60_000, 1, 32, 32) and test.images_u8.shape == (10_000, 1, 32, 32)
    assert set(train.labels.unique().tolist()) == set(range(10)) == set(test.labels.unique().tolist())
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    x, y = test[0]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and -1 <= x.min() < x.max() <= 1
    # 28x28 padded to 32x32 with background: the 2-pixel border is empty
    assert train.images_u8[:, :, :2].max() == 0 and train.images_u8[:, :, :, -2:].max() == 0
    assert torch.equal(to_uint8(test.float_images(slice(0, 8))), test.images_u8[:8])


def test_fashion_mnist_rgb_and_limit():
    ds = load_split(DataConfig(channels=3, limit_test=100), "test")
    assert ds.images_u8.shape == (100, 3, 32, 32)
    assert torch.equal(ds.images_u8[:, 0], ds.images_u8[:, 2])


def test_fashion_mnist_checksum_mismatch(tmp_path, monkeypatch):
    src = fashion_mnist_dir()
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for f in FMNIST_FILES:
        shutil.copy(src / f, d / f)
    raw = bytearray(gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv("VARLIB_DATA", str(tmp_path))
    assert fashion_mnist_dir() == d
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        load_split(DataConfig(), "test")


def test_fashion_mnist_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("VARLIB_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("varlib.data.DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr("varlib.data.FMNIST_URL", "http://127.0.0.1:9/")  # nothing listens: offline
    with pytest.raises(DataError) as e:
        load_split(DataConfig(), "test")
    msg = str(e.value)
    assert "VARLIB_DATA" in msg and "apt-get install dataset-fashion-mnist" in msg and "downloaded" in msg


def _write_png(path: Path, size=(40, 30), color=128, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).convert(mode).save(path)


def _folder(root: Path, n=6):
    for c, color in (("cats", 40), ("dogs", 200)):
        for i in range(n):
            _write_png(root / c / f"{i}.png", color=color)
    return root


def test_image_folder_good(tmp_path):
    root = _folder(tmp_path / "ds")
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(root / "dogs" / "x.jpg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "cats" / "y.webp")
    cfg = DataConfig(name=str(root), resolution=16, channels=3, holdout=0.25)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.classes == ("cats", "dogs") and len(train) + len(test) == 14 and len(test) == 4
    assert train.images_u8.shape[1:] == (3, 16, 16)
    # deterministic, disjoint split
    again = load_split(cfg, "test")
    assert torch.equal(again.images_u8, test.images_u8) and torch.equal(again.labels, test.labels)
    gray = load_split(DataConfig(name=str(root), resolution=8, channels=1), "train")
    assert gray.images_u8.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize("damage, match", [
    ("truncated", "unreadable or truncated image"),
    ("notimage", "not an image file"),
    ("emptyclass", "empty class folder"),
    ("oneclass", "at least 2 are needed"),
    ("missing", "no such directory"),
])
def test_image_folder_bad(tmp_path, damage, match):
    root = _folder(tmp_path / "ds")
    bad = None
    if damage == "truncated":
        bad = root / "cats" / "3.png"
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "notimage":
        bad = root / "dogs" / "notes.txt"
        bad.write_text("hello")
    elif damage == "emptyclass":
        (root / "birds").mkdir()
        bad = root / "birds"
    elif damage == "oneclass":
        shutil.rmtree(root / "dogs")
    elif damage == "missing":
        root = tmp_path / "absent"
    cfg = DataConfig(name=str(root), resolution=16, channels=3, holdout=0.5)
    with pytest.raises(DataError, match=match) as e:
        load_split(cfg, "train")
        load_split(cfg, "test")
    assert str(bad or root) in str(e.value)


def test_image_folder_skip_bad_counts(tmp_path, caplog):
    root = _folder(tmp_path / "ds")
    (root / "cats" / "0.png").write_bytes(b"\x89PNG garbage")
    cfg = DataConfig(name=str(root), resolution=16, channels=3, holdout=0.01)
    ds = load_split(cfg, "train", skip_bad=True)
    assert len(ds) == 10 and len(ds.skipped) == 1 and "0.png" in ds.skipped[0]
    assert "skipped 1 bad file" in caplog.text


def test_profiles_adapt_to_resolution():
    p = get_profile("quick", resolution=64)
    assert p.tokenizer.resolution == 64 and p.var.scales == p.tokenizer.scales and p.tokenizer.scales[-1] == 16
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
