import gzip
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from varlib.config import DataConfig, get_profile
from varlib.data import (
    FMNIST_CLASSES,
    FMNIST_FILES,
    DataError,
    dataset_classes,
    dataset_id,
    fashion_mnist_dir,
    load_split,
    manifest_memo_path,
    read_image,
    to_uint8,
)


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
    ("noclass", "found no class sub-folder"),
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
    elif damage == "noclass":
        shutil.rmtree(root / "dogs")
        shutil.rmtree(root / "cats")
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


def test_one_class_folder_loads(tmp_path):
    root = _folder(tmp_path / "ds")
    shutil.rmtree(root / "dogs")
    cfg = DataConfig(name=str(root), resolution=16, channels=3, holdout=0.5)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.classes == ("cats",) == dataset_classes(cfg) and len(train) == len(test) == 3
    assert set(train.labels.tolist()) == {0}


def test_dataset_classes_without_decoding(tmp_path):
    root = _folder(tmp_path / "ds")
    for p in root.rglob("*.png"):
        p.write_bytes(b"not decodable")
    assert dataset_classes(DataConfig(name=str(root))) == ("cats", "dogs")
    assert dataset_classes(DataConfig()) == FMNIST_CLASSES


def test_sixteen_bit_ramp_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL reads it as 16-bit: convert("L") would clip 99.6% of it to 255
    expected = torch.from_numpy(np.round(ramp / 257).astype(np.uint8))
    assert torch.equal(read_image(path, 16, 1)[0], expected)
    rgb = read_image(path, 16, 3)
    assert all(torch.equal(rgb[c], expected) for c in range(3))


def test_decompression_bomb_is_named_and_skipped(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds", n=3)
    bomb = root / "dogs" / "huge.png"
    _write_png(bomb, size=(200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 40x30 images pass, 200x200 is over twice the limit
    with pytest.raises(DataError, match=f"{bomb}: image too large for PIL's pixel limit.*MAX_IMAGE_PIXELS = 5000"):
        read_image(bomb, 16, 3)
    cfg = DataConfig(name=str(root), resolution=16, channels=3, holdout=0.3)
    skipped = [e for split in ("train", "test") for e in load_split(cfg, split, skip_bad=True).skipped]
    assert len(skipped) == 1 and "huge.png" in skipped[0]
    with pytest.raises(DataError, match="huge.png: image too large"):
        for split in ("train", "test"):
            load_split(cfg, split)


def test_fashion_mnist_id_from_digests(tmp_path, monkeypatch):
    monkeypatch.setattr("varlib.data.DEBIAN_DIR", tmp_path / "no-debian")  # the id needs no file
    monkeypatch.setenv("VARLIB_DATA", str(tmp_path / "nowhere"))
    ident = dataset_id(DataConfig())
    assert ident.startswith("fashion-mnist:") and len(ident) == len("fashion-mnist:") + 16
    assert dataset_id(DataConfig(resolution=28, channels=3)) == ident  # the data, not how it is presented
    monkeypatch.setitem(FMNIST_FILES, "t10k-labels-idx1-ubyte.gz", "0" * 64)
    assert dataset_id(DataConfig()) != ident


def _age(*files: Path, seconds=86_400) -> None:
    """Set mtimes a day back: a dataset that has sat on disk (files modified just now are hashed again)."""
    for p in files:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_folder_id_follows_content_not_path(tmp_path, monkeypatch, fresh_cache):
    a, b = _folder(tmp_path / "a" / "ds"), _folder(tmp_path / "b" / "ds")
    _write_png(b / "dogs" / "0.png", color=201)
    for pa in a.rglob("*.png"):  # copies with the same sizes and mtimes (cp -p), one file's content differs
        _age(pa)
        pb = b / pa.relative_to(a)
        assert pb.stat().st_size == pa.stat().st_size
        os.utime(pb, ns=(pa.stat().st_atime_ns, pa.stat().st_mtime_ns))
    cfg = DataConfig(name="ds")  # relative: resolved against the current directory at each call
    monkeypatch.chdir(tmp_path / "a")
    id_a = dataset_id(cfg)
    monkeypatch.chdir(tmp_path / "b")
    id_b = dataset_id(cfg)
    assert id_a.startswith("folder:") and id_a != id_b
    assert manifest_memo_path(a.resolve()).is_file() and manifest_memo_path(b.resolve()).is_file()
    _write_png(b / "dogs" / "0.png", color=200)  # now byte-identical to a: same data, same id
    assert dataset_id(cfg) == id_a
    _write_png(b / "cats" / "5.png", color=41)
    assert dataset_id(cfg) != id_a
    assert dataset_id(DataConfig(name=str(a))) == id_a


def test_manifest_memo_is_reused(tmp_path, fresh_cache):
    import varlib.data as data

    root = _folder(tmp_path / "ds")
    _age(*root.rglob("*.png"))
    cfg = DataConfig(name=str(root))
    with mock.patch.object(data, "_file_sha256", wraps=data._file_sha256) as hashing:
        first = dataset_id(cfg)
        assert hashing.call_count == 12
        memo = json.loads(manifest_memo_path(root.resolve()).read_text())
        assert memo["root"] == str(root.resolve()) and len(memo["files"]) == 12
        assert dataset_id(cfg) == first and hashing.call_count == 12  # unchanged files: only stat'ed
        _write_png(root / "cats" / "2.png", color=99)  # fresh mtime: hashed now, and again until it is older
        second = dataset_id(cfg)
        assert second != first and hashing.call_count == 13
        assert dataset_id(cfg) == second and hashing.call_count == 14
        _age(root / "cats" / "2.png")
        dataset_id(cfg)
        assert hashing.call_count == 15
        assert dataset_id(cfg) == second and hashing.call_count == 15
        (root / "dogs" / "5.png").unlink()
        assert dataset_id(cfg) != second and hashing.call_count == 15
    assert len(json.loads(manifest_memo_path(root.resolve()).read_text())["files"]) == 11


def test_manifest_with_read_only_cache(tmp_path, fresh_cache, monkeypatch):
    root = _folder(tmp_path / "ds")
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "1")
    ident = dataset_id(DataConfig(name=str(root)))
    assert not fresh_cache.exists()
    monkeypatch.delenv("VARLIB_CACHE_READONLY")
    assert dataset_id(DataConfig(name=str(root))) == ident and manifest_memo_path(root.resolve()).is_file()


def test_profiles_adapt_to_resolution():
    p = get_profile("quick", resolution=64)
    assert p.tokenizer.resolution == 64 and p.var.scales == p.tokenizer.scales and p.tokenizer.scales[-1] == 16
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
