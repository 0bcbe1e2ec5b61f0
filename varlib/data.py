"""Datasets: Fashion-MNIST from its IDX files, and any folder of images with one sub-folder per class.

Images come out as float tensors in [-1, 1], shape (C, H, W); labels as ints. Splits are deterministic:
Fashion-MNIST's own train/test files; a seeded hold-out for image folders.

A dataset is known by its content, not its path: `dataset_id(cfg)` (what cache keys hold) hashes Fashion-MNIST's
verified IDX digests, or an image folder's manifest (every file's relative path, size and sha256), so editing an
image or pointing a relative path at another folder gives a new id, while moving a folder keeps it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import struct
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .artifacts import ArtifactError, atomic_write, cache_dir, cache_writable
from .config import DataConfig

log = logging.getLogger(__name__)

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX bytes: the Debian package re-compresses the upstream .gz files, so the .gz
# checksums differ by source while the contents agree.
FMNIST_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # how PIL opens 16-bit grayscale PNGs
RACY_MTIME_NS = 2_000_000_000  # files modified this shortly before being hashed are hashed again (coarse clocks)


class DataError(ValueError):
    """Bad or missing input data; the message names the file or directory and what to do."""


class ImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W); items are (float image in [-1, 1], label)."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], name: str):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise DataError(f"{name}: images must be uint8 (N, C, H, W), "
                            f"got {images_u8.dtype} {tuple(images_u8.shape)}")
        self.images_u8, self.labels, self.classes, self.name = images_u8, labels.long(), classes, name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float(self.images_u8[i]), int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def float_images(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        return to_float(self.images_u8 if idx is None else self.images_u8[idx])


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 pixels (rounding, clamped)."""
    return x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------- Fashion-MNIST

def fashion_mnist_dir() -> Path:
    """Where the four IDX files are: $VARLIB_DATA/fashion-mnist, the Debian package, or the cache (downloaded)."""
    candidates = []
    if os.environ.get("VARLIB_DATA"):
        candidates.append(Path(os.environ["VARLIB_DATA"]) / "fashion-mnist")
    candidates += [DEBIAN_DIR, cache_dir() / "data" / "fashion-mnist"]
    for d in candidates:
        if all((d / f).is_file() for f in FMNIST_FILES):
            return d
    target = candidates[-1]
    try:
        download_fashion_mnist(target)
    except OSError as e:
        raise DataError(
            "Fashion-MNIST not found and could not be downloaded "
            f"({type(e).__name__}: {e}). Provide the four IDX .gz files ({', '.join(FMNIST_FILES)}) in one of:\n"
            "  1. $VARLIB_DATA/fashion-mnist/  (set VARLIB_DATA to a folder of your choice)\n"
            f"  2. {DEBIAN_DIR}/  (Debian/Ubuntu: apt-get install dataset-fashion-mnist)\n"
            f"  3. {target}/  (downloaded here automatically when {FMNIST_URL} is reachable)"
        ) from e
    return target


def download_fashion_mnist(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for fname, sha in FMNIST_FILES.items():
        if (target / fname).is_file():
            continue
        tmp = target / (fname + ".part")
        log.info("downloading %s", FMNIST_URL + fname)
        with urllib.request.urlopen(FMNIST_URL + fname, timeout=30) as r:
            tmp.write_bytes(r.read())
        _check_idx(tmp, sha)
        tmp.replace(target / fname)


def _check_idx(path: Path, sha: str) -> bytes:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); delete it and provide the file again") from e
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        raise DataError(f"{path}: checksum mismatch (sha256 of the IDX content {got[:16]}..., expected {sha[:16]}...); "
                        "the file is corrupt or not Fashion-MNIST: delete it and provide it again")
    return raw


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str, cfg: DataConfig) -> ImageDataset:
    d = fashion_mnist_dir()
    prefix = {"train": "train", "test": "t10k"}[split]
    imgs, labels = (_parse_idx(_check_idx(d / f, FMNIST_FILES[f]), d / f)
                    for f in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(imgs.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    pad = (cfg.resolution - 28) // 2
    if cfg.resolution >= 28:  # 28x28 padded with background to 32x32 (the default)
        x = F.pad(x, (pad, cfg.resolution - 28 - pad, pad, cfg.resolution - 28 - pad))
    else:
        x = F.interpolate(x.float(), size=cfg.resolution, mode="area").round().to(torch.uint8)
    if cfg.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), FMNIST_CLASSES, f"fashion-mnist/{split}")


# ----------------------------------------------------------------------------------------------- image folders

@dataclass
class FolderIndex:
    files: list[Path]
    labels: list[int]
    classes: tuple[str, ...]


def _class_folders(root: Path) -> tuple[str, ...]:
    if not root.exists():
        raise DataError(f"{root}: no such directory; pass a folder with one sub-folder of images per class")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; pass a folder with one sub-folder of images per class")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"{root}: found no class sub-folder; put the images in one sub-folder per class "
                        "(a single class is fine)")
    return classes


def _class_entries(root: Path) -> tuple[tuple[str, ...], list[list[os.DirEntry]]]:
    """The class names and each class's files (sorted by name; hidden ones left out). os.scandir, not pathlib:
    `dataset_id` walks 60k-file folders on every call."""
    classes = _class_folders(root)
    per_class = []
    for c in classes:
        with os.scandir(root / c) as it:
            entries = sorted((e for e in it if e.is_file() and not e.name.startswith(".")), key=lambda e: e.name)
        if not entries:
            raise DataError(f"{root / c}: empty class folder; add images or remove the folder")
        per_class.append(entries)
    return classes, per_class


