"""Tokenizer training on real Fashion-MNIST images (smoke-sized): the loss falls, Alg. 1's residual shrinks scale by
scale, resume equals an uninterrupted run, the cache returns a frozen model; the perceptual term is in the loss and
the history, LPIPS (with a given backbone file) or the classifier's distance, and never dropped silently."""

import dataclasses
import logging

import pytest
import torch
import torchvision

from varlib import artifacts
from varlib.classifier import PerceptualDistance, ResNetClassifier
from varlib.cli import tokenizer_main
from varlib.config import DataConfig, TokenizerConfig, TokenizerTrainConfig, get_profile
from varlib.data import load_split
from varlib.metrics import load_lpips
from varlib.study import Study
from varlib.tokenizer import VQVAE
from varlib.tokenizer_train import (
    PatchDiscriminator,
    TokenizerStep,
    coarse_to_fine,
    evaluate_tokenizer,
    perceptual_loss,
    train_tokenizer,
)

SMOKE = get_profile("smoke")
TINY_DATA = DataConfig(limit_train=64, limit_test=32)
TINY_TOK = TokenizerConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False,
                           vocab_size=32, scales=(1, 2, 4, 8))
TINY_TRAIN = TokenizerTrainConfig(steps=8, batch_size=8, gan_weight=0.5, gan_start=0.25, restart_dead_codes_every=3,
                                  perceptual="none")


@pytest.fixture(scope="module")
def smoke_tokenizer():
    """The smoke profile's tokenizer, trained once (cached in the session's VARLIB_CACHE)."""
    return Study.create("smoke", device="cpu").tokenizer()


def train_images(data: DataConfig) -> torch.Tensor:
    return load_split(data, "train").images_u8


def test_smoke_training_lowers_the_loss():
    study = Study.create("smoke", device="cpu")
    perceptual = perceptual_loss(SMOKE.tokenizer_train, "cpu", study.classifier())
    _, history = train_tokenizer(train_images(SMOKE.data), SMOKE.tokenizer,
                                 dataclasses.replace(SMOKE.tokenizer_train, seed=1), "cpu", progress=False,
                                 perceptual=perceptual)
    assert len(history) == SMOKE.tokenizer_train.steps
    assert history["rec"].tail(5).mean() < 0.5 * history["rec"].head(5).mean()
    assert history["restarted"].sum() > 0  # the untrained codebook had dead codes and they were restarted


def test_command_line_trains_into_the_cache_then_finds_it(smoke_tokenizer, caplog):
    caplog.set_level(logging.INFO)
    tokenizer_main(["--profile", "smoke", "--device", "cpu"])  # the fixture already trained it: a cache hit
    key = Study.create("smoke", device="cpu").tokenizer_key()
    assert f"cache hit: {artifacts.cache_dir() / 'tokenizer' / key}.pt" in caplog.text
    assert f"tokenizer ready: {key}" in caplog.text


@torch.no_grad()
def test_residual_shrinks_scale_by_scale(smoke_tokenizer):
    x = load_split(SMOKE.data, "test").float_images(slice(0, 64))
    f = smoke_tokenizer.img_to_f(x)
    f_hats = smoke_tokenizer.quantize.residual_quantize(f).f_hats
    residual_K = torch.stack([(f - f_hat).square().mean() for f_hat in f_hats])
    assert (residual_K[1:] < residual_K[:-1]).all(), residual_K
    # the 30-step smoke tokenizer (V=64) leaves 64% of the feature energy after all scales (measured); an untrained
    # codebook (every residual = f) would leave 100%
    assert residual_K[-1] < 0.75 * f.square().mean()


def test_cached_tokenizer_is_frozen_and_reused(smoke_tokenizer):
    assert not smoke_tokenizer.training
    assert not any(p.requires_grad for p in smoke_tokenizer.parameters())
    study = Study.create("smoke", device="cpu")
    path = artifacts.cache_dir() / "tokenizer" / f"{study.tokenizer_key()}.pt"
    payload = artifacts.read_artifact(path)
    assert set(payload) >= {"state_dict", "configs", "history", "usage"} and 0 < payload["usage"] <= 1
    # the smoke profile trains with the classifier's perceptual term: the record says so and names the classifier
    assert payload["perceptual"] == {"term": "classifier", "weight": SMOKE.tokenizer_train.lpips_weight,
                                     "classifier": study.classifier_key(), "lpips_backbone": None}
    assert len(payload["history"]["perceptual"]) == SMOKE.tokenizer_train.steps
    assert min(payload["history"]["perceptual"]) > 0
    again = study.tokenizer()
    assert again is not smoke_tokenizer  # loaded again from the file, not the other Study's copy
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), smoke_tokenizer.state_dict().values(),
                                                 strict=True))


