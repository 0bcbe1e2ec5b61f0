"""Image metrics (PSNR, SSIM, LPIPS), the feature classifier, and the generation metrics computed on its features
through torch-fidelity (FID, IS, KID, precision-recall), on real Fashion-MNIST images and controlled corruptions."""

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from varlib.artifacts import ArtifactError, cache_dir, read_artifact
from varlib.classifier import (
    Classifier,
    MetricInputError,
    class_consistency,
    classifier_features,
    model_from_payload,
    predict,
)
from varlib.config import DataConfig, get_profile
from varlib.data import load_split, to_float
from varlib.metrics import (
    LPIPS_BACKBONES,
    degrade,
    drop_modes,
    export_images,
    frechet_distance,
    generation_metrics,
    load_lpips,
    lpips_distance,
    memorisation,
    metric_name,
    nearest_distances,
    psnr,
    rfid,
    ssim,
)
from varlib.study import Study


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 32, 32))
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1)
    x[1] = np.clip(x[1] * 0.2 + 0.5, -1, 1)
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


def test_psnr_ssim_match_scikit_image():
    # Reference values from scikit-image 0.26 (installed once, outside the project), on the same float64 arrays:
    # structural_similarity(..., data_range=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    # and peak_signal_noise_ratio(..., data_range=2).
    x, y = _pair()
    assert ssim(x, y).tolist() == pytest.approx([0.5930671511929497, -0.005018545325154872], abs=2e-5)
    assert psnr(x, y).tolist() == pytest.approx([17.19663471228808, 8.906501722100487], abs=1e-3)


def test_psnr_ssim_hand_computed():
    a, b = 0.5, -0.25
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    # Constant images: no variance, so SSIM is the luminance term alone; MSE is (a - b)^2.
    c1 = (0.01 * 2) ** 2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(4 / (a - b) ** 2), rel=1e-6)
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert psnr(x, x).item() == math.inf


