"""Typed configurations and named profiles.

A configuration fully determines an artifact: `artifacts.key_of(cfg, ...)` hashes the dataclass fields, so two
notebooks that ask for the same tokenizer get the same cached checkpoint.

Profiles: `smoke` (CI, seconds on a CPU), `quick` (the default, minutes on a laptop CPU), `full` (the study on one GPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PAPER_SCALES_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # the paper's scale schedules (token-map sides)
PAPER_SCALES_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def _require(cfg, ok: bool, field: str, rule: str) -> None:
    """A ValueError naming the config, the field, its value and the allowed range."""
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{field} = {getattr(cfg, field)!r}: {rule}")


def _positive_int(cfg, *fields: str) -> None:
    for f in fields:
        v = getattr(cfg, f)
        _require(cfg, isinstance(v, int) and not isinstance(v, bool) and v >= 1, f, "must be an integer >= 1")


def _seed(cfg) -> None:
    v = cfg.seed
    _require(cfg, isinstance(v, int) and not isinstance(v, bool) and v >= 0, "seed", "must be an integer >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Which images. `name` is "fashion-mnist" or a path to a folder with one sub-folder per class."""

    name: str = "fashion-mnist"
    resolution: int = 32
    channels: int = 1  # 1 = grayscale, 3 = RGB (image folders are converted on load)
    holdout: float = 0.1  # image folders: seeded fraction held out as the test split
    split_seed: int = 0
    limit_train: int | None = None  # use only the first N training images (smoke runs)
    limit_test: int | None = None

    def __post_init__(self):
        _positive_int(self, "resolution")
        _require(self, self.channels in (1, 3), "channels", "must be 1 (grayscale) or 3 (RGB)")
        _require(self, 0 < self.holdout < 1, "holdout", "must lie in (0, 1)")
        for f in ("limit_train", "limit_test"):
            if getattr(self, f) is not None:
                _positive_int(self, f)


@dataclass(frozen=True)
class TokenizerConfig:
    """Multi-scale VQVAE. `paper()` is the authors' vae_ch160v4096z32 (16x down, 10 scales, 256 px)."""

    in_channels: int = 1
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)  # len(ch_mult) - 1 downsamplings by 2
    num_res_blocks: int = 2
    using_sa: bool = True  # self-attention in every block of the lowest-resolution level
    using_mid_sa: bool = True
    dropout: float = 0.0
    z_channels: int = 32  # Cvae
    vocab_size: int = 1024  # V, one codebook shared by all scales
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)  # h_k = w_k; the last equals the latent size
    phi_ratio: float = 0.5  # phi(h) = (1 - r) h + r conv3x3(h)
    share_phi: int = 4  # 0: one phi per scale, 1: one for all, n > 1: n phis shared across scales
    beta: float = 0.25  # commitment weight

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolution(self) -> int:
        return self.scales[-1] * self.downsample

    @property
    def num_tokens(self) -> int:
        return sum(pn * pn for pn in self.scales)

    @classmethod
    def paper(cls, scales: tuple[int, ...] = PAPER_SCALES_256) -> TokenizerConfig:
        return cls(
            in_channels=3, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, vocab_size=4096,
            scales=scales, share_phi=4,
        )


