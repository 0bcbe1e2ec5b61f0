"""Datasets: Fashion-MNIST from its IDX files, and any folder of images with one sub-folder per class.

Images come out as float tensors in [-1, 1], shape (C, H, W); labels as ints. Splits are deterministic:
Fashion-MNIST's own train/test files; a seeded hold-out for image folders.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .artifacts import cache_dir
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


def index_folder(root: Path) -> FolderIndex:
    if not root.exists():
        raise DataError(f"{root}: no such directory; pass a folder with one sub-folder of images per class")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; pass a folder with one sub-folder of images per class")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class sub-folder(s); at least 2 are needed "
                        "(one sub-folder per class, images inside)")
    files, labels = [], []
    for ci, c in enumerate(classes):
        entries = sorted(p for p in (root / c).iterdir() if p.is_file() and not p.name.startswith("."))
        if not entries:
            raise DataError(f"{root / c}: empty class folder; add images or remove the folder")
        for p in entries:
            files.append(p)
            labels.append(ci)
    return FolderIndex(files, labels, classes)


def read_image(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """One image as uint8 (C, R, R): shorter side resized to R (bicubic, antialiased), centre-cropped."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)})")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
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


def load_split(cfg: DataConfig, split: str, skip_bad: bool = False) -> ImageDataset:
    """The `split` ("train" or "test") of the dataset named by `cfg`, limited to cfg.limit_* images."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    ds = load_fashion_mnist(split, cfg) if cfg.name == "fashion-mnist" else load_image_folder(split, cfg, skip_bad)
    limit = cfg.limit_train if split == "train" else cfg.limit_test
    if limit is not None and limit < len(ds):
        ds = ImageDataset(ds.images_u8[:limit], ds.labels[:limit], ds.classes, ds.name)
    return ds