def test_psnr_ssim_reject_bad_input():
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(MetricInputError, match="outside"):
        psnr(x, x + 3)
    with pytest.raises(MetricInputError, match="to_float"):
        ssim(x.to(torch.uint8), x.to(torch.uint8))
    with pytest.raises(MetricInputError, match="differ in shape"):
        psnr(x, x[:1])
    with pytest.raises(MetricInputError, match="window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


# ------------------------------------------------------------------ generation metrics on a briefly trained classifier

N = 300  # generated images per estimate: above the 128 feature dimensions that FID needs


@pytest.fixture(scope="module")
def data():
    return DataConfig(limit_train=4000, limit_test=2000)


def study_of(data: DataConfig, epochs: int) -> Study:
    return Study(dataclasses.replace(get_profile("smoke"), data=data, classifier_epochs=epochs), "cpu")


@pytest.fixture(scope="module")
def clf(data):
    return study_of(data, epochs=2).classifier()


@pytest.fixture(scope="module")
def test_split(data):
    return load_split(data, "test")


@pytest.fixture(scope="module")
def reference(test_split):
    """Real images that no generated set below is derived from."""
    return test_split.images_u8[1000:]


def _fid(fake, real, clf) -> float:
    out = generation_metrics(fake, real, clf, isc=False, kid=False, prc=False)
    return out[metric_name("FID", len(fake), clf.label)]


def test_classifier_learns_and_is_cached(clf, data, test_split, caplog):
    assert clf.test_accuracy > 0.7  # chance is 0.1
    assert clf.model.head.out_features == 10 and clf.feature_dim == 128
    with caplog.at_level(logging.INFO, logger="varlib.artifacts"):
        again = study_of(data, epochs=2).classifier()
    assert "cache hit" in caplog.text and again.digest == clf.digest
    # the stored payload (read with weights_only=True) rebuilds the same network: what torch-fidelity's extractor loads
    rebuilt = model_from_payload(read_artifact(clf.path))
    images = test_split.images_u8[:64]
    assert torch.equal(predict(rebuilt, images), predict(clf.model, images))


def test_fid_equals_scipy_reference_on_the_same_features(clf, test_split, reference):
    fake = degrade(test_split.images_u8[:N], blur_sigma=1.0)
    expected = frechet_distance(classifier_features(clf, fake).numpy(), classifier_features(clf, reference).numpy())
    assert _fid(fake, reference, clf) == pytest.approx(expected, abs=1e-3)


def test_fid_tracks_image_quality(clf, data, test_split, reference):
    real_sample = load_split(data, "train").images_u8[:N]
    test = test_split.images_u8[:N]
    blurred = [_fid(degrade(test, blur_sigma=s), reference, clf) for s in (0.5, 1.0, 2.0)]
    noisy = [_fid(degrade(test, noise_std=s), reference, clf) for s in (0.1, 0.3, 0.6)]
    assert blurred == sorted(blurred) and noisy == sorted(noisy)  # monotone in the corruption strength
    assert _fid(real_sample, reference, clf) < 0.5 * blurred[1] < 0.5 * noisy[-1]


def test_inception_score_is_high_for_real_images_and_low_for_noise(clf, test_split, reference):
    noise = torch.randint(0, 256, (N, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    key = metric_name("IS", N, clf.label)
    is_real = generation_metrics(test_split.images_u8[:N], reference, clf, fid=False, kid=False, prc=False)[key]
    is_noise = generation_metrics(noise, reference, clf, fid=False, kid=False, prc=False)[key]
    assert is_noise < 2.0 < 2 * is_noise < is_real <= 10.0 + 1e-6  # IS <= number of classes


def test_all_metrics_labelled_and_real_statistics_cached_by_content(clf, test_split, reference):
    fake = test_split.images_u8[:N]
    first = generation_metrics(fake, test_split, clf)  # an ImageDataset works as the real set
    assert set(first) == {metric_name(m, N, clf.label)
                          for m in ("FID", "IS", "IS_std", "KID", "KID_std", "precision", "recall")}
    assert first[metric_name("precision", N, clf.label)] > 0.5 and first[metric_name("recall", N, clf.label)] > 0.5
    cached = list((cache_dir() / "fidelity").glob("varlib-real-*"))
    assert cached
    # A different real set must not reuse the first one's cached statistics (torch-fidelity's cache pitfall).
    assert _fid(fake, reference, clf) != pytest.approx(first[metric_name("FID", N, clf.label)], abs=1e-6)
    assert _fid(fake, test_split.images_u8, clf) == pytest.approx(first[metric_name("FID", N, clf.label)], abs=1e-9)


class Brightness(nn.Module):
    """A classifier whose answer is known exactly: class 1 for images brighter than mid-grey, else class 0."""

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        m = x_BCHW.mean((1, 2, 3))
        return torch.stack([-m, m], dim=1)


def test_class_consistency_counts_the_samples_of_the_asked_class(tmp_path):
    exact = Classifier(Brightness(), tmp_path / "none.pt", "0", "brightness", in_channels=1, resolution=8,
                       test_accuracy=1.0)
    images = torch.full((10, 1, 8, 8), 230, dtype=torch.uint8)
    images[6:] = 20
    # asked for: 6 bright (class 1) then 4 dark (class 0); 2 bright and 1 dark were asked for the other class
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.int32)
    assert class_consistency(exact, images, labels) == pytest.approx(7 / 10)
    assert class_consistency(exact, images, torch.tensor([1] * 6 + [0] * 4)) == 1.0
    assert class_consistency(exact, images, torch.tensor([0] * 6 + [1] * 4)) == 0.0
    with pytest.raises(MetricInputError, match="10 images but 9 labels"):
        class_consistency(exact, images, labels[:9])


def test_class_consistency_of_real_images_with_their_true_classes(clf, test_split):
    images, labels = test_split.images_u8[:N], test_split.labels[:N]
    right = class_consistency(clf, images, labels)
    assert right == pytest.approx(clf.test_accuracy, abs=0.08)  # the same classifier's accuracy on the test split
    assert right > 0.7 and class_consistency(clf, images, (labels + 1) % 10) < 0.25


def test_rfid_zero_for_perfect_reconstructions(clf, test_split):
    x = test_split.images_u8[:N]
    assert abs(rfid(x, x, clf)) < 1e-2
    assert rfid(x, degrade(x, blur_sigma=0.5), clf) < rfid(x, degrade(x, blur_sigma=1.5), clf)


def test_bad_input_is_explained(clf, test_split, reference):
    fake = test_split.images_u8[:N]
    with pytest.raises(MetricInputError, match="to_uint8"):
        generation_metrics(to_float(fake), reference, clf)
    with pytest.raises(MetricInputError, match="3 channel"):
        generation_metrics(fake.expand(-1, 3, -1, -1), reference, clf)
    with pytest.raises(MetricInputError, match="resolution"):
        generation_metrics(fake[..., :28, :28], reference, clf)
    with pytest.raises(MetricInputError, match="at least 129"):
        generation_metrics(fake[:100], reference, clf)
    with pytest.raises(MetricInputError, match="differ in shape"):
        rfid(fake, fake[:200], clf)
    missing = dataclasses.replace(clf, path=clf.path.with_name("deleted.pt"))
    with pytest.raises(ArtifactError, match="Study.classifier"):
        generation_metrics(fake, reference, missing)


def test_export_images_round_trip(tmp_path, test_split):
    x = test_split.images_u8[:5]
    arr = np.load(export_images(x, tmp_path / "s.npz"))["arr_0"]
    assert arr.shape == (5, 32, 32, 1) and (torch.from_numpy(arr).permute(0, 3, 1, 2) == x).all()
    folder = export_images(x, tmp_path / "pngs")
    back = torch.stack([torch.from_numpy(np.array(Image.open(folder / f"{i:06d}.png")))[None] for i in range(5)])
    assert (back == x).all()


def test_lpips_is_skipped_without_backbone_weights(tmp_path, monkeypatch, caplog):
    """Offline the ImageNet backbone cannot be downloaded, and a random one is no perceptual metric: None, logged."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="varlib.metrics"):
        assert lpips_distance(x, x.flip(-1)) is None
        assert load_lpips("vgg") is None
    expected = tmp_path / "empty-hub" / "checkpoints" / LPIPS_BACKBONES["alex"]
    assert f"LPIPS skipped: the alex backbone weights are not at {expected}" in caplog.text
    assert "LPIPS skipped: the vgg backbone" in caplog.text
    with pytest.raises(ValueError, match="one of"):
        load_lpips("resnet")


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips calls torchvision's old API
def test_lpips_uses_the_backbone_weights_in_the_hub_cache(tmp_path, monkeypatch):
    """With a backbone file in torch's hub cache (here a seeded stand-in for squeezenet1_1's ImageNet weights, which
    cannot be downloaded offline) LPIPS is built on exactly those weights."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / LPIPS_BACKBONES["squeeze"])
    model = load_lpips("squeeze")
    assert model is not None and not model.training
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    d = lpips_distance(x, x.flip(-1), model=model)
    assert d.shape == (2,) and (d > 0).all() and lpips_distance(x, x, model=model).abs().max() < 1e-6


def test_rgb_image_folder(tmp_path):
    """Three classes of coloured, noisy 16x16 images: the classifier gets 3 input channels and 3 classes."""
    gen = np.random.default_rng(0)
    for ci, colour in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220))):
        (tmp_path / f"c{ci}").mkdir()
        for j in range(60):
            img = np.clip(np.array(colour) + gen.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / f"c{ci}" / f"{j}.png")
    data = DataConfig(name=str(tmp_path), resolution=16, channels=3, holdout=0.25)
    rgb = Study(dataclasses.replace(get_profile("smoke", num_classes=3), data=data, classifier_epochs=15),
                "cpu").classifier()
    assert (rgb.in_channels, rgb.model.head.out_features) == (3, 3)
    test = load_split(data, "test")
    assert class_consistency(rgb, test.images_u8, test.labels) > 0.9
    out = generation_metrics(test.images_u8, load_split(data, "train"), rgb, fid=False)
    assert 2.0 < out[metric_name("IS", len(test), rgb.label)] <= 3.0 + 1e-6


