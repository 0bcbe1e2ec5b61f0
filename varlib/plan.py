"""What each notebook trains, and the job plan of a study: every stage the notebooks need, once, in dependency order.

The notebooks take their model lists from the functions below, which the plan reads too:

    for run in scaling_runs(study):                  # 04_scaling: every depth with every training seed
        model, history = run.transformer()
    jobs = plan(study, ["03_ablation", "04_scaling"])

A `Job` is one stage (a tokenizer, a token set, the classifier, a transformer of one seed) under the cache key that
`Study` composes for it, with the keys of the jobs it reads; `varlib.runner` trains the jobs several at once, each
once its dependencies are in the cache, and then runs the notebooks on the filled cache. Computing a plan trains
nothing: every key is a hash of configurations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import MultiScaleARConfig, TokenizerConfig, TrainConfig, VARConfig
from .study import Study
from .transformer import build_model, steps_for_flops, training_flops

LR_FACTORS = (0.5, 2.0)  # the claims protocol's learning-rate check: the default rate halved and doubled


@dataclass(frozen=True)
class Run:
    """One transformer a notebook trains: the study of its training seed, its config and its training recipe."""

    study: Study
    var: VARConfig
    train: TrainConfig

    @property
    def seed(self) -> int:
        return self.study.seed

    def key(self) -> str:
        return self.study.transformer_key(self.var, self.train)

    def transformer(self):
        """The trained model and its history (`Study.transformer`): from the cache, or trained now."""
        return self.study.transformer(self.var, self.train)

    def flops(self) -> float:
        """The training FLOPs of the run (`transformer.training_flops`, on a model built on the meta device)."""
        with torch.device("meta"):  # parameter counts only
            return training_flops(build_model(self.var), self.train.steps, self.train.batch_size)


def _default_runs(study: Study, var_cfgs: list[VARConfig]) -> list[Run]:
    """Each config once per training seed of the claims protocol, with that seed's default recipe."""
    unique = list(dict.fromkeys(var_cfgs))
    return [Run(s, cfg, s.train_config) for s in study.seeds() for cfg in unique]


# ------------------------------------------------------------------------------------- the notebooks' models

def main_run(study: Study, depth: int | None = None) -> Run:
    """The profile's VAR (at `depth`) with the study's own seed: 02_train_var's model, 06_fid_is's sweep model."""
    return Run(study, study.var_config(depth), study.train_config)


def ablation_models(study: Study, scale_up_depth: int | None = None) -> list[VARConfig]:
    """03_ablation: the transformer of each row of Table 3 (`paper.TABLE3`, in order), each trained with every claims
    seed; rows that differ only in sampling (+top-k, +CFG) share the model of the row before."""
    no_norm = study.var_config(attn_l2_norm=False)
    return [study.ar_configs(adaln=False, attn_l2_norm=False)[1],  # AR baseline (reads the one-scale tokenizer)
            dataclasses.replace(no_norm, adaln=False),  # AR -> VAR
            no_norm, no_norm, no_norm,  # +AdaLN, +top-k, +CFG
            study.var_config(),  # +attention normalisation
            study.var_config(scale_up_depth or study.profile.scale_up_depth)]  # +scale up


def scaling_train_config(study: Study, lr_factor: float = 1.0) -> TrainConfig:
    """04_scaling's recipe for the seed of `study`: the profile's, drawing among the scaling token sets (the same
    steps x batch for every size), its learning rate times `lr_factor`."""
    cfg = study.train_config
    return dataclasses.replace(cfg, token_sets=study.profile.scaling_token_sets, lr_scale=cfg.lr_scale * lr_factor)


def scaling_runs(study: Study, depths: tuple[int, ...] | None = None) -> list[Run]:
    """04_scaling: every depth (None: the profile's scaling depths) with every claims seed, seed by seed."""
    return [Run(s, s.var_config(d), scaling_train_config(s))
            for s in study.seeds() for d in depths or study.profile.scaling_depths]