def test_evaluation_improves_with_more_scales(smoke_tokenizer):
    test = load_split(SMOKE.data, "test")
    table = evaluate_tokenizer(smoke_tokenizer, test, "cpu", n=64)
    K = len(SMOKE.tokenizer.scales)
    assert list(table["scales_used"]) == list(range(1, K + 1))
    assert table["psnr"].iloc[-1] > table["psnr"].iloc[0] + 1  # finer scales add detail
    assert table["ssim"].iloc[-1] > table["ssim"].iloc[0]
    assert table["usage_cumulative"].is_monotonic_increasing
    assert ((table["usage_scale"] > 0) & (table["usage_scale"] <= table["usage_cumulative"])).all()
    grid = coarse_to_fine(smoke_tokenizer, test.float_images(slice(0, 4)))
    assert grid.shape == (K + 1, 4, 1, 32, 32) and grid.abs().max() <= 1
    assert torch.equal(grid[0], test.float_images(slice(0, 4)))


def test_resume_equals_uninterrupted_run(fresh_cache):
    images = train_images(TINY_DATA)
    resume = artifacts.TrainState("tokenizer", {"test": "resume"})
    _, partial = train_tokenizer(images, TINY_TOK, TINY_TRAIN, "cpu", progress=False, resume=resume,
                                 snapshot_every=2, stop_at=5)
    assert len(partial) == 5 and resume.path.is_file()
    resumed, resumed_history = train_tokenizer(images, TINY_TOK, TINY_TRAIN, "cpu", progress=False, resume=resume)
    straight, straight_history = train_tokenizer(images, TINY_TOK, TINY_TRAIN, "cpu", progress=False)
    assert len(straight_history) == TINY_TRAIN.steps and "gan_d" in straight_history  # GAN and restarts were on
    assert resumed_history.equals(straight_history)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_lpips_is_off_without_local_backbone_weights(tmp_path, monkeypatch, caplog):
    """For evaluation only: the optional LPIPS metric is skipped (logged) when the hub cache lacks the backbone."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    with caplog.at_level(logging.WARNING, logger="varlib.metrics"):
        assert load_lpips("alex", torch.device("cpu")) is None
    assert len(caplog.records) == 1 and "LPIPS skipped" in caplog.text and "alexnet" in caplog.text


def tiny_perceptual() -> PerceptualDistance:
    torch.manual_seed(0)
    return PerceptualDistance(ResNetClassifier(1, 10, widths=(8, 16)))


def test_the_classifier_term_is_in_the_loss_and_the_history(fresh_cache):
    cfg = dataclasses.replace(TINY_TRAIN, steps=4, perceptual="classifier", gan_weight=0.0, lpips_weight=0.7)
    _, history = train_tokenizer(train_images(TINY_DATA), TINY_TOK, cfg, "cpu", progress=False,
                                 perceptual=tiny_perceptual())
    assert history.attrs["perceptual"] == "classifier" and "lpips" not in history
    assert (history["perceptual"] > 0).all()
    rest = history["loss"] - history["rec"] - history["vq"]  # no GAN: the rest is the weighted perceptual term
    assert torch.allclose(torch.tensor(rest.to_numpy()), torch.tensor(0.7 * history["perceptual"].to_numpy()),
                          rtol=1e-4, atol=1e-6)
    _, plain = train_tokenizer(train_images(TINY_DATA), TINY_TOK, dataclasses.replace(cfg, perceptual="none"), "cpu",
                               progress=False)
    assert plain.attrs["perceptual"] == "none" and "perceptual" not in plain
    assert torch.allclose(torch.tensor(plain["loss"].to_numpy()),
                          torch.tensor((plain["rec"] + plain["vq"]).to_numpy()), rtol=1e-5, atol=1e-6)


def test_a_perceptual_term_without_its_network_is_refused_before_training():
    images = train_images(TINY_DATA)
    cfg = dataclasses.replace(TINY_TRAIN, perceptual="classifier")
    with pytest.raises(ValueError, match="perceptual = 'classifier' needs its network"):
        train_tokenizer(images, TINY_TOK, cfg, "cpu", progress=False)
    with pytest.raises(ValueError, match="it would be unused"):
        train_tokenizer(images, TINY_TOK, TINY_TRAIN, "cpu", progress=False, perceptual=tiny_perceptual())
    with pytest.raises(ValueError, match="needs the feature classifier"):
        perceptual_loss(cfg, "cpu")
    lpips_cfg = dataclasses.replace(cfg, perceptual="lpips", lpips_backbone="alexnet.pth")
    with pytest.raises(ValueError, match="the network passed is a PerceptualDistance"):
        TokenizerStep(VQVAE(TINY_TOK), PatchDiscriminator(1), lpips_cfg, torch.device("cpu"),
                      perceptual=tiny_perceptual())
    # a weight of 0 is no term at all: nothing to pass
    assert dataclasses.replace(cfg, lpips_weight=0.0).perceptual_term == "none"


@pytest.mark.parametrize("changes, message", [
    ({"perceptual": "vgg"}, "perceptual = 'vgg': must be one of"),
    ({"perceptual": "lpips"}, "lpips_backbone = None: perceptual='lpips' needs the path"),
    ({"lpips_backbone": "alexnet.pth"}, "lpips_backbone = 'alexnet.pth': is read only with perceptual='lpips'"),
    ({"lpips_weight": -0.5}, "lpips_weight = -0.5"),
])
def test_bad_perceptual_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TokenizerTrainConfig(**changes)


def test_a_missing_lpips_backbone_stops_before_training_and_names_the_path(fresh_cache, tmp_path):
    missing = tmp_path / "nowhere" / "alexnet-owt-7be5be79.pth"
    study = Study.create("smoke", device="cpu", progress=False).with_tokenizer_train(
        perceptual="lpips", lpips_backbone=str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        study.tokenizer()
    assert not list(fresh_cache.rglob("*.pt"))  # no tokenizer, no snapshot, and no classifier (LPIPS needs none)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips calls torchvision's old API
def test_lpips_trains_on_the_backbone_file_it_is_given(tmp_path):
    """A seeded stand-in for torchvision's AlexNet weights (the real ones cannot be downloaded offline): LPIPS is
    built on exactly that file's tensors, and a tokenizer trains with it as its perceptual term."""
    torch.manual_seed(0)
    features = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(features, path)
    cfg = dataclasses.replace(TINY_TRAIN, steps=2, gan_weight=0.0, perceptual="lpips", lpips_backbone=str(path))
    lpips_net = perceptual_loss(cfg, "cpu")
    assert torch.equal(lpips_net.net.slice1[0].weight, features["features.0.weight"])
    assert torch.equal(lpips_net.net.slice5[0].bias, features["features.10.bias"])
    assert not lpips_net.training and not any(p.requires_grad for p in lpips_net.parameters())
    _, history = train_tokenizer(train_images(TINY_DATA), TINY_TOK, cfg, "cpu", progress=False,
                                 perceptual=lpips_net)
    assert history.attrs["perceptual"] == "lpips" and (history["perceptual"] > 0).all()
    torch.save({"features.0.weight": features["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth: not torchvision's weights"):
        load_lpips("alex", "cpu", weights=tmp_path / "partial.pth")


def test_the_classifier_key_enters_the_tokenizer_key_only_with_its_term():
    base, other_clf = Study.create("smoke", device="cpu"), Study.create("smoke", device="cpu", classifier_seed=1)
    assert base.classifier_key() != other_clf.classifier_key()
    assert base.tokenizer_key() != other_clf.tokenizer_key()
    variants = base.perceptual_variants()
    assert list(variants) == ["classifier", "none"] and variants["classifier"] is base
    plain, plain_other = variants["none"], other_clf.perceptual_variants()["none"]
    assert plain.tokenizer_train_config.perceptual_term == "none" and plain.split("test") is base.split("test")
    assert plain.tokenizer_key() == plain_other.tokenizer_key() != base.tokenizer_key()
    assert plain.transformer_key() != base.transformer_key()  # its transformers read the other tokenizer


def test_mismatched_data_and_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="do not fit the tokenizer"):
        train_tokenizer(train_images(dataclasses.replace(TINY_DATA, channels=3)), TINY_TOK, TINY_TRAIN, "cpu",
                        progress=False)
