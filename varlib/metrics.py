"""Metrics: FID / IS / KID / precision-recall through torch-fidelity, and reconstruction metrics.

Feature extractor. torch-fidelity's Inception-v3 weights are downloaded at first use, which is impossible offline, so
the generation metrics are computed on the features of a small ResNet trained here on the dataset's own training split
(`varlib.classifier`, cached as artifact kind "classifier"): penultimate features for FID, KID and precision-recall,
logits for IS (whose upper bound is then the class count, 10 for Fashion-MNIST, not ImageNet's 1000). These numbers
rank models of *this* study; they are not comparable with the paper's Inception FIDs. When the Inception weights are
in torch's hub cache, `generation_metrics` reports the Inception numbers as well.

Labels. Every generation number is keyed by `metric_name(metric, n, extractor)`, e.g. "FID-10k (FMNIST-ResNet)":
the metric, the number of generated images it was computed on, and the feature extractor. Metrics: FID, IS, IS_std,
KID, KID_std, precision, recall.

Image conventions. Generation metrics take uint8 (N, C, H, W) tensors, as the sampler returns them (no PNG round
trip); reconstruction metrics (psnr, ssim, lpips_distance) take float (B, C, H, W) tensors in [-1, 1], so the data
range is 2.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm.auto import tqdm

from .artifacts import cache_dir, read_artifact
from .classifier import Classifier, MetricInputError, classifier_features, model_from_payload, require_classifier_file
from .data import ImageDataset, to_float, to_uint8

log = logging.getLogger(__name__)

DATA_RANGE = 2.0  # images live in [-1, 1]
EXTRACTOR = "varlib-classifier"  # the name under which the classifier is registered with torch-fidelity
INCEPTION = "inception-v3-compat"
FIDELITY_BATCH = 256
KID_SUBSET = 1000  # torch-fidelity's default subset size, lowered to the sample count when there are fewer images
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


@functools.cache
def _log_once(message: str) -> None:
    """A skipped optional metric is reported once per session, not once per call."""
    log.warning(message)


# ----------------------------------------------------------------------------------------- reconstruction metrics

def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    for name, t in (("x", x), ("y", y)):
        if not t.is_floating_point() or t.ndim != 4:
            raise MetricInputError(f"{what}: {name} must be a float tensor (B, C, H, W) in [-1, 1], got "
                                   f"{t.dtype} {tuple(t.shape)}; convert uint8 images with varlib.data.to_float")
        if t.numel() and (t.min() < -1.001 or t.max() > 1.001):
            raise MetricInputError(f"{what}: {name} has values in [{t.min():.3g}, {t.max():.3g}], outside [-1, 1]; "
                                   "pass images scaled to [-1, 1] (varlib.data.to_float), not [0, 1] or [0, 255]")
    if x.shape != y.shape:
        raise MetricInputError(f"{what}: x and y differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, (B,), in dB for data range 2 (inf for identical images)."""
    _check_pair(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(DATA_RANGE**2 / mse)).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image, (B,) (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 0.01,
    K2 0.03, population statistics, valid positions only, per channel, then averaged over channels and pixels."""
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < window:
        raise MetricInputError(f"ssim: images are {tuple(x.shape[-2:])}, smaller than the {window}x{window} window")
    c = x.shape[1]
    w = _gaussian_window(window, sigma).to(x.device).expand(c, 1, window, window)
    x, y = x.double(), y.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


def load_lpips(net: str = "alex", device: torch.device | str = "cpu",
               weights: str | Path | None = None) -> nn.Module | None:
    """LPIPS (Zhang et al. 2018) on its ImageNet backbone, frozen, read from `weights` (torchvision's file for `net`,
    e.g. alexnet-owt-7be5be79.pth) or else from torch's hub cache; nothing is downloaded (offline it cannot be, and a
    random backbone is not a perceptual metric). Without `weights`, a backbone missing from the hub cache gives None
    (logged once): the optional evaluation metric is skipped. A given `weights` file that is missing is an error
    (FileNotFoundError naming it): tokenizer training with perceptual="lpips" never drops its term."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the LPIPS {net} backbone weights are not there; put torchvision's "
                                    f"{LPIPS_BACKBONES[net]} (https://download.pytorch.org/models/) at that path, or "
                                    "train the tokenizer with perceptual='classifier'")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net]
        if not path.is_file():
            _log_once(f"LPIPS skipped: the {net} backbone weights are not at {path} (copy them there to enable LPIPS)")
            return None
    import lpips  # imported only here: it is needed only when its backbone weights exist

    with warnings.catch_warnings():  # lpips builds its random backbone through torchvision's deprecated arguments
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # its linear heads ship with the package
    _load_backbone(model.net, torch.load(path, map_location="cpu", weights_only=True), path)
    return model.to(device).eval().requires_grad_(False)


