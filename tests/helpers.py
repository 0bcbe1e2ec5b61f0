"""Small helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from varlib.config import TokenizerConfig
from varlib.tokenizer import VQVAE

TINY_TOKENIZER = TokenizerConfig(in_channels=1, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, vocab_size=32,
                                 scales=(1, 2, 3, 4))


def randomised(model, seed=0):
    """Weights far from the near-identity init, so every dependency shows up in the outputs; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def tiny_vae(**changes) -> VQVAE:
    """An untrained 16 px tokenizer (seeded), `TINY_TOKENIZER` with `changes`, in eval mode."""
    torch.manual_seed(0)
    return VQVAE(dataclasses.replace(TINY_TOKENIZER, **changes)).eval()


def random_images(cfg: TokenizerConfig, n: int = 3) -> torch.Tensor:
    """n seeded random images in [-1, 1] that fit the tokenizer `cfg`."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g) * 2 - 1


def image_folder(root: Path, classes: int, per_class: int = 6, size: int = 20, seed: int = 0,
                 prefix: str = "class_") -> Path:
    """A folder of random RGB PNGs with one sub-folder per class, <prefix>00, <prefix>01, ..."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"{prefix}{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{prefix}{c:02d}" / f"{i}.png")
    return root
