"""The feature classifier behind the generation metrics: a small ResNet trained on the dataset's own training split.

torch-fidelity's Inception-v3 weights cannot be downloaded offline, so FID, KID and precision-recall are computed on
this classifier's penultimate features and IS on its logits (`metrics.generation_metrics`); it also scores
class-conditional samples (`class_consistency`). `Study.classifier` caches it as artifact kind "classifier":
`train_classifier` returns the payload (plain values and tensors, stored with weights_only=True) and
`classifier_from_artifact` turns a stored payload into a `Classifier`. Its features are also the tokenizer's default
perceptual loss (`PerceptualDistance`), where LPIPS's ImageNet backbone is not at hand.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import ArtifactError
from .data import ImageDataset, to_float

log = logging.getLogger(__name__)

CLASSIFIER_WIDTHS = (32, 64, 128)  # one residual block per stage; the last width is the feature dimension
CLASSIFIER_RECIPE = {"batch_size": 128, "lr": 2e-3, "weight_decay": 5e-4, "shift": 2, "hflip": True}


class MetricInputError(ValueError):
    """Images of the wrong dtype, range, shape or count for a metric or the classifier; the message says what to
    change."""


# ----------------------------------------------------------------------------------------------- the network

class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convolutions and a projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """A small ResNet for 1- or 3-channel images in [-1, 1]: a full-resolution stem, one stride-2 block per width,
    global average pooling (the penultimate features) and a linear head (the logits)."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = CLASSIFIER_WIDTHS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        pairs = zip(widths[:1] + widths[:-1], widths, strict=True)
        self.blocks = nn.Sequential(*(BasicBlock(c_in, c_out, stride=2) for c_in, c_out in pairs))
        self.head = nn.Linear(widths[-1], num_classes)
        self.feature_dim = widths[-1]

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x_BCHW)).mean((2, 3))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x_BCHW))