def _load_backbone(net: nn.Module, state: dict, path: Path) -> None:
    """Copy torchvision's `features.<i>.*` tensors into LPIPS's slices, which hold those same layers as
    `slice<s>.<i>.*`; ValueError naming the file when some are missing."""
    slice_of = {i: name for name, block in net.named_children() for i, _ in block.named_children()}
    backbone = {}
    for key, value in state.items():
        head, i, rest = (key.split(".", 2) + ["", ""])[:3]
        if head == "features" and i in slice_of:
            backbone[f"{slice_of[i]}.{i}.{rest}"] = value
    try:
        net.load_state_dict(backbone)
    except RuntimeError as e:
        raise ValueError(f"{path}: not torchvision's weights for the LPIPS {type(net).__name__} backbone ({e})") from e


@torch.no_grad()
def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: str = "alex", device: torch.device | str = "cpu",
                   model: nn.Module | None = None) -> torch.Tensor | None:
    """LPIPS distance per image, (B,), for images in [-1, 1] (grayscale repeated to RGB); None without weights.
    Pass `model` (from `load_lpips`) to reuse one loaded network over many batches."""
    _check_pair(x, y, "lpips_distance")
    model = model or load_lpips(net, device)
    if model is None:
        return None
    rgb = [t.to(device).expand(-1, 3, -1, -1) if t.shape[1] == 1 else t.to(device) for t in (x, y)]
    return model(*rgb).flatten().cpu()


# ------------------------------------------------------------------------------------ torch-fidelity extractor

