"""Sampling from VAR and from the next-token ARs: token choice, the step engines, the plain loops, the sampling grid.

`sample_var` is paper Sec. 3.2 at inference: one transformer pass per scale, every token of the scale drawn in
parallel, earlier scales read from a preallocated KV cache. `sample_var_reference` computes the same logits with a
full block-causal forward over the growing prefix (no cache); the tests hold the two to identical tokens. `sample_ar`
and `sample_ar_reference` are the same pair for the next-token ARs (the raster baseline and the AR over VAR's
tokens), one token per step. `best_setting` picks a model's sampling setting from the claims protocol's grid on one
sample set and reports it on another. The CUDA-graph engine (`VARSampler`) is next door in `varlib.fast_sampling`,
zero-shot editing in `varlib.editing`, timing in `varlib.timing`.

Token choice per step: classifier-free guidance on logits, l = (1 + t) l_cond - t l_null, with t ramped linearly
over the scales, t = cfg * k / (K - 1), as the authors (after MUSE; issues #14, #76), or constant; then temperature,
top-k, top-p (nucleus over the k kept: the vocabulary is never sorted whole when top-k is on) and a categorical draw.
All randomness comes from the caller's torch.Generator, which must live on the model's device. Inside the loops
nothing waits on the device (no .item(), no data-dependent shapes), so GPU kernels queue back to back.

Images come back in [-1, 1] (varlib's convention; the authors' sampler returns [0, 1]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import SampleConfig
from .data import to_uint8
from .tokenizer import split_scales
from .transformer import VAR, ARTransformer, KVCache, cached_block

log = logging.getLogger(__name__)

CFG_SCHEDULES = ("linear", "constant")


# ----------------------------------------------------------------------------------------------- validation

def check_sampling_args(model, labels_B: torch.Tensor, sample_cfg: SampleConfig) -> None:
    """Raise ValueError naming the bad argument; called before any model work. (SampleConfig checks the ranges of
    cfg, top_k, top_p and temperature itself, when it is made.)"""
    if labels_B.ndim != 1 or labels_B.numel() == 0:
        raise ValueError(f"labels_B must be a non-empty 1-D tensor of class ids (the batch), got shape "
                         f"{tuple(labels_B.shape)}")
    if labels_B.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels_B must hold integer class ids, got dtype {labels_B.dtype}")
    lo, hi = int(labels_B.min()), int(labels_B.max())
    if lo < 0 or hi > model.num_classes:
        raise ValueError(f"labels_B holds class ids in [{lo}, {hi}]; this model knows 0..{model.num_classes - 1} "
                         f"(and {model.num_classes} = the null class, unconditional)")
    if sample_cfg.cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"sample_cfg.cfg_schedule = {sample_cfg.cfg_schedule!r}: choose one of {CFG_SCHEDULES}")


def labels_on(model, labels) -> torch.Tensor:
    """`labels` as a tensor on the model's device."""
    return torch.as_tensor(labels, device=model.lvl_1L.device)


@contextlib.contextmanager
def eval_mode(*modules):
    """Eval mode (no class dropout, no stochastic depth) for the duration, then each module's mode as before."""
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)


# ----------------------------------------------------------------------------------------------- token choice

def guidance_scale(sample_cfg: SampleConfig, step: int, num_steps: int) -> float:
    """t at this step: cfg * step / (num_steps - 1) for the linear ramp (0 at the first step), else cfg."""
    if sample_cfg.cfg_schedule == "constant" or num_steps == 1:
        return sample_cfg.cfg
    return sample_cfg.cfg * step / (num_steps - 1)


def guide(logits_RlV: torch.Tensor, batch: int, t: float) -> torch.Tensor:
    """Classifier-free guidance on logits: rows [:B] conditional, [B:] null class (or no second half: unguided)."""
    if logits_RlV.shape[0] == batch:
        return logits_RlV
    return (1 + t) * logits_RlV[:batch] - t * logits_RlV[batch:]


