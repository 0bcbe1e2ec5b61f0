"""The Study: classes come from the data, datasets are known by their content, seeds reach what they should and
nothing else, and a read-only cache is used as it is or refused before any training."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from helpers import image_folder
from PIL import Image

from varlib.artifacts import ArtifactError
from varlib.config import (
    DataConfig,
    SampleConfig,
    TokenizerConfig,
    TokenizerTrainConfig,
    TrainConfig,
    VARConfig,
    get_profile,
)
from varlib.study import Study

TOK = TokenizerConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False, vocab_size=32,
                      scales=(1, 2, 4, 8))


def tiny(study: Study) -> Study:
    """The study with tiny stages (seconds on a CPU)."""
    data = study.profile.data
    tok = dataclasses.replace(TOK, in_channels=data.channels, scales=TOK.scales)
    return study.replace(
        data=dataclasses.replace(data, limit_train=64, limit_test=32, resolution=tok.resolution),
        tokenizer=tok, tokenizer_train=TokenizerTrainConfig(steps=4, batch_size=16, gan_weight=0.0),
        var=dataclasses.replace(study.profile.var, depth=1, vocab_size=TOK.vocab_size, scales=TOK.scales),
        train=TrainConfig(steps=2, batch_size=16, eval_every=2), classifier_epochs=1)


@pytest.mark.parametrize("classes", [2, 11, 12])
def test_the_class_count_and_names_come_from_the_data(tmp_path, classes):
    study = Study.create("smoke", str(image_folder(tmp_path / "imgs", classes)), resolution=16, device="cpu")
    assert study.num_classes == classes == study.var_config().num_classes == study.ar_configs()[1].num_classes
    assert study.null_class == classes and study.classes[-1] == f"class_{classes - 1:02d}"
    assert set(study.split("train").labels.tolist()) | set(study.split("test").labels.tolist()) == set(range(classes))


def test_fashion_mnist_has_its_ten_named_classes():
    study = Study.create("smoke", device="cpu")
    assert study.num_classes == 10 and study.classes[0] == "T-shirt/top" and study.null_class == 10


def test_the_same_relative_path_to_two_folders_gives_two_keys(tmp_path, monkeypatch):
    keys = []
    for i, parent in enumerate(("a", "b")):
        image_folder(tmp_path / parent / "imgs", 2, seed=i)
        monkeypatch.chdir(tmp_path / parent)
        keys.append(Study.create("smoke", "imgs", resolution=16, device="cpu").tokenizer_key())
    assert keys[0] != keys[1]


def test_a_changed_folder_gets_a_new_key_and_a_copy_the_same(tmp_path):
    folder = image_folder(tmp_path / "imgs", 2)
    before = Study.create("smoke", str(folder), resolution=16, device="cpu")
    keys = before.tokenizer_key(), before.transformer_key()
    copy = Study.create("smoke", str(image_folder(tmp_path / "copy", 2)), resolution=16, device="cpu")
    assert copy.tokenizer_key() == keys[0]  # known by content, not by path
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "class_00" / "0.png")
    after = Study.create("smoke", str(folder), resolution=16, device="cpu")
    assert after.tokenizer_key() != keys[0] and after.transformer_key() != keys[1]


def test_the_seed_selects_the_transformers_and_samples_not_the_tokenizer_or_classifier():
    zero, one = (Study.create("smoke", seed=s, device="cpu") for s in (0, 1))
    assert zero.tokenizer_key() == one.tokenizer_key()
    assert zero.train_config.seed == 0 and one.train_config.seed == 1
    assert zero.transformer_key() != one.transformer_key()
    assert zero.sampling_seed(0) != one.sampling_seed(0) != one.sampling_seed(1)
    assert zero.sampling_seed(1) != one.sampling_seed(0)  # streams of neighbouring seeds do not collide
    asked = Study.create("smoke", device="cpu", tokenizer_seed=1)
    assert asked.tokenizer_key() != zero.tokenizer_key() and asked.tokenizer_train_config.seed == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, "seed = -1"),
    ({"resolution": 0}, "resolution = 0"),
    ({"resolution": -32}, "resolution = -32"),
    ({"device": "cuda:7"}, "does not exist"),
    ({"tokenizer_seed": 1.5}, "tokenizer_seed = 1.5"),
])
def test_bad_study_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Study.create("smoke", **kwargs)


@pytest.mark.parametrize("cfg, message", [
    (lambda: TrainConfig(batch_size=0), "batch_size = 0"),
    (lambda: TrainConfig(steps=0), "steps = 0"),
    (lambda: TrainConfig(eval_every=0), "eval_every = 0"),
    (lambda: TokenizerTrainConfig(batch_size=0), "batch_size = 0"),
    (lambda: DataConfig(resolution=0), "resolution = 0"),
    (lambda: VARConfig(num_classes=0), "num_classes = 0"),
    (lambda: SampleConfig(cfg=float("nan")), "cfg = nan"),
    (lambda: SampleConfig(top_k=0.15), "top_k = 0.15"),
    (lambda: SampleConfig(top_p=0.0), "top_p = 0.0"),
])
def test_bad_configs_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        cfg()


def test_a_transformer_config_for_other_classes_is_refused():
    study = Study.create("smoke", device="cpu")
    with pytest.raises(ValueError, match="num_classes = 5"):
        study.transformer(study.var_config(num_classes=5))
    with pytest.raises(ValueError, match="has 10 classes but the dataset"):
        Study(get_profile("smoke", num_classes=10), "cpu", classes=("a", "b"))


def test_a_complete_read_only_cache_is_used_and_an_incomplete_one_refused_before_training(fresh_cache, monkeypatch):
    study = tiny(Study.create("smoke", device="cpu", progress=False))
    model, history = study.transformer()
    clf = study.classifier()
    files = {p: p.stat().st_mtime_ns for p in fresh_cache.rglob("*") if p.is_file()}
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "1")
    again = tiny(Study.create("smoke", device="cpu", progress=False))
    model_again, history_again = again.transformer()
    assert again.classifier().test_accuracy == clf.test_accuracy and history_again.equals(history)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model_again.parameters(), strict=True))
    assert {p: p.stat().st_mtime_ns for p in fresh_cache.rglob("*") if p.is_file()} == files  # nothing written
    deeper = again.var_config(depth=2)
    with pytest.raises(ArtifactError, match=f"{os.sep}var{os.sep}.*read-only"):
        again.transformer(deeper)
    assert {p: p.stat().st_mtime_ns for p in fresh_cache.rglob("*") if p.is_file()} == files


def test_the_claims_seeds_share_the_tokenizer_and_the_splits():
    study = Study.create("smoke", device="cpu")
    seeds = study.seeds()
    assert [s.seed for s in seeds] == list(study.profile.claim_seeds) == [0]
    other = study.for_seed(2)
    assert other.seed == 2 and other.tokenizer_key() == study.tokenizer_key()
    assert other.transformer_key() != study.transformer_key() and other.split("test") is study.split("test")
    assert get_profile("full").claim_seeds == (0, 1, 2)