class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity's view of a varlib classifier: "penultimate" features (FID, KID, PRC) and "logits" (IS).

    torch-fidelity builds it from the class with every `calculate_metrics` keyword; the weights arrive through
    `feature_extractor_weights_path` (the classifier's artifact file). Inputs are uint8 (B, C, H, W) batches.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path (a classifier "
                             "artifact file, from Study.classifier)")
        self.model = model_from_payload(read_artifact(require_classifier_file(Path(feature_extractor_weights_path))))

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

    def forward(self, x_u8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.features(to_float(x_u8))
        out = {"penultimate": feats, "logits": self.model.head(feats)}
        return tuple(out[name] for name in self.features_list)  # torch-fidelity expects its own (set-built) order


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:  # re-imports (notebook cells) must not register twice
    torch_fidelity.register_feature_extractor(EXTRACTOR, ClassifierFeatures)


class U8Images(Dataset):
    """A Dataset of bare uint8 (C, H, W) tensors, the form torch-fidelity accepts; `rgb` repeats gray to 3 channels
    (Inception)."""

    def __init__(self, images_u8: torch.Tensor, rgb: bool = False):
        self.images_u8, self.rgb = images_u8, rgb

    def __len__(self) -> int:
        return len(self.images_u8)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images_u8[i]
        return x.expand(3, -1, -1) if self.rgb and x.shape[0] == 1 else x


# ------------------------------------------------------------------------------------------ generation metrics

def metric_name(metric: str, n: int, extractor: str) -> str:
    """The label of a reported number: "FID-10k (FMNIST-ResNet)"; n is the number of generated images."""
    count = f"{n // 1000}k" if n % 1000 == 0 else f"{n / 1000:g}k" if n >= 1000 else str(n)
    return f"{metric}-{count} ({extractor})"


def _content_hash(images_u8: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(images_u8.shape)).encode())
    h.update(images_u8.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def inception_weights() -> Path | None:
    """torch-fidelity's Inception-v3 weights in torch's hub cache, or None (they cannot be downloaded offline)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]
    return path if path.is_file() else None


def _fidelity(fake_u8: torch.Tensor, real_u8: torch.Tensor | None, extractor: str, weights: Path, real_name: str,
              device: torch.device, **flags: bool) -> dict:
    """One torch_fidelity.calculate_metrics call. The real set's features are cached under a content-hashed name:
    torch-fidelity keys its cache only on (name, extractor), so a fixed name would return stale statistics."""
    n_min = len(fake_u8) if real_u8 is None else min(len(fake_u8), len(real_u8))
    rgb = extractor == INCEPTION
    return torch_fidelity.calculate_metrics(
        input1=U8Images(fake_u8, rgb), input2=None if real_u8 is None else U8Images(real_u8, rgb),
        input2_cache_name=real_name, cuda=device.type == "cuda", batch_size=FIDELITY_BATCH,
        feature_extractor=extractor, feature_extractor_weights_path=str(weights),
        kid_subset_size=min(KID_SUBSET, n_min), isc_splits=ISC_SPLITS, prc_neighborhood=PRC_NEIGHBORHOOD,
        cache_root=str(cache_dir() / "fidelity"), cache=True,
        save_cpu_ram=True,  # no DataLoader workers (the images are in memory) and blockwise precision-recall
        verbose=False, **flags)


def _renamed(raw: dict, n: int, label: str) -> dict:
    names = {"frechet_inception_distance": "FID", "inception_score_mean": "IS", "inception_score_std": "IS_std",
             "kernel_inception_distance_mean": "KID", "kernel_inception_distance_std": "KID_std",
             "precision": "precision", "recall": "recall"}
    return {metric_name(names[k], n, label): float(v) for k, v in raw.items() if k in names}


def _check_counts(n_fake: int, n_real: int, classifier: Classifier, fid: bool, isc: bool, prc: bool) -> None:
    d = classifier.feature_dim
    if fid and min(n_fake, n_real) <= d:
        raise MetricInputError(f"FID needs more images than feature dimensions: got {n_fake} generated and {n_real} "
                               f"real images, the {classifier.label} features have {d} dimensions; pass at least "
                               f"{d + 1} of each (or fid=False)")
    if isc and n_fake < ISC_SPLITS:
        raise MetricInputError(f"IS needs at least {ISC_SPLITS} generated images (one per split), got {n_fake}")
    if prc and min(n_fake, n_real) <= PRC_NEIGHBORHOOD:
        raise MetricInputError(f"precision/recall need more than {PRC_NEIGHBORHOOD} images per set, got {n_fake} "
                               f"generated and {n_real} real")


def generation_metrics(fake_u8: torch.Tensor, real: torch.Tensor | ImageDataset, classifier: Classifier,
                       device: torch.device | str = "cpu", fid: bool = True, isc: bool = True, kid: bool = True,
                       prc: bool = True) -> dict[str, float]:
    """FID, IS, KID and precision-recall of generated uint8 images against a real split, on the classifier's
    features (and on Inception's when its weights are cached locally). Keys: `metric_name(...)`."""
    device = torch.device(device)
    real_u8 = real.images_u8 if isinstance(real, ImageDataset) else real
    classifier.check_images(fake_u8, "generated images")
    classifier.check_images(real_u8, "real images")
    _check_counts(len(fake_u8), len(real_u8), classifier, fid, isc, prc)
    require_classifier_file(classifier.path)
    flags = {"fid": fid, "isc": isc, "kid": kid, "prc": prc}
    real_hash = _content_hash(real_u8)
    needs_real = fid or kid or prc
    out = _renamed(_fidelity(fake_u8, real_u8 if needs_real else None, EXTRACTOR, classifier.path,
                             f"varlib-real-{real_hash}-{classifier.digest}", device, **flags),
                   len(fake_u8), classifier.label)
    weights = inception_weights()
    if weights is None:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        _log_once(f"Inception metrics skipped: torch-fidelity's Inception-v3 weights are not in {hub} "
                  f"(offline: copy {URL_INCEPTION_V3} there to enable them)")
    else:
        out |= _renamed(_fidelity(fake_u8, real_u8 if needs_real else None, INCEPTION, weights,
                                  f"varlib-real-{real_hash}", device, **flags), len(fake_u8), "Inception-v3")
    return out


def rfid(originals_u8: torch.Tensor, reconstructions_u8: torch.Tensor, classifier: Classifier,
         device: torch.device | str = "cpu") -> float:
    """Reconstruction FID: FID between a tokenizer's reconstructions and the originals, on the classifier's
    features (label: `metric_name("rFID", n, classifier.label)`)."""
    if originals_u8.shape != reconstructions_u8.shape:
        raise MetricInputError(f"rfid: originals {tuple(originals_u8.shape)} and reconstructions "
                               f"{tuple(reconstructions_u8.shape)} differ in shape")
    return generation_metrics(reconstructions_u8, originals_u8, classifier, device, isc=False, kid=False,
                              prc=False)[metric_name("FID", len(originals_u8), classifier.label)]


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Reference Frechet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets, through
    scipy.linalg.sqrtm: an independent check of torch-fidelity's eigenvalue-based FID."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def nearest_distances(query_ND: torch.Tensor, reference_MD: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from every query feature vector to its nearest reference vector, (N,)."""
    return torch.cat([torch.cdist(q.double(), reference_MD.double()).min(dim=1).values.float()
                      for q in query_ND.split(chunk)])


def memorisation(generated_u8: torch.Tensor, train_u8: torch.Tensor, test_u8: torch.Tensor, classifier: Classifier,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """How close generated images sit to the training set, against real held-out images (the claims protocol's
    memorisation check): in the classifier's feature space, the median distance of each generated image to its nearest
    training image, and the same for test images. `ratio` = generated / test; below 1 the samples sit closer to the
    training set than real unseen images do (`closer_than_test`), which a model that copies its training images
    shows and FID rewards."""
    feats = {name: classifier_features(classifier, x, device).to(device) for name, x in
             (("generated", generated_u8), ("train", train_u8), ("test", test_u8))}
    gen = nearest_distances(feats["generated"], feats["train"]).median().item()
    test = nearest_distances(feats["test"], feats["train"]).median().item()
    return {"nn_train_distance_generated": gen, "nn_train_distance_test": test, "ratio": gen / test,
            "closer_than_test": gen < test}


def degrade(images_u8: torch.Tensor, blur_sigma: float = 0.0, noise_std: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Controlled corruptions for checking that a metric tracks image quality: a Gaussian blur of `blur_sigma`
    pixels, then Gaussian noise of `noise_std` in [-1, 1] units (seeded)."""
    x = to_float(images_u8)
    if blur_sigma > 0:
        x = TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * blur_sigma) + 1, sigma=blur_sigma)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return to_uint8(x)


def drop_modes(images_u8: torch.Tensor, labels: torch.Tensor, removed: int, n: int, seed: int = 0) -> torch.Tensor:
    """A set of `n` images drawn (seeded, with replacement) only from the classes left after removing the first
    `removed` class ids: a generator that has dropped modes. FID must rise with `removed` (the claims protocol's
    mode-dropping check of the metric)."""
    keep_N = labels >= removed
    if not keep_N.any():
        raise ValueError(f"drop_modes: removing {removed} classes leaves no image (labels {labels.unique().tolist()})")
    pool = keep_N.nonzero().flatten()
    pick = torch.randint(len(pool), (n,), generator=torch.Generator().manual_seed(seed))
    return images_u8[pool[pick]]


def export_images(images_u8: torch.Tensor, path: str | Path) -> Path:
    """Write uint8 (N, C, H, W) images for other toolkits: `*.npz` as one NHWC array `arr_0` (the layout of the
    guided-diffusion evaluation suite), any other path as a folder of PNGs 000000.png, 000001.png, ..."""
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise MetricInputError(f"export_images: expected uint8 (N, C, H, W), got {images_u8.dtype} "
                               f"{tuple(images_u8.shape)}; convert [-1, 1] floats with varlib.data.to_uint8")
    path = Path(path)
    arr_NHWC = images_u8.permute(0, 2, 3, 1).cpu().numpy()
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, arr_NHWC)
        return path
    path.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(tqdm(arr_NHWC, desc=f"PNGs to {path}", unit="img")):
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path / f"{i:06d}.png")
    return path