def test_nearest_distances_are_exact():
    ref = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    query = torch.tensor([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    assert nearest_distances(query, ref).tolist() == pytest.approx([1.0, 0.0, 5.0])


def test_memorisation_flags_copies_of_training_images(clf, data):
    train, test = load_split(data, "train"), load_split(data, "test")
    copies = train.images_u8[:500]  # a "model" that returns training images
    real = test.images_u8[:500]
    copied = memorisation(copies, train.images_u8[:3000], real, clf)
    assert copied["nn_train_distance_generated"] == pytest.approx(0.0, abs=1e-4) and copied["closer_than_test"]
    fresh = memorisation(test.images_u8[500:1000], train.images_u8[:3000], real, clf)
    assert 0.7 < fresh["ratio"] < 1.4 and fresh["nn_train_distance_test"] > 0  # unseen real images: about 1


def test_dropping_modes_keeps_only_the_remaining_classes_and_raises_fid(clf, test_split, reference):
    images, labels = test_split.images_u8[:1000], test_split.labels[:1000]
    fewer = drop_modes(images, labels, 5, 400, seed=1)
    kept = images[labels >= 5].flatten(1)
    assert len(fewer) == 400 and all((kept == x).all(1).any() for x in fewer.flatten(1))  # only classes 5..9
    assert torch.equal(fewer, drop_modes(images, labels, 5, 400, seed=1))
    fids = [_fid(drop_modes(images, labels, k, 400), reference, clf) for k in (0, 3, 6)]
    assert fids == sorted(fids)
    with pytest.raises(ValueError, match="leaves no image"):
        drop_modes(images, labels, 10, 5)