class PerceptualDistance(nn.Module):
    """A perceptual distance on the classifier's features, computed as LPIPS (Zhang et al. 2018, Eq. 1) computes it
    on an ImageNet network's, without its learned linear heads (they weigh AlexNet's channels, not these): the
    activations of the stem and of every residual block, each unit-normalised over channels at every position,
    their squared difference summed over channels and averaged over positions, then averaged over the layers.
    forward(x, y) gives one distance per image, (B,), in [0, 4], for images in [-1, 1].

    The network is frozen and stays in eval mode, so BatchNorm keeps its running statistics whatever mode the
    caller sets; gradients reach the images."""

    def __init__(self, model: ResNetClassifier):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualDistance:
        return super().train(False)

    def layers(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """The compared activations: the stem's output and each block's, channels unit-normalised per position."""
        h = self.model.stem(x_BCHW)
        out = [h]
        for block in self.model.blocks:
            h = block(h)
            out.append(h)
        # F.normalize clamps the norm, so positions where every channel is 0 after the ReLU get gradient 0, not nan
        return [F.normalize(h, dim=1, eps=1e-10) for h in out]

    def forward(self, x_BCHW: torch.Tensor, y_BCHW: torch.Tensor) -> torch.Tensor:
        per_layer = [(fx - fy).pow(2).sum(1).mean((1, 2))
                     for fx, fy in zip(self.layers(x_BCHW), self.layers(y_BCHW), strict=True)]
        return torch.stack(per_layer).mean(0)


def model_from_payload(payload: dict) -> ResNetClassifier:
    """The frozen network of a classifier payload (what `train_classifier` returns), in eval mode."""
    model = ResNetClassifier(payload["in_channels"], payload["num_classes"], tuple(payload["widths"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval().requires_grad_(False)


@dataclass
class Classifier:
    """A trained feature classifier and the cached file torch-fidelity's extractor loads it from."""

    model: ResNetClassifier  # eval mode; predict/classifier_features move it to their device
    path: Path  # the artifact file (kind "classifier")
    digest: str  # sha256 of that file: real-feature caches are keyed on it
    label: str  # the extractor's name in metric labels, e.g. "FMNIST-ResNet"
    in_channels: int
    resolution: int
    test_accuracy: float

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def check_images(self, images: torch.Tensor, what: str) -> None:
        """Raise MetricInputError unless `images` is uint8 (N, C, H, W) at this classifier's channels and size."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise MetricInputError(f"{what}: expected a uint8 tensor (N, C, H, W), got {got}; convert [-1, 1] floats "
                                   "with varlib.data.to_uint8")
        c, h, w = images.shape[1:]
        if c != self.in_channels:
            raise MetricInputError(f"{what}: {c} channel(s), but the {self.label} classifier was trained on "
                                   f"{self.in_channels}; use a classifier trained on data with {c} channel(s) "
                                   "(DataConfig.channels)")
        if (h, w) != (self.resolution,) * 2:
            raise MetricInputError(f"{what}: {h}x{w} images, but the {self.label} classifier was trained at "
                                   f"{self.resolution}x{self.resolution}; resize them or train a classifier at this "
                                   "resolution (DataConfig.resolution)")


def require_classifier_file(path: Path) -> Path:
    """`path` if the classifier's artifact file exists (torch-fidelity reads the weights from it), else an
    ArtifactError that says how to rebuild it."""
    if not path.is_file():
        raise ArtifactError(f"{path}: the classifier's weights are missing (was the cache cleared?); call "
                            "Study.classifier() again to rebuild them")
    return path


def classifier_from_artifact(path: str | Path, payload: dict) -> Classifier:
    """The Classifier of a stored payload; `path` is its artifact file (torch-fidelity reloads the weights from it,
    and its digest keys the cached real-image features)."""
    path = require_classifier_file(Path(path))
    return Classifier(model_from_payload(payload), path, hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                      payload["label"], payload["in_channels"], payload["resolution"], payload["test_accuracy"])


# ----------------------------------------------------------------------------------------------- training

def _shift_flip(x: torch.Tensor, gen: torch.Generator, shift: int, hflip: bool) -> torch.Tensor:
    """Augmentation: a random translation by up to `shift` pixels (background padding) and a random left-right flip."""
    b, c, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, value=-1.0)
    oy, ox = torch.randint(0, 2 * shift + 1, (2, b), generator=gen).to(x.device)
    rows_BH = oy[:, None] + torch.arange(h, device=x.device)
    cols_BW = ox[:, None] + torch.arange(w, device=x.device)
    x = padded.gather(2, rows_BH[:, None, :, None].expand(b, c, h, w + 2 * shift))
    x = x.gather(3, cols_BW[:, None, None, :].expand(b, c, h, w))
    if hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x


def _dataset_label(split_name: str) -> str:
    name = split_name.rsplit("/", 1)[0]
    return ("FMNIST" if name == "fashion-mnist" else name) + "-ResNet"


def train_classifier(train: ImageDataset, test: ImageDataset, epochs: int, device: torch.device | str = "cpu",
                     seed: int = 0) -> dict:
    """Train the ResNet classifier (AdamW, one-cycle schedule, shift/flip augmentation); returns the artifact
    payload (plain values and CPU tensors): weights, architecture, classes and test accuracy."""
    if epochs < 1:
        raise ValueError(f"classifier epochs must be >= 1, got {epochs}")
    device = torch.device(device)
    r = CLASSIFIER_RECIPE
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetClassifier(train.images_u8.shape[1], train.num_classes).to(device)
    steps_per_epoch = math.ceil(len(train) / r["batch_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=epochs * steps_per_epoch)
    x_u8, y = train.images_u8.to(device), train.labels.to(device)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=f"classifier ({train.name})", unit="step") as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(train), generator=gen).to(device).split(r["batch_size"]):
                x = _shift_flip(to_float(x_u8[idx]), gen, r["shift"], r["hflip"])
                loss = F.cross_entropy(model(x), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    accuracy = (predict(model, test.images_u8, device) == test.labels).float().mean().item()
    log.info("classifier on %s: test accuracy %.4f after %d epochs", train.name, accuracy, epochs)
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "in_channels": train.images_u8.shape[1], "num_classes": train.num_classes,
            "widths": CLASSIFIER_WIDTHS, "resolution": train.images_u8.shape[-1], "classes": list(train.classes),
            "test_accuracy": accuracy, "label": _dataset_label(train.name)}


# ----------------------------------------------------------------------------------------------- using it

@torch.no_grad()
def _batched(fn, images_u8: torch.Tensor, device: torch.device | str, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([fn(to_float(images_u8[i:i + batch_size].to(device))).cpu()
                      for i in range(0, len(images_u8), batch_size)])


def predict(model: ResNetClassifier, images_u8: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Predicted class per uint8 image, (N,)."""
    model.eval().to(device)
    return _batched(lambda x: model(x).argmax(1), images_u8, device)


def classifier_features(classifier: Classifier, images_u8: torch.Tensor,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features (N, D) of uint8 images, computed directly (not through torch-fidelity)."""
    classifier.check_images(images_u8, "images")
    classifier.model.to(device)
    return _batched(classifier.model.features, images_u8, device)


def class_consistency(classifier: Classifier, images_u8: torch.Tensor, labels: torch.Tensor,
                      device: torch.device | str = "cpu") -> float:
    """Fraction of class-conditional samples that the classifier assigns to the class they were asked for."""
    classifier.check_images(images_u8, "images")
    if len(labels) != len(images_u8):
        raise MetricInputError(f"class_consistency: {len(images_u8)} images but {len(labels)} labels")
    return (predict(classifier.model, images_u8, device) == labels.cpu().long()).float().mean().item()