def lr_check_runs(study: Study, depths: tuple[int, ...] | None = None) -> dict[int, dict[float, Run]]:
    """04_scaling's learning-rate check: the smallest and the largest depth, trained once (the first claims seed) at
    each of `LR_FACTORS` times the default rate; {depth: {factor: run}}."""
    depths = depths or study.profile.scaling_depths
    first = study.seeds()[0]
    return {d: {f: Run(first, first.var_config(d), scaling_train_config(first, f)) for f in LR_FACTORS}
            for d in sorted({min(depths), max(depths)})}


def zero_shot_runs(study: Study) -> list[tuple[Run, Run]]:
    """05_zero_shot: per claims seed, the profile's VAR and the raster AR baseline."""
    return [(Run(s, s.var_config(), s.train_config), Run(s, s.ar_configs()[1], s.train_config))
            for s in study.seeds()]


def fid_models(study: Study, depths: tuple[int, ...] | None = None) -> list[VARConfig]:
    """06_fid_is, Table 1: VAR at every depth (None: the profile's scaling depths), then the raster AR baseline, each
    trained with every claims seed."""
    return [study.var_config(d) for d in depths or study.profile.scaling_depths] + [study.ar_configs()[1]]


def comparisons_by_default(study: Study) -> bool:
    """Whether the notebooks' costlier comparisons run unless told (06_fid_is's controlled AR/VAR comparison,
    01_tokenizer's VAR on each tokenizer): at quick and full, not at smoke (minutes of sampling on 2 CPU cores)."""
    return study.profile.name != "smoke"


def tokenizer_studies(study: Study, notebook: str) -> list[Study]:
    """The studies whose own tokenizer `notebook` reads beside its transformers' tokenizers: 01_tokenizer compares
    the tokenizer trained with and without its perceptual term (`Study.perceptual_variants`)."""
    return list(study.perceptual_variants().values()) if notebook == "01_tokenizer" else []


def perceptual_runs(study: Study) -> list[Run]:
    """01_tokenizer's comparison (claims protocol 1): the profile's VAR on the tokenizer of each perceptual variant."""
    return [main_run(s) for s in study.perceptual_variants().values()]


def controlled_runs(study: Study) -> dict[str, Run]:
    """06_fid_is's controlled comparison (claims protocol 3) for the seed of `study`: the raster AR at VAR's training
    steps and at VAR's training FLOPs, the AR over VAR's tokens and VAR, of matched size (`controlled_configs`)."""
    configs, tc = study.controlled_configs(), study.train_config
    budget = Run(study, configs["VAR"], tc).flops()
    with torch.device("meta"):  # parameter counts only
        equal_flops = steps_for_flops(build_model(configs["raster AR"]), budget, tc.batch_size)
    steps = {"raster AR (equal steps)": ("raster AR", tc.steps), "raster AR (equal FLOPs)": ("raster AR", equal_flops),
             "AR on VAR tokens": ("AR on VAR tokens", tc.steps), "VAR": ("VAR", tc.steps)}
    return {name: Run(study, configs[model], dataclasses.replace(tc, steps=n)) for name, (model, n) in steps.items()}


def _fid_is_runs(study: Study) -> list[Run]:
    runs = _default_runs(study, fid_models(study)) + [main_run(study)]  # Table 1's rows, the sweeps' model
    if comparisons_by_default(study):
        runs += [run for s in study.seeds() for run in controlled_runs(s).values()]
    return runs


NOTEBOOK_RUNS: dict[str, Callable[[Study], list[Run]]] = {  # the transformers of each notebook, at its defaults
    "01_tokenizer": lambda study: perceptual_runs(study) if comparisons_by_default(study) else [],
    "02_train_var": lambda study: [main_run(study)],
    "03_ablation": lambda study: _default_runs(study, ablation_models(study)),
    "04_scaling": lambda study: scaling_runs(study) + [run for by_factor in lr_check_runs(study).values()
                                                       for run in by_factor.values()],
    "05_zero_shot": lambda study: [run for pair in zero_shot_runs(study) for run in pair],
    "06_fid_is": _fid_is_runs,
    "07_speed": lambda study: [],  # random weights
}
NOTEBOOKS = tuple(NOTEBOOK_RUNS)
READS_CLASSIFIER = {"01_tokenizer", "03_ablation", "05_zero_shot", "06_fid_is"}


