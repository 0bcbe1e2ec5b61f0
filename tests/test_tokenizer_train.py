"""Tokenizer training on real Fashion-MNIST images (smoke-sized): the loss falls, Alg. 1's residual shrinks scale by
scale, resume equals an uninterrupted run, the cache returns a frozen model, LPIPS stays off without its weights."""

import dataclasses
import logging

import pytest
import torch

from varlib import artifacts
from varlib.cli import tokenizer_main
from varlib.config import DataConfig, TokenizerConfig, TokenizerTrainConfig, get_profile
from varlib.data import load_split
from varlib.metrics import load_lpips
from varlib.study import Study
from varlib.tokenizer_train import coarse_to_fine, evaluate_tokenizer, train_tokenizer

SMOKE = get_profile("smoke")
TINY_DATA = DataConfig(limit_train=64, limit_test=32)
TINY_TOK = TokenizerConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False,
                           vocab_size=32, scales=(1, 2, 4, 8))
TINY_TRAIN = TokenizerTrainConfig(steps=8, batch_size=8, gan_weight=0.5, gan_start=0.25, restart_dead_codes_every=3,
                                  lpips_weight=0.0)


@pytest.fixture(scope="module")
def smoke_tokenizer():
    """The smoke profile's tokenizer, trained once (cached in the session's VARLIB_CACHE)."""
    return Study.create("smoke", device="cpu").tokenizer()


def train_images(data: DataConfig) -> torch.Tensor:
    return load_split(data, "train").images_u8


def test_smoke_training_lowers_the_loss():
    _, history = train_tokenizer(train_images(SMOKE.data), SMOKE.tokenizer,
                                 dataclasses.replace(SMOKE.tokenizer_train, seed=1), "cpu", progress=False)
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
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    with caplog.at_level(logging.WARNING, logger="varlib.metrics"):
        assert load_lpips("alex", torch.device("cpu")) is None
    assert len(caplog.records) == 1 and "LPIPS skipped" in caplog.text and "alexnet" in caplog.text


def test_mismatched_data_and_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="do not fit the tokenizer"):
        train_tokenizer(train_images(dataclasses.replace(TINY_DATA, channels=3)), TINY_TOK, TINY_TRAIN, "cpu",
                        progress=False)
