"""The classifier's perceptual distance (the tokenizer's default perceptual term), on real Fashion-MNIST images and a
tiny seeded classifier: zero between an image and itself, positive and symmetric otherwise, growing with the
perturbation, with gradients that reach the images and never the frozen network."""

import pytest
import torch

from varlib.classifier import PerceptualDistance, ResNetClassifier
from varlib.config import DataConfig
from varlib.data import load_split


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_split(DataConfig(limit_train=8, limit_test=8), "test").float_images(slice(0, 8))


@pytest.fixture
def distance() -> PerceptualDistance:
    torch.manual_seed(0)
    return PerceptualDistance(ResNetClassifier(1, 10, widths=(8, 16, 32)))


def perturbed(x: torch.Tensor, scale: float) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return (x + scale * noise).clamp(-1, 1)


def test_zero_for_identical_images_positive_and_symmetric_otherwise(distance, images):
    assert distance(images, images).abs().max() == 0
    other = images.roll(1, dims=0)
    d = distance(images, other)
    assert d.shape == (len(images),) and (d > 0).all() and (d <= 4).all()
    assert torch.allclose(d, distance(other, images))


def test_larger_for_a_larger_perturbation(distance, images):
    small, large = (distance(images, perturbed(images, s)) for s in (0.05, 0.5))
    assert (large > small).all()


def test_gradients_reach_the_images_and_not_the_network(distance, images):
    x = perturbed(images, 0.2).requires_grad_(True)
    distance(x, images).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in distance.parameters())
    blank = torch.full_like(images, -1.0, requires_grad=True)  # background only: many all-zero activations
    distance(blank, images).sum().backward()
    assert blank.grad.isfinite().all()


def test_the_network_stays_in_eval_mode(distance, images):
    stats = {k: v.clone() for k, v in distance.state_dict().items()}
    distance.train()
    assert not distance.training and not distance.model.training
    distance(images, perturbed(images, 0.3))
    assert all(torch.equal(v, distance.state_dict()[k]) for k, v in stats.items())  # BatchNorm statistics kept