PERCEPTUAL_TERMS = ("classifier", "lpips", "none")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Tokenizer training. The loss is L2 + VQ + lpips_weight * a perceptual term + gan_weight * GAN, as the paper's
    recipe (L2, LPIPS, GAN); `perceptual` says which term:

      "classifier"  the perceptual distance on the study's own classifier features (`classifier.PerceptualDistance`):
                    works offline, the default
      "lpips"       LPIPS (AlexNet) on ImageNet features; `lpips_backbone` is the path to torchvision's AlexNet
                    weights file (alexnet-owt-7be5be79.pth, from download.pytorch.org/models/); a missing file stops
                    before any training
      "none"        no perceptual term (L2 + VQ + GAN)
    """

    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    perceptual: str = "classifier"  # which perceptual term: "classifier" | "lpips" | "none" (see above)
    lpips_weight: float = 0.5  # the perceptual term's weight, LPIPS's or the classifier's; 0 switches it off
    lpips_backbone: str | None = None  # perceptual="lpips": path to torchvision's AlexNet weights file
    gan_weight: float = 0.1  # hinge GAN with a PatchGAN discriminator; 0 disables it
    gan_start: float = 0.5  # fraction of the steps before the discriminator is switched on
    restart_dead_codes_every: int = 200  # steps; 0 disables codebook restarts
    seed: int = 0
    compile: bool = False  # torch.compile the encoder, decoder and discriminator (GPU)

    def __post_init__(self):
        _positive_int(self, "steps", "batch_size")
        _seed(self)
        _require(self, self.lr > 0, "lr", "must be > 0")
        _require(self, self.perceptual in PERCEPTUAL_TERMS, "perceptual", f"must be one of {PERCEPTUAL_TERMS}")
        _require(self, self.lpips_weight >= 0, "lpips_weight", "must be >= 0 (0 switches the perceptual term off)")
        if self.perceptual == "lpips":
            _require(self, bool(self.lpips_backbone), "lpips_backbone", "perceptual='lpips' needs the path to "
                     "torchvision's AlexNet weights file (alexnet-owt-7be5be79.pth); without it use "
                     "perceptual='classifier'")
        else:
            _require(self, self.lpips_backbone is None, "lpips_backbone", f"is read only with perceptual='lpips', "
                     f"not {self.perceptual!r}; set perceptual='lpips' or leave it None")

    @property
    def perceptual_term(self) -> str:
        """The perceptual term in the loss: `perceptual`, or "none" when its weight is 0."""
        return self.perceptual if self.lpips_weight > 0 else "none"


@dataclass(frozen=True)
class VARConfig:
    """VAR transformer: width 64*depth, depth heads, MLP ratio 4 (paper Sec. 4). One-scale `scales` = raster AR."""

    depth: int = 4
    num_classes: int = 10
    vocab_size: int = 1024
    z_channels: int = 32
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    adaln: bool = True  # class-conditioned AdaLN; off = plain pre-LN blocks with the class as start token only
    attn_l2_norm: bool = True  # "attention normalisation": L2-normalised q, k with a learnable per-head scale
    shared_aln: bool = False
    cond_drop_rate: float = 0.1  # class dropout for classifier-free guidance (null class = num_classes)
    drop_path_rate: float | None = None  # None: 0.1 * depth / 24, as the authors' builder
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    head_dim: int = 64

    @property
    def width(self) -> int:
        return self.head_dim * self.depth

    @property
    def num_heads(self) -> int:
        return self.depth

    @property
    def num_tokens(self) -> int:
        return sum(pn * pn for pn in self.scales)

    @property
    def drop_path(self) -> float:
        return 0.1 * self.depth / 24 if self.drop_path_rate is None else self.drop_path_rate

    def __post_init__(self):
        _positive_int(self, "depth", "num_classes", "vocab_size", "z_channels", "head_dim")
        _require(self, len(self.scales) >= 1 and all(isinstance(p, int) and p >= 1 for p in self.scales), "scales",
                 "must be one or more token-map sides >= 1")


@dataclass(frozen=True)
class MultiScaleARConfig(VARConfig):
    """Next-token prediction over VAR's own multi-scale tokens (the claims protocol's control: the tokenizer held
    fixed, next-scale against next-token). The same fields as VARConfig; its type name enters the cache key
    (`artifacts.jsonable` tags dataclasses), so VAR's and the raster AR's keys stay as they were."""

    def __post_init__(self):
        super().__post_init__()
        _require(self, len(self.scales) >= 2, "scales", "must hold two or more scales (one token map is the raster "
                 "AR baseline: a plain VARConfig)")


def check_compatible(var_cfg: VARConfig, tok_cfg: TokenizerConfig) -> None:
    """A transformer reads and writes its tokenizer's tokens: the vocabulary, the latent channels and the scale
    schedule must agree (ValueError naming both values otherwise)."""
    for field, v, t in (("vocab_size", var_cfg.vocab_size, tok_cfg.vocab_size),
                        ("z_channels", var_cfg.z_channels, tok_cfg.z_channels),
                        ("scales", tuple(var_cfg.scales), tuple(tok_cfg.scales))):
        if v != t:
            raise ValueError(f"the transformer and the tokenizer disagree in {field}: {v} against {t}; build the "
                             f"transformer's config from the tokenizer's (Study.var_config does)")


@dataclass(frozen=True)
class TrainConfig:
    """Transformer training (authors' recipe: AdamW 0.9/0.95, wd 0.05, lr = base_lr * batch / 256, clip 2)."""

    steps: int = 2000
    batch_size: int = 256
    base_lr: float = 1e-4  # per 256 images (authors' tblr)
    lr_scale: float = 1.0  # multiplies base_lr; small models on small data like a larger rate
    warmup_frac: float = 0.02
    final_lr_frac: float = 0.01
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 2.0
    label_smoothing: float = 0.0
    scale_weighting: str = "uniform"  # "uniform" (mean over all L tokens, as the authors) or "per_scale"
    # how many token sets training draws among (`Study.training_tokens`): 1 = the images as they are; more add
    # copies shifted by a few pixels (and flipped where the data allows), as the authors' random crops vary them
    token_sets: int = 1
    eval_every: int = 500
    seed: int = 0
    compile: bool = False  # torch.compile the training step (GPU)
    # capture the whole step (input, forward, backward, clip, AdamW) in one CUDA graph and replay it, compiled or
    # not (CUDA only, one process; see train.TrainStep): for the small, host-bound models of the 32 px study
    cuda_graph: bool = False

    def __post_init__(self):
        _positive_int(self, "steps", "batch_size", "eval_every", "token_sets")
        _seed(self)
        _require(self, self.base_lr * self.lr_scale > 0, "lr_scale", "base_lr * lr_scale must be > 0")

    @property
    def lr(self) -> float:
        return self.base_lr * self.lr_scale * self.batch_size / 256


@dataclass(frozen=True)
class SampleConfig:
    """Sampling settings. Two named presets: PAPER_SAMPLING and README_SAMPLING (they disagree; see issue #86)."""

    cfg: float = 1.5
    cfg_schedule: str = "linear"  # "linear": t = cfg * k / (K - 1) at scale k (paper, after MUSE); "constant"
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    temperature: float = 1.0
    smooth: bool = False  # Gumbel-softmax soft codes, for visualisation only

    def __post_init__(self):
        _require(self, isinstance(self.cfg, (int, float)) and math.isfinite(self.cfg) and self.cfg >= 0, "cfg",
                 "the guidance scale must be a finite number >= 0 (0 = no guidance)")
        _require(self, isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0, "top_k",
                 "must be an integer >= 0 (0 = off); a fraction of the vocabulary must be converted first")
        _require(self, 0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 = off)")
        _require(self, math.isfinite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")


PAPER_SAMPLING = SampleConfig(cfg=2.0, top_k=600, top_p=1.0)
README_SAMPLING = SampleConfig(cfg=1.5, top_k=900, top_p=0.96)


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataConfig
    tokenizer: TokenizerConfig
    tokenizer_train: TokenizerTrainConfig
    var: VARConfig
    train: TrainConfig
    sample: SampleConfig
    scaling_depths: tuple[int, ...]
    scaling_token_sets: int  # TrainConfig.token_sets of the scaling study's runs
    # may augmented token sets flip images left-right? The authors' default is no (`hflip=False`); Fashion-MNIST's
    # footwear all faces left (the mean sandal, sneaker and ankle boot are far from mirror-symmetric), so no here
    hflip: bool
    scale_up_depth: int  # the ablation's last row ("+scale up"): a deeper VAR than `var.depth`
    n_eval: int  # generated images per FID estimate
    classifier_epochs: int
    claim_seeds: tuple[int, ...]  # the training seeds of every compared model (claims protocol: 3 at full)


def _smoke() -> Profile:
    tok = TokenizerConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, vocab_size=64,
                          scales=(1, 2, 4, 8))
    return Profile(
        name="smoke",
        data=DataConfig(limit_train=512, limit_test=256),
        tokenizer=tok,
        tokenizer_train=TokenizerTrainConfig(steps=30, batch_size=32, gan_weight=0.0, restart_dead_codes_every=10),
        var=VARConfig(depth=1, vocab_size=tok.vocab_size, scales=tok.scales),
        train=TrainConfig(steps=30, batch_size=32, lr_scale=20.0, eval_every=15),
        sample=SampleConfig(cfg=1.5, top_k=0, top_p=1.0),
        scaling_depths=(1, 2, 3),
        scaling_token_sets=2,
        hflip=False,
        scale_up_depth=2,
        n_eval=200,  # FID needs more samples than the classifier's 128 feature dimensions
        classifier_epochs=1,
        claim_seeds=(0,),
    )


def _quick() -> Profile:
    # Sized for `make scaling` on a 2-core CPU: the classifier, the tokenizer (its perceptual term reads the
    # classifier), 4 depths and the learning-rate check's 4 runs.
    tok = TokenizerConfig(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, vocab_size=512)
    return Profile(
        name="quick",
        data=DataConfig(limit_test=1000),
        tokenizer=tok,
        tokenizer_train=TokenizerTrainConfig(steps=900, batch_size=64, gan_weight=0.0),
        var=VARConfig(depth=3, vocab_size=tok.vocab_size, scales=tok.scales),
        train=TrainConfig(steps=200, batch_size=48, lr_scale=30.0, eval_every=50),
        sample=SampleConfig(cfg=1.5, top_k=0, top_p=1.0),
        scaling_depths=(1, 2, 3, 4),
        scaling_token_sets=1,  # 200 steps of 48 see a sixth of the images: nothing to vary between epochs
        hflip=False,
        scale_up_depth=6,
        n_eval=1000,
        classifier_epochs=2,
        claim_seeds=(0,),
    )


def _full() -> Profile:
    # Sized for one GPU through varlib.runner: the classifier first (the tokenizer's perceptual term reads it), then
    # the tokenizers (ch=96, 5000 steps of 256: 17 steps/s alone on one H200 with the term, 6-7 each with three at
    # once: GPU-bound), then the transformers, several at once, compiled and captured in one CUDA graph: on one H200, d2
    # 239.6, d6 37.6, d8 20.2, d10 11.6 steps/s at B=512 (results/bench_train/study_profile_h200/).
    tok = TokenizerConfig(ch=96, ch_mult=(1, 2, 2), num_res_blocks=2, vocab_size=1024)
    return Profile(
        name="full",
        data=DataConfig(),
        tokenizer=tok,
        tokenizer_train=TokenizerTrainConfig(steps=5000, batch_size=256),
        var=VARConfig(depth=6, vocab_size=tok.vocab_size, scales=tok.scales),
        train=TrainConfig(steps=2000, batch_size=512, lr_scale=4.0, eval_every=250, compile=True, cuda_graph=True),
        sample=SampleConfig(cfg=1.5, top_k=0, top_p=1.0),
        scaling_depths=(2, 3, 4, 5, 6, 8),  # 0.79M to 39M parameters: 1.7 decades of N
        scaling_token_sets=4,  # about 17 epochs of the training images: each version seen about 4 times
        hflip=False,
        scale_up_depth=10,
        n_eval=10000,
        classifier_epochs=15,
        claim_seeds=(0, 1, 2),
    )


PROFILES = {"smoke": _smoke, "quick": _quick, "full": _full}


def get_profile(name: str, dataset: str = "fashion-mnist", resolution: int | None = None,
                channels: int | None = None, num_classes: int | None = None) -> Profile:
    """The named profile, adapted to `dataset` (a folder path), `resolution` and the dataset's class count where they
    differ from the default (`Study` passes the count read off the data)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    prof = PROFILES[name]()
    data = dataclasses.replace(prof.data, name=dataset)
    if channels is not None:
        data = dataclasses.replace(data, channels=channels)
    elif dataset != "fashion-mnist":
        data = dataclasses.replace(data, channels=3)
    if resolution is not None:
        data = dataclasses.replace(data, resolution=resolution)
    tok = prof.tokenizer
    if data.resolution != tok.resolution:
        if data.resolution % tok.downsample:
            raise ValueError(f"resolution {data.resolution} is not a multiple of the tokenizer's "
                             f"downsampling factor {tok.downsample}")
        last = data.resolution // tok.downsample
        tok = dataclasses.replace(tok, scales=scales_for(last))
    tok = dataclasses.replace(tok, in_channels=data.channels)
    var = dataclasses.replace(prof.var, vocab_size=tok.vocab_size, z_channels=tok.z_channels, scales=tok.scales,
                              num_classes=num_classes or prof.var.num_classes)
    return dataclasses.replace(prof, data=data, tokenizer=tok, var=var)


def scales_for(last: int) -> tuple[int, ...]:
    """A scale schedule ending at `last`: 1, 2, 3, 4, 5, 6, then roughly x1.3 steps (the paper's 256 px pattern)."""
    out = [1]
    while out[-1] < last:
        nxt = out[-1] + 1 if out[-1] < 6 else max(out[-1] + 1, round(out[-1] * 1.3))
        out.append(min(nxt, last))
    return tuple(out)


def ar_baseline(prof: Profile) -> tuple[TokenizerConfig, VARConfig]:
    """The raster AR baseline for a profile: a one-scale tokenizer of the same architecture (its final token grid)
    and a transformer of the same depth rule over that grid (the ablation's first row, the speed comparison)."""
    tok = dataclasses.replace(prof.tokenizer, scales=(prof.tokenizer.scales[-1],))
    return tok, dataclasses.replace(prof.var, scales=tok.scales)