def index_folder(root: Path) -> FolderIndex:
    classes, per_class = _class_entries(root)
    files = [root / c / e.name for c, entries in zip(classes, per_class, strict=True) for e in entries]
    labels = [ci for ci, entries in enumerate(per_class) for _ in entries]
    return FolderIndex(files, labels, classes)


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (round(v / 257)); PIL's convert("L") would clip it at 255."""
    v = np.asarray(im).clip(0, 65535).astype(np.uint32)
    return Image.fromarray(((v + 128) // 257).astype(np.uint8))


def read_image(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """One image as uint8 (C, R, R): shorter side resized to R (bicubic, antialiased), centre-cropped."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in HIGH_BIT_DEPTH_MODES:
                im = _to_8bit(im)
            im = im.convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large for PIL's pixel limit (Image.MAX_IMAGE_PIXELS = "
                        f"{Image.MAX_IMAGE_PIXELS}; {e}); resize it, or raise the limit if you trust the file") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e
    w, h = im.size
    s = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC, reducing_gap=None)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def load_image_folder(split: str, cfg: DataConfig, skip_bad: bool = False) -> ImageDataset:
    """Decode a class-per-folder dataset into memory. Bad files raise, or with `skip_bad` are counted and logged."""
    index = index_folder(Path(cfg.name).expanduser())
    n = len(index.files)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = max(1, round(n * cfg.holdout))
    chosen = perm[:n_test] if split == "test" else perm[n_test:]
    chosen = chosen.sort().values
    images, labels, skipped = [], [], []
    for i in chosen.tolist():
        try:
            images.append(read_image(index.files[i], cfg.resolution, cfg.channels))
            labels.append(index.labels[i])
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if skipped:
        log.warning("%s (%s): skipped %d bad file(s) of %d:\n  %s", cfg.name, split, len(skipped), len(chosen),
                    "\n  ".join(skipped))
    if not images:
        raise DataError(f"{cfg.name}: no readable images in the {split} split")
    ds = ImageDataset(torch.stack(images), torch.tensor(labels), index.classes, f"{Path(cfg.name).name}/{split}")
    ds.skipped = skipped
    return ds


# ----------------------------------------------------------------------------------------------- identity

def dataset_classes(cfg: DataConfig) -> tuple[str, ...]:
    """The class names of the dataset named by `cfg`, without decoding any image."""
    return FMNIST_CLASSES if cfg.name == "fashion-mnist" else _class_folders(Path(cfg.name).expanduser())


def dataset_id(cfg: DataConfig) -> str:
    """What the dataset named by `cfg` is, by content: the identity that cache keys hold instead of a path.

    Fashion-MNIST: its four IDX content digests (every load verifies them). An image folder: its manifest, the
    sorted (relative path, size, sha256) of every file `index_folder` takes; a relative path is resolved against
    the current directory now. Byte-identical folders share an id wherever they are."""
    if cfg.name == "fashion-mnist":
        digest = hashlib.sha256(json.dumps(sorted(FMNIST_FILES.items())).encode()).hexdigest()
        return f"fashion-mnist:{digest[:16]}"
    root = Path(cfg.name).expanduser().resolve()
    manifest = folder_manifest(root)
    return f"folder:{hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16]}"


def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest_memo_path(root: Path) -> Path:
    """Where the content hashes of the image folder `root` (an absolute path) are remembered."""
    return cache_dir() / "data" / "manifests" / f"{hashlib.sha256(str(root).encode()).hexdigest()}.json"


def folder_manifest(root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every file of the image folder `root` (absolute), sorted. Hashes are
    remembered by (size, mtime_ns) in `manifest_memo_path(root)`: unchanged files are only stat'ed."""
    memo_path = manifest_memo_path(root)
    try:
        memo = json.loads(memo_path.read_text())
        known, checked_ns = memo["files"], memo["checked_ns"]
    except (OSError, ValueError, KeyError, TypeError):  # no memo yet, or a damaged one: hash everything
        known, checked_ns = {}, 0
    started_ns = time.time_ns()
    files, hashed = {}, 0
    for c, entries in zip(*_class_entries(root), strict=True):
        for e in entries:
            rel, st = f"{c}/{e.name}", e.stat()
            entry = known.get(rel)
            # an entry holds while size and mtime are unchanged, unless the file was modified so shortly before it
            # was hashed that a later write could have kept the same (coarse) mtime
            if entry is None or entry[:2] != [st.st_size, st.st_mtime_ns] or \
                    st.st_mtime_ns > checked_ns - RACY_MTIME_NS:
                entry, hashed = [st.st_size, st.st_mtime_ns, _file_sha256(e.path)], hashed + 1
            files[rel] = entry
    if hashed:
        log.info("%s: hashed %d of %d files", root, hashed, len(files))
    if (hashed or files.keys() != known.keys()) and cache_writable():
        memo = {"root": str(root), "checked_ns": started_ns, "files": files}
        try:
            atomic_write(memo_path, json.dumps(memo).encode())
        except (OSError, ArtifactError) as e:  # the memo only saves time
            log.warning("%s: could not write the manifest memo (%s); the folder is hashed again next time",
                        memo_path, e)
    return sorted((rel, size, sha) for rel, (size, _, sha) in files.items())


def load_split(cfg: DataConfig, split: str, skip_bad: bool = False) -> ImageDataset:
    """The `split` ("train" or "test") of the dataset named by `cfg`, limited to cfg.limit_* images."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    ds = load_fashion_mnist(split, cfg) if cfg.name == "fashion-mnist" else load_image_folder(split, cfg, skip_bad)
    limit = cfg.limit_train if split == "train" else cfg.limit_test
    if limit is not None and limit < len(ds):
        ds = ImageDataset(ds.images_u8[:limit], ds.labels[:limit], ds.classes, ds.name)
    return ds