# ------------------------------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class Job:
    """One stage to build: its artifact's cache key, the keys of the jobs it reads, and the call that builds (or
    loads) it through `Study`."""

    name: str  # unique within a plan, for logs: what it is and the start of its key's hash
    kind: str  # "classifier" | "tokenizer" | "tokens" | "transformer"
    key: str
    deps: tuple[str, ...]
    build: Callable[[], Any] = dataclasses.field(compare=False, repr=False)
    run: Run | None = dataclasses.field(default=None, compare=False, repr=False)  # a transformer job's

    @property
    def flops(self) -> float:
        """A transformer job's training FLOPs (`Run.flops`, counted when asked: planning stays cheap for the job
        processes, which plan to find their job); 0 for the other stages."""
        return self.run.flops() if self.run is not None else 0.0


def _named(what: str, key: str) -> str:
    return f"{what}-{key.rsplit('-', 1)[1][:8]}"


def classifier_job(study: Study) -> Job:
    key = study.classifier_key()
    return Job(_named("classifier", key), "classifier", key, (), study.classifier)


def tokenizer_jobs(study: Study, tok_cfg: TokenizerConfig) -> list[Job]:
    """The tokenizer `tok_cfg`, after the classifier when its perceptual term reads the classifier's features."""
    term = study.tokenizer_train_config.perceptual_term
    upstream = [classifier_job(study)] if term == "classifier" else []
    key = study.tokenizer_key(tok_cfg)
    what = f"tokenizer-{term}" if len(tok_cfg.scales) > 1 else f"tokenizer-raster-{term}"
    return upstream + [Job(_named(what, key), "tokenizer", key, tuple(j.key for j in upstream),
                           functools.partial(study.tokenizer_record, tok_cfg))]


def tokens_job(study: Study, tok_cfg: TokenizerConfig, split: str, augmentation: int = 0) -> Job:
    key = study.tokens_key(split, tok_cfg, augmentation)
    return Job(_named(f"tokens-{split}{augmentation or ''}", key), "tokens", key, (study.tokenizer_key(tok_cfg),),
               functools.partial(study.tokens, split, tok_cfg, augmentation))


def transformer_jobs(run: Run) -> list[Job]:
    """The transformer of `run` after its tokenizer and every token set its training and evaluation read."""
    s, cfg = run.study, run.var
    tok_cfg = s.tokenizer_for(cfg)
    tok = tokenizer_jobs(s, tok_cfg)
    sets = [tokens_job(s, tok_cfg, "train", a) for a in range(run.train.token_sets)] + [tokens_job(s, tok_cfg, "test")]
    family = "AR-ms" if isinstance(cfg, MultiScaleARConfig) else "AR" if len(cfg.scales) == 1 else "VAR"
    key = run.key()
    return tok + sets + [Job(_named(f"{family}-d{cfg.depth}-seed{run.seed}", key), "transformer", key,
                             (tok[-1].key, *(j.key for j in sets)), run.transformer, run)]


def _unique(jobs: list[Job]) -> list[Job]:
    first: dict[str, Job] = {}
    for job in jobs:
        first.setdefault(job.key, job)
    return list(first.values())


def notebook_jobs(study: Study, notebook: str) -> list[Job]:
    """Every stage `notebook` (a name of `NOTEBOOKS`) reads at its default parameters, each once and after the jobs
    it depends on."""
    if notebook not in NOTEBOOK_RUNS:
        raise ValueError(f"unknown notebook {notebook!r}: choose among {list(NOTEBOOKS)}")
    jobs = [classifier_job(study)] if notebook in READS_CLASSIFIER else []
    for s in tokenizer_studies(study, notebook):
        jobs += tokenizer_jobs(s, s.profile.tokenizer)
    for run in NOTEBOOK_RUNS[notebook](study):
        jobs += transformer_jobs(run)
    return _unique(jobs)


def plan(study: Study, notebooks: list[str] | tuple[str, ...] = NOTEBOOKS) -> list[Job]:
    """Every stage the `notebooks` read, deduplicated by cache key (a model several notebooks share is one job),
    every job after the jobs it depends on."""
    return _unique([job for nb in notebooks for job in notebook_jobs(study, nb)])