def top_k_top_p(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The candidate logits (B, l, k) and their vocabulary ids (None: all V, in order) after top-k then top-p.

    top-k keeps the k largest (torch.topk, no full sort); top-p then keeps the smallest prefix of those, by
    descending probability renormalised over the k, whose mass reaches top_p (the most likely always stays). This
    is the authors' rule (they mask in place over V and sort all V for top-p)."""
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        logits_Blk, idx_Blk = logits_BlV.topk(top_k, dim=-1)
    elif top_p < 1:
        logits_Blk, idx_Blk = logits_BlV.sort(dim=-1, descending=True)
    else:
        return logits_BlV, None
    if top_p < 1:
        probs_Blk = logits_Blk.softmax(dim=-1)
        mass_before_Blk = probs_Blk.cumsum(dim=-1) - probs_Blk
        logits_Blk = logits_Blk.masked_fill(mass_before_Blk >= top_p, -torch.inf)
    return logits_Blk, idx_Blk


def categorical(logits_BlN: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row: argmax p / E with E ~ Exp(1) (the exponential race; torch.multinomial's one-sample fast
    path, without its validity checks that wait on the device)."""
    probs_BlN = logits_BlN.float().softmax(dim=-1)
    race_BlN = torch.empty_like(probs_BlN).exponential_(generator=generator)
    # a draw of exactly 0 would make p / E = 0 / 0 = nan for an excluded token, which argmax would pick
    return (probs_BlN / race_BlN.clamp_min_(torch.finfo(race_BlN.dtype).tiny)).argmax(dim=-1)


def choose_tokens(logits_BlV: torch.Tensor, sample_cfg: SampleConfig, generator: torch.Generator,
                  codebook_VC: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens idx_Bl and their code vectors h_BlC. `ratio` = progress k/(K-1), used by the smooth option only."""
    logits_BlV = logits_BlV.float() / sample_cfg.temperature
    logits_Blk, ids_Blk = top_k_top_p(logits_BlV, sample_cfg.top_k, sample_cfg.top_p)
    pick_Bl = categorical(logits_Blk, generator)
    idx_Bl = pick_Bl if ids_Blk is None else ids_Blk.gather(-1, pick_Bl.unsqueeze(-1)).squeeze(-1)
    if not sample_cfg.smooth:
        return idx_Bl, F.embedding(idx_Bl, codebook_VC)
    # Visualisation only (the authors' more_smooth, after MaskGIT): a Gumbel-softmax mix of the candidate codes,
    # sharper at finer scales; the token draw above still happens (and consumes the generator) as theirs.
    tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
    kept_BlV = logits_BlV if ids_Blk is None else torch.full_like(logits_BlV, -torch.inf).scatter(-1, ids_Blk,
                                                                                                  logits_Blk)
    gumbel_BlV = -torch.empty_like(kept_BlV).exponential_(generator=generator).log()
    soft_BlV = ((kept_BlV * (1 + ratio) + gumbel_BlV) / tau).softmax(dim=-1)
    return idx_Bl, soft_BlV @ codebook_VC


# ----------------------------------------------------------------------------------------------- transformer passes

def both_branches(labels_B: torch.Tensor, null_class: int, guided: bool) -> torch.Tensor:
    """Rows of the transformer batch: the labels, then (with guidance) as many null-class rows."""
    return torch.cat((labels_B, torch.full_like(labels_B, null_class))) if guided else labels_B


class CachedSteps:
    """Step-by-step passes over new tokens with a preallocated KV cache per layer (paper Sec. 3.2, Fig. 4).

    compile=True runs each block through one torch.compile'd `cached_block` with dynamic shapes, shared by all
    blocks (four graphs: the cache's first, middle, filling and overflowing steps differ; compiled once per
    process, in seconds rather than the minutes a whole unrolled step takes). The class condition is read from
    `labels_R` at the first step and, on a later run of the same steps, written into the same tensor, so that CUDA
    graphs of the steps (`varlib.fast_sampling.GraphedSteps`) see new labels."""

    def __init__(self, model, labels_R: torch.Tensor, last_step_tokens: int, compile: bool = False):
        self.model, self.labels_R = model, labels_R
        self.cond_RD: torch.Tensor | None = None
        self.caches: list[KVCache] = model.new_caches(last_step_tokens)
        self.run_block = torch.compile(cached_block, dynamic=True) if compile else cached_block

    def __call__(self, begin: int, x_RlCv: torch.Tensor | None) -> torch.Tensor:
        """Logits (R, l, V) of the tokens at [begin, begin + l) from their inputs (None: the start tokens)."""
        for cache in self.caches:
            cache.seek(begin)
        if x_RlCv is None:
            cond_RD = self.model.class_emb(self.labels_R)
            self.cond_RD = cond_RD if self.cond_RD is None else self.cond_RD.copy_(cond_RD)
            x_RlC = self.model.start_tokens(self.cond_RD)
        else:
            x_RlC = self.model.embed_inputs(x_RlCv, begin)
        return self.model.step(x_RlC, self.cond_RD, self.caches, self.run_block)


class FullForwardSteps:
    """The same logits from the model's masked teacher-forcing forward over the whole prefix at every step."""

    def __init__(self, model, labels_R: torch.Tensor):
        self.model, self.labels_R, self.inputs = model, labels_R, []

    def __call__(self, begin: int, x_RlCv: torch.Tensor | None) -> torch.Tensor:
        if x_RlCv is not None:
            self.inputs.append(x_RlCv)
        R, Cvae = self.labels_R.shape[0], self.model.cfg.z_channels
        prefix_RLCv = torch.cat(self.inputs, dim=1) if self.inputs else self.model.pos_1LC.new_zeros(R, 0, Cvae)
        return self.model(self.labels_R, prefix_RLCv)[:, begin:]


# ----------------------------------------------------------------------------------------------- VAR

def var_loop(model: VAR, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig, generator: torch.Generator,
             steps, forced: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """Alg. 2 with sampled tokens: per scale k, logits -> r_k -> f_hat += phi_k(up(Z(r_k))) -> next input. `steps`
    gives the logits of a scale from its input (`CachedSteps`, `FullForwardSteps`, or the CUDA graphs of
    `varlib.fast_sampling.GraphedSteps`); returns (idx_Bl, f_hat).

    `forced[k]` = (tokens, keep_Bl): where keep is True the given token replaces the sampled one, in embedding
    space before the next input is built (zero-shot editing, paper Sec. 4.4 / Fig. 8)."""
    scales, B = model.scales, labels_B.shape[0]
    K, guided = len(scales), sample_cfg.cfg > 0
    codebook_VC = vae.quantize.embedding.weight
    f_hat = codebook_VC.new_zeros(B, vae.Cvae, scales[-1], scales[-1])
    idx_Bl, x_RlCv = [], None
    for si, pn in enumerate(scales):
        logits_BlV = guide(steps(model.begin_ends[si][0], x_RlCv), B, guidance_scale(sample_cfg, si, K))
        r_Bl, h_BlC = choose_tokens(logits_BlV, sample_cfg, generator, codebook_VC, si / (K - 1))  # r_k
        if forced is not None:
            known_Bl, keep_Bl = forced[si]
            r_Bl = torch.where(keep_Bl, known_Bl, r_Bl)
            h_BlC = torch.where(keep_Bl.unsqueeze(-1), F.embedding(known_Bl, codebook_VC), h_BlC)
        idx_Bl.append(r_Bl)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, vae.Cvae, pn, pn)
        f_hat, next_BChw = vae.quantize.get_next_autoregressive_input(si, K, f_hat, h_BChw)
        if si < K - 1:
            x_BlCv = next_BChw.flatten(2).transpose(1, 2)
            x_RlCv = torch.cat((x_BlCv, x_BlCv)) if guided else x_BlCv
    return idx_Bl, f_hat


@torch.no_grad()
def sample_var(model: VAR, vae, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
               decode: bool = True, compile: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Class-conditional samples: (idx_Bl, a list of K (B, h_k * w_k) token maps; images (B, C, H, W) in [-1, 1],
    or None with decode=False). Label num_classes = unconditional. Wrap in torch.autocast for bf16/fp16.

    compile=True: torch.compile the transformer blocks (see CachedSteps) and the VQVAE decoder (see
    `VQVAE.fhat_to_img`; the first call pays for compilation)."""
    labels_B = labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with eval_mode(model, vae):
        steps = CachedSteps(model, both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0),
                            model.scales[-1] ** 2, compile)
        idx_Bl, f_hat = var_loop(model, vae, labels_B, sample_cfg, generator, steps)
        del steps  # the KV caches (50 GB at d30, B=256 with guidance) are not needed by the decoder
        return idx_Bl, vae.fhat_to_img(f_hat, compile) if decode else None


@torch.no_grad()
def sample_var_reference(model: VAR, vae, labels_B, sample_cfg: SampleConfig,
                         generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`sample_var` without the KV cache: a full block-causal forward over the prefix at every scale (slow, plain)."""
    labels_B = labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with eval_mode(model, vae):
        steps = FullForwardSteps(model, both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0))
        idx_Bl, f_hat = var_loop(model, vae, labels_B, sample_cfg, generator, steps)
        return idx_Bl, vae.fhat_to_img(f_hat)


# ----------------------------------------------------------------------------------------------- next-token AR

def guidance_ramp(scales: tuple[int, ...]) -> tuple[list[int], int]:
    """(ramp step of every token, number of ramp steps) of next-token sampling: the token index over one raster
    map; the scale index over VAR's tokens, so that every token gets the guidance VAR's sampler gives it."""
    if len(scales) == 1:
        return list(range(scales[0] ** 2)), scales[0] ** 2
    return [si for si, pn in enumerate(scales) for _ in range(pn * pn)], len(scales)


def ar_loop(model: ARTransformer, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig,
            generator: torch.Generator, forced: tuple[torch.Tensor, torch.Tensor] | None = None, steps=None):
    """Next-token sampling, one token per step over all L tokens (`steps`: a KV-cached `CachedSteps` unless given,
    e.g. `FullForwardSteps`), then Alg. 2's f_hat = sum_k phi_k(up(Z(r_k))) of the token maps (one map for the
    raster AR); returns (idx_Bl, f_hat). `forced` = (tokens (B, L), prefix_B): token t of row b is the given one
    when t < prefix_B[b]."""
    B, L = labels_B.shape[0], model.L
    guided = sample_cfg.cfg > 0
    codebook_VC = vae.quantize.embedding.weight
    if steps is None:
        steps = CachedSteps(model, both_branches(labels_B, model.num_classes, guided), 1)
    ramp_L, ramp_steps = guidance_ramp(model.scales)
    tokens, x_R1Cv = [], None
    for t in range(L):
        logits_B1V = guide(steps(t, x_R1Cv), B, guidance_scale(sample_cfg, ramp_L[t], ramp_steps))
        idx_B1, h_B1C = choose_tokens(logits_B1V, sample_cfg, generator, codebook_VC,
                                      ramp_L[t] / max(ramp_steps - 1, 1))
        if forced is not None:
            known_BL, prefix_B = forced
            keep_B1 = (t < prefix_B).unsqueeze(1)
            idx_B1 = torch.where(keep_B1, known_BL[:, t:t + 1], idx_B1)
            h_B1C = torch.where(keep_B1.unsqueeze(-1), F.embedding(known_BL[:, t:t + 1], codebook_VC), h_B1C)
        tokens.append(idx_B1)
        x_R1Cv = torch.cat((h_B1C, h_B1C)) if guided else h_B1C
    idx_Bl = split_scales(torch.cat(tokens, dim=1), model.scales)
    return idx_Bl, vae.quantize.idxBl_to_fhat(idx_Bl)


@torch.no_grad()
def sample_ar(model: ARTransformer, vae, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
              decode: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Samples from a next-token ARTransformer, one token per cached step (L steps): the raster AR on its
    one-scale tokenizer, or the AR over VAR's tokens on VAR's tokenizer (see `guidance_ramp` for the guidance
    schedule). Returns (idx_Bl, one (B, h_k * w_k) map per scale; images in [-1, 1] or None with decode=False)."""
    labels_B = labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with eval_mode(model, vae):
        idx_Bl, f_hat = ar_loop(model, vae, labels_B, sample_cfg, generator)
        return idx_Bl, vae.fhat_to_img(f_hat) if decode else None


@torch.no_grad()
def sample_ar_reference(model: ARTransformer, vae, labels_B, sample_cfg: SampleConfig,
                        generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`sample_ar` without the KV cache: a full causal forward over the prefix at every token (slow, plain)."""
    labels_B = labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with eval_mode(model, vae):
        steps = FullForwardSteps(model, both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0))
        idx_Bl, f_hat = ar_loop(model, vae, labels_B, sample_cfg, generator, steps=steps)
        return idx_Bl, vae.fhat_to_img(f_hat)


# ----------------------------------------------------------------------------------------------- many batches

def batch_generator(seed: int, batch_index: int, device: torch.device | str) -> torch.Generator:
    """An independent stream for batch `batch_index` of a run seeded with `seed`.

    The authors' sampler re-seeds its one generator with the same g_seed on every call, so every batch of an
    evaluation drew the same noise (issue #69): batches with equal labels were identical. Seeds are spawned from
    (seed, batch_index) with numpy's SeedSequence, so neither batches nor neighbouring runs share streams."""
    state = np.random.SeedSequence([seed, batch_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


@torch.no_grad()
def sample_many(model: VAR | ARTransformer, vae, labels, sample_cfg: SampleConfig, batch_size: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples for every label in `labels`, `batch_size` at a time, each batch with its own generator stream.

    Returns (tokens (N, L) int64, images (N, C, H, W) uint8), both on the CPU, for evaluation (FID wants uint8).
    `Study.sample` calls this off the GPU, and on it `varlib.fast_sampling.sample_many` (the same batches and streams
    through CUDA graphs)."""
    labels_N = labels_on(model, labels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_sampling_args(model, labels_N, sample_cfg)
    sample = sample_ar if isinstance(model, ARTransformer) else sample_var
    device = labels_N.device
    tokens, images = [], []
    for i, labels_B in enumerate(tqdm(labels_N.split(batch_size), desc="sampling", leave=False)):
        idx_Bl, images_B = sample(model, vae, labels_B, sample_cfg, batch_generator(seed, i, device))
        tokens.append(torch.cat(idx_Bl, dim=1).cpu())
        images.append(to_uint8(images_B).cpu())
    log.info("sampled %d images in %d batches (seed %d)", len(labels_N), len(tokens), seed)
    return torch.cat(tokens), torch.cat(images)


# ----------------------------------------------------------------------------------------------- the sampling grid

GRID_CFG = (1.0, 1.5, 2.0, 3.0)  # the claims protocol: cfg in {1, 1.5, 2, 3} x top-k in {off, ~15% of V}
GRID_TOP_K_FRACTION = 0.15


def sampling_grid(base: SampleConfig, vocab_size: int) -> list[SampleConfig]:
    """The claims protocol's grid of settings, every other field from `base`: cfg in GRID_CFG x top-k in {off,
    round(GRID_TOP_K_FRACTION x vocab_size)}."""
    top_ks = (0, max(1, round(GRID_TOP_K_FRACTION * vocab_size)))
    return [dataclasses.replace(base, cfg=c, top_k=k) for c in GRID_CFG for k in top_ks]


class GridChoice(NamedTuple):
    """The setting chosen on the selection set, its scores on the report set, and every setting's selection
    score (grid order)."""

    setting: SampleConfig
    report: dict[str, float]
    selection: list[tuple[SampleConfig, float]]


def best_setting(score_fn: Callable[[SampleConfig, int, int], dict[str, float]], grid: Sequence[SampleConfig],
                 select: tuple[int, int], report: tuple[int, int], metric: str = "FID") -> GridChoice:
    """The setting of `grid` with the lowest `metric` on the selection set, scored again on the report set, so the
    reported number is not the minimum of noisy estimates (the claims protocol: choose on 5k, report on 10k).

    `score_fn(setting, stream, n)` samples n images from sample stream `stream` (e.g. `Study.sampling_seed(stream)`)
    and returns their metrics; `select` and `report` are (stream, n), and the two streams must differ."""
    (select_stream, select_n), (report_stream, report_n) = select, report
    if select_stream == report_stream:
        raise ValueError(f"best_setting: the selection and report sets share sample stream {select_stream}; the "
                         f"setting must be chosen on one sample set and reported on another")
    if not grid:
        raise ValueError("best_setting: the grid of settings is empty")
    selection = [(setting, float(score_fn(setting, select_stream, select_n)[metric])) for setting in grid]
    best = min(selection, key=lambda pair: pair[1])[0]
    return GridChoice(best, score_fn(best, report_stream, report_n), selection)
