"""The study's stages in one object: `Study` builds the tokenizer, the token sets, the transformers and the feature
classifier, caches each under a key it alone composes, and threads the seeds.

    study = Study.create("quick", dataset="fashion-mnist", seed=1)
    vae = study.tokenizer()                                   # trained on first use, then from the cache
    model, history = study.transformer(study.var_config(depth=4))
    clf = study.classifier()

What determines an artifact, and so its key:
  tokenizer    the dataset's identity (its content, `data.dataset_id`), the data config, the tokenizer config, its
               training config with `tokenizer_seed`; with the classifier's perceptual term, the classifier's key
  tokens       the tokenizer's key, the data, the split; for an augmented training set also its index and recipe
  transformer  its config, its training config with `seed` (compile and cuda_graph left out: how, not what), the data,
               the tokenizer's key; with several token sets, their augmentation recipe
  classifier   the data, the architecture and recipe, its epochs and `classifier_seed`

`seed` selects the transformers' training seed and the sampling streams (`sampling_seed`); the tokenizer and the
classifier keep their own seeds (0 unless asked), so runs with several seeds share one tokenizer and one classifier.
The class count and names come from the data; the null class of classifier-free guidance is always the count.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import fast_sampling, sampling
from .artifacts import TrainState, artifact_path, get_or_build, jsonable, key_of
from .classifier import CLASSIFIER_RECIPE, CLASSIFIER_WIDTHS, Classifier, classifier_from_artifact, train_classifier
from .config import (
    MultiScaleARConfig,
    Profile,
    SampleConfig,
    TokenizerConfig,
    TokenizerTrainConfig,
    TrainConfig,
    VARConfig,
    ar_baseline,
    check_compatible,
    get_profile,
)
from .data import ImageDataset, dataset_classes, dataset_id, load_split
from .device import resolve_device
from .parallel import world_size
from .report import Report
from .tokenizer import VQVAE, frozen, split_scales
from .tokenizer_train import USAGE_IMAGES, encode_images, perceptual_loss, seeded_generator, train_tokenizer
from .train import runnable_step, token_dtype, train_model
from .transformer import VAR, ARTransformer, build_model

log = logging.getLogger(__name__)

PARAM_MATCH = 0.02  # the claims protocol: the controlled AR/VAR comparison holds parameter counts within 2%


class Study:
    """The stages of one study: a profile adapted to one dataset and resolution, on one device, with one seed."""

    def __init__(self, profile: Profile, device: torch.device | str = "cpu", seed: int = 0, *,
                 tokenizer_seed: int = 0, classifier_seed: int = 0, classes: tuple[str, ...] | None = None,
                 progress: bool = True):
        for name, value in (("seed", seed), ("tokenizer_seed", tokenizer_seed), ("classifier_seed", classifier_seed)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} = {value!r}: must be an integer >= 0")
        self.profile, self.device, self.seed = profile, resolve_device(device), seed
        self.tokenizer_seed, self.classifier_seed, self.progress = tokenizer_seed, classifier_seed, progress
        self.classes = tuple(classes) if classes is not None else dataset_classes(profile.data)
        if profile.var.num_classes != len(self.classes):
            raise ValueError(f"the profile's transformer has {profile.var.num_classes} classes but the dataset "
                             f"{profile.data.name} has {len(self.classes)}; make the Study with Study.create, which "
                             f"reads the count off the data")
        self._splits: dict[str, ImageDataset] = {}
        self._tokenizers: dict[str, VQVAE] = {}

    @classmethod
    def create(cls, profile: str = "quick", dataset: str = "fashion-mnist", resolution: int | None = None,
               seed: int = 0, device: str | torch.device = "auto", **kwargs: Any) -> Study:
        """The named profile (smoke | quick | full) adapted to `dataset` ("fashion-mnist" or a folder with one
        sub-folder per class; a relative path is taken from the current directory) and `resolution`."""
        if resolution is not None and (not isinstance(resolution, int) or resolution <= 0):
            raise ValueError(f"resolution = {resolution!r}: must be a positive integer (pixels) or None")
        if dataset != "fashion-mnist":
            dataset = str(Path(dataset).expanduser().resolve())
        probe = get_profile(profile, dataset=dataset, resolution=resolution)
        classes = dataset_classes(probe.data)
        prof = get_profile(profile, dataset=dataset, resolution=resolution, num_classes=len(classes))
        return cls(prof, device, seed, classes=classes, **kwargs)

    def replace(self, **profile_changes: Any) -> Study:
        """The same study with some of the profile's fields replaced (e.g. train=..., tokenizer_train=...)."""
        return Study(dataclasses.replace(self.profile, **profile_changes), self.device, self.seed,
                     tokenizer_seed=self.tokenizer_seed, classifier_seed=self.classifier_seed, classes=self.classes,
                     progress=self.progress)

    def with_tokenizer_train(self, **changes: Any) -> Study:
        """The same study with its tokenizers trained under changed `TokenizerTrainConfig` fields (e.g.
        perceptual="none"); its token sets and transformers are those of these tokenizers. Shares the splits."""
        other = self.replace(tokenizer_train=dataclasses.replace(self.profile.tokenizer_train, **changes))
        other._splits = self._splits
        return other

    def perceptual_variants(self) -> dict[str, Study]:
        """This study and the same one whose tokenizers train without the perceptual term, keyed by the term
        (notebook 01 compares their tokenizers and one VAR on each: the claims protocol, item 1)."""
        return {self.tokenizer_train_config.perceptual_term: self, "none": self.with_tokenizer_train(perceptual="none")}

    def for_seed(self, seed: int) -> Study:
        """The same study with another training/sampling seed: it shares the tokenizer, the classifier and the
        decoded splits (neither depends on the seed)."""
        other = Study(self.profile, self.device, seed, tokenizer_seed=self.tokenizer_seed,
                      classifier_seed=self.classifier_seed, classes=self.classes, progress=self.progress)
        other._splits, other._tokenizers = self._splits, self._tokenizers
        return other

    def seeds(self) -> list[Study]:
        """One study per training seed of the claims protocol (`profile.claim_seeds`: three at the full profile)."""
        return [self.for_seed(s) for s in self.profile.claim_seeds]

    # ------------------------------------------------------------------------------------------------- data
    @property
    def data(self):
        return self.profile.data

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def null_class(self) -> int:
        """The unconditional label of classifier-free guidance: always the class count."""
        return self.num_classes

    def split(self, name: str) -> ImageDataset:
        """The "train" or "test" split, decoded once per Study."""
        if name not in self._splits:
            self._splits[name] = load_split(self.data, name)
        return self._splits[name]

    @functools.cached_property
    def dataset_id(self) -> str:
        """The dataset's content identity (`data.dataset_id`), taken once per Study."""
        return dataset_id(self.data)

    def _data_spec(self) -> dict:
        """The data as it enters cache keys: its content identity in place of the path, plus every config field."""
        return jsonable(dataclasses.replace(self.data, name=self.dataset_id))

    # -------------------------------------------------------------------------------------------- configs
    @property
    def tokenizer_train_config(self) -> TokenizerTrainConfig:
        return dataclasses.replace(self.profile.tokenizer_train, seed=self.tokenizer_seed)

    @property
    def train_config(self) -> TrainConfig:
        """The profile's recipe with the study's seed, its captured step only where it runs (`train.runnable_step`:
        on the CPU or under torchrun the full profile trains with the compiled step)."""
        return runnable_step(dataclasses.replace(self.profile.train, seed=self.seed), self.device, world_size())

    def var_config(self, depth: int | None = None, **changes: Any) -> VARConfig:
        """The profile's VAR at `depth` (None: the profile's), with any other field changed."""
        return dataclasses.replace(self.profile.var, depth=depth or self.profile.var.depth, **changes)

    def ar_configs(self, **changes: Any) -> tuple[TokenizerConfig, VARConfig]:
        """The raster AR baseline: its one-scale tokenizer and its transformer (fields of the latter changed)."""
        tok, var = ar_baseline(self.profile)
        return tok, dataclasses.replace(var, **changes)

    def controlled_configs(self, depth: int | None = None) -> dict[str, VARConfig]:
        """The claims protocol's three models at `depth` (None: the profile's): "raster AR" on its one-scale
        tokenizer, "AR on VAR tokens" (next-token prediction over VAR's multi-scale tokens, VAR's tokenizer) and
        "VAR". They share the blocks; the positions differ by L (155 against 64 at 32 px). ValueError with the counts
        unless the parameter counts agree within PARAM_MATCH."""
        var_cfg = self.var_config(depth)
        configs = {"raster AR": self.ar_configs(depth=var_cfg.depth)[1],
                   "AR on VAR tokens": MultiScaleARConfig(**dataclasses.asdict(var_cfg)), "VAR": var_cfg}
        with torch.device("meta"):  # shapes only: no memory, no initialisation work
            counts = {name: build_model(cfg).num_params() for name, cfg in configs.items()}
        if max(counts.values()) > (1 + PARAM_MATCH) * min(counts.values()):
            raise ValueError(f"the controlled models at depth {var_cfg.depth} differ in parameters by more than "
                             f"{PARAM_MATCH:.0%}: {counts}")
        return configs

    def tokenizer_for(self, var_cfg: VARConfig) -> TokenizerConfig:
        """The tokenizer a transformer config reads: the multi-scale one (VAR, and the AR over its tokens), or for
        one scale the AR baseline's."""
        return ar_baseline(self.profile)[0] if len(var_cfg.scales) == 1 else self.profile.tokenizer

    def sampling_seed(self, stream: int = 0) -> int:
        """The seed of sample stream `stream` of this study's `seed` (independent across seeds and streams)."""
        return int(np.random.SeedSequence([self.seed, stream]).generate_state(1)[0])

    # -------------------------------------------------------------------------------------------- tokenizer
    def _tokenizer_spec(self, tok_cfg: TokenizerConfig) -> dict:
        spec = {"data": self._data_spec(), "tokenizer": tok_cfg, "train": self.tokenizer_train_config}
        if self.tokenizer_train_config.perceptual_term == "classifier":  # its features shape the loss
            spec["classifier"] = self.classifier_key()
        return spec

    def tokenizer_key(self, tok_cfg: TokenizerConfig | None = None) -> str:
        return key_of("tokenizer", self._tokenizer_spec(tok_cfg or self.profile.tokenizer))

    def tokenizer_record(self, tok_cfg: TokenizerConfig | None = None) -> dict:
        """The tokenizer's artifact (state dict, training history, codebook usage), trained on first use."""
        tok_cfg = tok_cfg or self.profile.tokenizer
        if (tok_cfg.in_channels, tok_cfg.resolution) != (self.data.channels, self.data.resolution):
            raise ValueError(f"the tokenizer ({tok_cfg.in_channels} channels, {tok_cfg.resolution} px) does not fit "
                             f"the data ({self.data.channels} channels, {self.data.resolution} px)")
        spec = self._tokenizer_spec(tok_cfg)
        resume = TrainState("tokenizer", spec)
        train_cfg = self.tokenizer_train_config

        def build() -> dict:
            term = train_cfg.perceptual_term  # its network first: a missing LPIPS backbone stops before training
            perceptual = perceptual_loss(train_cfg, self.device, self.classifier() if term == "classifier" else None)
            t0 = time.perf_counter()
            vae, history = train_tokenizer(self.split("train").images_u8, tok_cfg, train_cfg, self.device,
                                           self.progress, perceptual=perceptual, resume=resume)
            train_seconds = time.perf_counter() - t0
            idx_NL = encode_images(frozen(vae), self.split("test").images_u8[:USAGE_IMAGES], self.device)
            return {"state_dict": {k: v.cpu() for k, v in vae.state_dict().items()},
                    "configs": jsonable(spec), "history": history.to_dict("list"),
                    "perceptual": {"term": term, "weight": train_cfg.lpips_weight,
                                   "classifier": spec.get("classifier"), "lpips_backbone": train_cfg.lpips_backbone},
                    "train_seconds": train_seconds,
                    "usage": vae.codebook_usage(idx_NL),
                    "usage_per_scale": [vae.codebook_usage(t) for t in split_scales(idx_NL, tok_cfg.scales)]}

        payload = get_or_build("tokenizer", spec, build)
        resume.clear()
        return payload

    def tokenizer(self, tok_cfg: TokenizerConfig | None = None) -> VQVAE:
        """The trained tokenizer, frozen (eval mode, no gradients) on the study's device."""
        tok_cfg = tok_cfg or self.profile.tokenizer
        key = self.tokenizer_key(tok_cfg)
        if key not in self._tokenizers:
            vae = VQVAE(tok_cfg)
            vae.load_state_dict(self.tokenizer_record(tok_cfg)["state_dict"])
            self._tokenizers[key] = frozen(vae.to(self.device))
        return self._tokenizers[key]

    def tokens(self, split: str, tok_cfg: TokenizerConfig | None = None, augmentation: int = 0) -> dict:
        """The tokens of one split, encoded once by the frozen tokenizer: dict(idx=(N, L) int16/int32, labels=(N,)).
        `augmentation` a >= 1: the tokens of the training images as `augmented_images(a)` varies them (the test
        split is never augmented)."""
        if not isinstance(augmentation, int) or isinstance(augmentation, bool) or augmentation < 0:
            raise ValueError(f"augmentation = {augmentation!r}: must be an integer >= 0 (0 = the images as they are)")
        if augmentation and split != "train":
            raise ValueError(f"augmentation = {augmentation} of the {split!r} split: only the training split has "
                             f"augmented token sets; evaluation reads the images as they are (augmentation = 0)")
        tok_cfg = tok_cfg or self.profile.tokenizer

        def build() -> dict:
            images = self.split(split)
            images_u8 = self.augmented_images(augmentation) if augmentation else images.images_u8
            idx_NL = encode_images(self.tokenizer(tok_cfg), images_u8, self.device)
            return {"idx": idx_NL.to(token_dtype(tok_cfg.vocab_size)), "labels": images.labels.clone()}

        return get_or_build("tokens", self._tokens_spec(split, tok_cfg, augmentation), build)

    def _tokens_spec(self, split: str, tok_cfg: TokenizerConfig, augmentation: int) -> dict:
        spec = {"tokenizer": self.tokenizer_key(tok_cfg), "data": self._data_spec(), "split": split}
        if augmentation:
            spec["augmentation"] = {"index": augmentation, **self.augmentation_spec()}
        return spec

    def tokens_key(self, split: str, tok_cfg: TokenizerConfig | None = None, augmentation: int = 0) -> str:
        return key_of("tokens", self._tokens_spec(split, tok_cfg or self.profile.tokenizer, augmentation))

    def training_tokens(self, train_cfg: TrainConfig | None = None,
                        tok_cfg: TokenizerConfig | None = None) -> list[dict]:
        """The `train_cfg.token_sets` token sets of the training split that `train_model` draws among: set 0 the
        images as they are, sets a >= 1 augmented (`tokens("train", tok_cfg, a)`)."""
        train_cfg = train_cfg or self.train_config
        return [self.tokens("train", tok_cfg, a) for a in range(train_cfg.token_sets)]

    def augmentation_spec(self) -> dict:
        """How augmented token sets vary the training images: shifts of up to 1/16 of the side in each direction (2 px
        at 32 px, as far as the authors' random 256 px crops of 288 px images move), flips where `Profile.hflip`."""
        return {"max_shift": max(1, self.data.resolution // 16), "hflip": self.profile.hflip}

    def augmented_images(self, augmentation: int) -> torch.Tensor:
        """The training images (uint8, N C H W) of augmented set `augmentation` >= 1: each moved by its own offset
        (dy, dx) in [-s, s]^2, the uncovered border filled with pixel 0 (the background, -1 in the model's range),
        and where allowed flipped left-right with probability 1/2. The set's index alone seeds the draws, so every
        training seed reads the same sets."""
        if not isinstance(augmentation, int) or isinstance(augmentation, bool) or augmentation < 1:
            raise ValueError(f"augmentation = {augmentation!r}: augmented sets are numbered from 1 (0 = as they are)")
        spec = self.augmentation_spec()
        s, images_NCHW = spec["max_shift"], self.split("train").images_u8
        N, _, H, W = images_NCHW.shape
        gen = seeded_generator(augmentation)
        shift_N2 = torch.randint(-s, s + 1, (N, 2), generator=gen)
        flip_N = torch.rand(N, generator=gen) < 0.5
        padded = F.pad(images_NCHW, (s, s, s, s))
        out = torch.empty_like(images_NCHW)
        for dy, dx in shift_N2.unique(dim=0).tolist():
            moved = (shift_N2 == torch.tensor([dy, dx])).all(1)
            out[moved] = padded[moved, :, s - dy:s - dy + H, s - dx:s - dx + W]  # out[y, x] = image[y - dy, x - dx]
        if spec["hflip"]:
            out[flip_N] = out[flip_N].flip(-1)
        return out

    # ------------------------------------------------------------------------------------------ transformers
    def _transformer_spec(self, var_cfg: VARConfig, train_cfg: TrainConfig, tok_cfg: TokenizerConfig) -> dict:
        spec = {"var": var_cfg, "train": jsonable(dataclasses.replace(train_cfg, compile=False)),
                "data": self._data_spec(), "tokenizer": self.tokenizer_key(tok_cfg)}
        del spec["train"]["cuda_graph"]  # how, not what, as compile; newer than the cached models, so left out whole
        if train_cfg.token_sets == 1:  # how every transformer trained before there were several: the same key
            del spec["train"]["token_sets"]
        else:  # the augmented sets' recipe determines the model as much as the training config does
            spec["augmentation"] = self.augmentation_spec()
        return spec

    def transformer_key(self, var_cfg: VARConfig | None = None, train_cfg: TrainConfig | None = None) -> str:
        var_cfg = var_cfg or self.var_config()
        tok_cfg = self.tokenizer_for(var_cfg)
        return key_of("var", self._transformer_spec(var_cfg, train_cfg or self.train_config, tok_cfg))

    def transformer(self, var_cfg: VARConfig | None = None,
                    train_cfg: TrainConfig | None = None) -> tuple[VAR | ARTransformer, pd.DataFrame]:
        """A trained VAR (several scales) or raster AR (one scale) and its history (one row per evaluation),
        trained on first use on the tokens of its tokenizer; an interrupted run resumes from its last evaluation."""
        var_cfg = var_cfg or self.var_config()
        train_cfg = train_cfg or self.train_config
        if var_cfg.num_classes != self.num_classes:
            raise ValueError(f"VARConfig.num_classes = {var_cfg.num_classes}, but the dataset has {self.num_classes} "
                             f"classes; build the config with Study.var_config")
        tok_cfg = self.tokenizer_for(var_cfg)
        check_compatible(var_cfg, tok_cfg)
        spec = self._transformer_spec(var_cfg, train_cfg, tok_cfg)
        resume = TrainState("var", spec)

        def build() -> dict:
            model, history = train_model(var_cfg, train_cfg, self.tokenizer(tok_cfg),
                                         self.training_tokens(train_cfg, tok_cfg),
                                         self.tokens("test", tok_cfg), self.device, self.progress, resume)
            return {"model": model.state_dict(), "history": history.to_dict("records")}

        payload = get_or_build("var", spec, build)
        resume.clear()
        model = build_model(var_cfg)
        model.load_state_dict(payload["model"])
        return model.to(self.device).eval(), pd.DataFrame(payload["history"])

    # -------------------------------------------------------------------------------------------- sampling
    def sample(self, model: VAR | ARTransformer, vae: VQVAE, labels, sample_cfg: SampleConfig, stream: int = 0,
               batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples for every label from sample stream `stream` (seed `sampling_seed(stream)`): (tokens (N, L) int64,
        images (N, C, H, W) uint8), both on the CPU. On a GPU through the CUDA-graph samplers
        (`fast_sampling.sample_many`: `VARSampler` for VAR, `ARSampler` for the next-token ARs), elsewhere the plain
        loop (`sampling.sample_many`); batch i draws from `batch_generator(seed, i)` either way. Under the caller's
        autocast, if any."""
        seed = self.sampling_seed(stream)
        if model.lvl_1L.device.type == "cuda":
            return fast_sampling.sample_many(model, vae, labels, sample_cfg, batch_size, seed)
        return sampling.sample_many(model, vae, labels, sample_cfg, batch_size, seed)

    # -------------------------------------------------------------------------------------------- classifier
    def _classifier_spec(self) -> dict:
        return {"data": self._data_spec(), "widths": CLASSIFIER_WIDTHS, "recipe": CLASSIFIER_RECIPE,
                "epochs": self.profile.classifier_epochs, "seed": self.classifier_seed}

    def classifier_key(self) -> str:
        return key_of("classifier", self._classifier_spec())

    def classifier(self) -> Classifier:
        """The feature classifier behind the generation metrics and the tokenizer's default perceptual term,
        trained on the training split on first use."""
        spec = self._classifier_spec()
        payload = get_or_build("classifier", spec, lambda: train_classifier(
            self.split("train"), self.split("test"), spec["epochs"], self.device, self.classifier_seed))
        return classifier_from_artifact(artifact_path("classifier", spec), payload)

    # -------------------------------------------------------------------------------------------- outputs
    def report(self, name: str, out_dir: str | Path | None = None, **params: Any) -> Report:
        """The Report that writes a notebook's tables and figures (under results/<name>/ for the full profile,
        results/<name>/<profile>/ for the others) with the study's parameters in its provenance."""
        all_params = {"profile": self.profile.name, "dataset": self.data.name, "resolution": self.data.resolution,
                      "device": str(self.device), "seed": self.seed, "tokenizer_seed": self.tokenizer_seed,
                      "classifier_seed": self.classifier_seed, **params}
        return Report(name, all_params, out_dir=out_dir, device=self.device, seed=self.seed,
                      profile=self.profile.name)
