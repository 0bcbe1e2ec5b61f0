"""Sampling from VAR and from the raster AR baseline; zero-shot editing.

`sample_var` is paper Sec. 3.2 at inference: one transformer pass per scale, every token of the scale drawn in
parallel, earlier scales read from a preallocated KV cache. `sample_var_reference` computes the same logits with a
full block-causal forward over the growing prefix (no cache); the tests hold the two to identical tokens.

Token choice per step: classifier-free guidance on logits, l = (1 + t) l_cond - t l_null, with t ramped linearly
over the scales, t = cfg * k / (K - 1), as the authors (after MUSE; issues #14, #76), or constant; then temperature,
top-k, top-p (nucleus over the k kept: the vocabulary is never sorted whole when top-k is on) and a categorical draw.
All randomness comes from the caller's torch.Generator, which must live on the model's device. Inside the loops
nothing waits on the device (no .item(), no data-dependent shapes), so GPU kernels queue back to back.

Images come back in [-1, 1] (varlib's convention; the authors' sampler returns [0, 1]).
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import SampleConfig
from .data import to_uint8
from .transformer import VAR, ARTransformer, KVCache, cached_block, compute_dtype

log = logging.getLogger(__name__)

CFG_SCHEDULES = ("linear", "constant")


# ----------------------------------------------------------------------------------------------- validation

def check_sampling_args(model, labels_B: torch.Tensor, sample_cfg: SampleConfig) -> None:
    """Raise ValueError naming the bad argument; called before any model work."""
    if labels_B.ndim != 1 or labels_B.numel() == 0:
        raise ValueError(f"labels_B must be a non-empty 1-D tensor of class ids (the batch), got shape "
                         f"{tuple(labels_B.shape)}")
    if labels_B.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels_B must hold integer class ids, got dtype {labels_B.dtype}")
    lo, hi = int(labels_B.min()), int(labels_B.max())
    if lo < 0 or hi > model.num_classes:
        raise ValueError(f"labels_B holds class ids in [{lo}, {hi}]; this model knows 0..{model.num_classes - 1} "
                         f"(and {model.num_classes} = the null class, unconditional)")
    if sample_cfg.cfg < 0:
        raise ValueError(f"sample_cfg.cfg = {sample_cfg.cfg}: the guidance scale must be >= 0 (0 = no guidance)")
    if sample_cfg.cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"sample_cfg.cfg_schedule = {sample_cfg.cfg_schedule!r}: choose one of {CFG_SCHEDULES}")
    if sample_cfg.top_k < 0:
        raise ValueError(f"sample_cfg.top_k = {sample_cfg.top_k}: must be >= 0 (0 = off)")
    if not 0 < sample_cfg.top_p <= 1:
        raise ValueError(f"sample_cfg.top_p = {sample_cfg.top_p}: must be in (0, 1] (1 = off)")
    if not sample_cfg.temperature > 0:
        raise ValueError(f"sample_cfg.temperature = {sample_cfg.temperature}: must be > 0")


def _labels_on(model, labels) -> torch.Tensor:
    return torch.as_tensor(labels, device=model.lvl_1L.device)


@contextlib.contextmanager
def _eval_mode(*modules):
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

def _both_branches(labels_B: torch.Tensor, null_class: int, guided: bool) -> torch.Tensor:
    """Rows of the transformer batch: the labels, then (with guidance) as many null-class rows."""
    return torch.cat((labels_B, torch.full_like(labels_B, null_class))) if guided else labels_B


class CachedSteps:
    """Step-by-step passes over new tokens with a preallocated KV cache per layer (paper Sec. 3.2, Fig. 4).

    compile=True runs each block through one torch.compile'd `cached_block` with dynamic shapes, shared by all
    blocks (four graphs: the cache's first, middle, filling and overflowing steps differ; compiled once per
    process, in seconds rather than the minutes a whole unrolled step takes). The class condition is read from
    `labels_R` at the first step and, on a later run of the same steps, written into the same tensor, so that CUDA
    graphs of the steps (`GraphedSteps`) see new labels."""

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


class GraphedSteps:
    """`CachedSteps` (compiled blocks) replayed from CUDA graphs: one graph per scale for a fixed number of rows.

    A step launches about 20 kernels per block; replaying its graph launches them with one host call, so the GPU no
    longer waits on Python between kernels (at d16, B=64 the eager loop left the GPU idle for a fifth of the call).
    Warm-up runs compile the blocks and allocate the KV caches and the condition outside any graph; the graphs
    are then captured from one memory pool, the largest step first, so that every smaller step reuses its memory
    (in scale order each larger step would add its own: 18 GB more at d30, B=256). Each call writes its labels and
    each step's input into the graphs' own tensors and replays. The graphs read the model's parameters where they
    lie: in-place updates (an optimiser step, load_state_dict) are seen, a model moved to another device or dtype
    needs a new instance. They run under the autocast state of the capture (its dtype is part of `VARSampler`'s
    key), with autocast's weight cache off so that no cast is taken from outside the graph."""

    def __init__(self, model, rows: int):
        device = model.lvl_1L.device
        self.labels_R = torch.full((rows,), model.num_classes, device=device)
        self.inputs = {begin: torch.zeros(rows, end - begin, model.cfg.z_channels, device=device)
                       for begin, end in model.begin_ends[1:]}
        widest = max(end - begin for begin, end in model.begin_ends)
        # every step writes its logits into one buffer sized for the largest step (one per step: 5.7 GB at d30,
        # B=256 with guidance, instead of 2.1 GB)
        logits_RlV = torch.empty(rows, widest, model.cfg.vocab_size, device=device)
        dtype = compute_dtype(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False):
            self.steps = CachedSteps(model, self.labels_R, model.scales[-1] ** 2, compile=True)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            # the warm-up, twice: the second run takes the path of the captures (caches allocated, then seek), so
            # that nothing compiles or autotunes (which synchronises) while a graph is being captured
            with torch.cuda.stream(side):
                for _ in range(2):
                    for begin, _ in model.begin_ends:
                        self.steps(begin, self.inputs.get(begin))
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.empty_cache()  # the warm-up's intermediates go back to the device, for the graphs' pool
            pool = torch.cuda.graph_pool_handle()
            self.graphs, self.logits = {}, {}
            for begin, end in reversed(model.begin_ends):
                self.graphs[begin] = torch.cuda.CUDAGraph()
                self.logits[begin] = logits_RlV[:, :end - begin]
                with torch.cuda.graph(self.graphs[begin], pool=pool):
                    self.logits[begin].copy_(self.steps(begin, self.inputs.get(begin)))

    def set_labels(self, labels_R: torch.Tensor) -> None:
        self.labels_R.copy_(labels_R)

    def __call__(self, begin: int, x_RlCv: torch.Tensor | None) -> torch.Tensor:
        """The step's logits (R, l, V): a view of the graphs' buffer, overwritten by the next replay."""
        if x_RlCv is not None:
            self.inputs[begin].copy_(x_RlCv)
        self.graphs[begin].replay()
        return self.logits[begin]


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

def _var_loop(model: VAR, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig, generator: torch.Generator,
              steps, forced: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """Alg. 2 with sampled tokens: per scale k, logits -> r_k -> f_hat += phi_k(up(Z(r_k))) -> next input.

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


DECODE_CHUNK = 32  # images per decoder call: at 256 px a decoder activation is 0.7 GB per 32 images (bf16)


def decoder_trunk(vae, f_hat: torch.Tensor) -> torch.Tensor:
    """The decoder up to its last convolution: post_quant_conv, then `Decoder.trunk`."""
    return vae.decoder.trunk(vae.post_quant_conv(f_hat))


def decode_images(vae, f_hat: torch.Tensor, compile: bool = False) -> torch.Tensor:
    """f_hat -> float32 images in [-1, 1], `DECODE_CHUNK` at a time (the same images as one call, in a bounded
    footprint); the decoder may run in bf16 under autocast.

    compile=True compiles `decoder_trunk` and runs the last convolution eagerly: inductor hands convolutions
    channels-last inputs, and for 3 output channels cuDNN has only a generic kernel there (12 ms against 2 ms per
    32 images at 256 px on an H100; the whole decode of 64 images 0.107 s against 0.124 s)."""
    trunk = torch.compile(decoder_trunk) if compile else decoder_trunk
    return torch.cat([vae.decoder.conv_out(trunk(vae, chunk)).clamp(-1, 1).float()
                      for chunk in f_hat.split(DECODE_CHUNK)])


@torch.no_grad()
def sample_var(model: VAR, vae, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
               decode: bool = True, compile: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Class-conditional samples: (idx_Bl, a list of K (B, h_k * w_k) token maps; images (B, C, H, W) in [-1, 1],
    or None with decode=False). Label num_classes = unconditional. Wrap in torch.autocast for bf16/fp16.

    compile=True: torch.compile the transformer blocks (see CachedSteps) and the VQVAE decoder (GPU; the first call pays
    for compilation)."""
    labels_B = _labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with _eval_mode(model, vae):
        steps = CachedSteps(model, _both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0),
                            model.scales[-1] ** 2, compile)
        idx_Bl, f_hat = _var_loop(model, vae, labels_B, sample_cfg, generator, steps)
        del steps  # the KV caches (50 GB at d30, B=256 with guidance) are not needed by the decoder
        return idx_Bl, decode_images(vae, f_hat, compile) if decode else None


@torch.no_grad()
def sample_var_reference(model: VAR, vae, labels_B, sample_cfg: SampleConfig,
                         generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`sample_var` without the KV cache: a full block-causal forward over the prefix at every scale (slow, plain)."""
    labels_B = _labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with _eval_mode(model, vae):
        steps = FullForwardSteps(model, _both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0))
        idx_Bl, f_hat = _var_loop(model, vae, labels_B, sample_cfg, generator, steps)
        return idx_Bl, decode_images(vae, f_hat)


class VARSampler:
    """`sample_var` for repeated calls on a GPU: the transformer steps replayed from CUDA graphs (`GraphedSteps`,
    captured on the first call for each number of rows and autocast dtype), the decoder compiled. It draws the tokens
    `sample_var` draws under the same generator (token choice runs outside the graphs, as there).

        sampler = VARSampler(model, vae)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            idx_Bl, images = sampler(labels_B, README_SAMPLING, generator)

    The graphs keep their KV caches (and the pool they were captured in) between calls: at d30 with B=256 and
    guidance that is 50 GB; `release()` gives it back."""

    def __init__(self, model: VAR, vae):
        if model.lvl_1L.device.type != "cuda":
            raise ValueError(f"VARSampler replays CUDA graphs: the model is on {model.lvl_1L.device}; use sample_var "
                             f"on the CPU")
        self.model, self.vae = model, vae
        self.graphs: dict[tuple[int, torch.dtype], GraphedSteps] = {}

    @torch.no_grad()
    def __call__(self, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
                 decode: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        model, vae = self.model, self.vae
        labels_B = _labels_on(model, labels_B)
        check_sampling_args(model, labels_B, sample_cfg)
        labels_R = _both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0)
        with _eval_mode(model, vae):
            key = (len(labels_R), compute_dtype(labels_R.device))
            if key not in self.graphs:
                self.graphs[key] = GraphedSteps(model, len(labels_R))
            steps = self.graphs[key]
            steps.set_labels(labels_R)
            idx_Bl, f_hat = _var_loop(model, vae, labels_B, sample_cfg, generator, steps)
            return idx_Bl, decode_images(vae, f_hat, compile=True) if decode else None

    def release(self) -> None:
        """Drop the captured graphs and their memory (the next call captures again)."""
        self.graphs.clear()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- raster AR

def _ar_loop(model: ARTransformer, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig,
             generator: torch.Generator, forced: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Next-token sampling in raster order with a KV cache; `forced` = (tokens (B, L), prefix_B): token t of row b
    is the given one when t < prefix_B[b]."""
    B, L = labels_B.shape[0], model.L
    guided = sample_cfg.cfg > 0
    codebook_VC = vae.quantize.embedding.weight
    steps = CachedSteps(model, _both_branches(labels_B, model.num_classes, guided), 1)
    idx_B1, tokens, x_R1Cv = None, [], None
    for t in range(L):
        logits_B1V = guide(steps(t, x_R1Cv), B, guidance_scale(sample_cfg, t, L))
        idx_B1, h_B1C = choose_tokens(logits_B1V, sample_cfg, generator, codebook_VC, t / max(L - 1, 1))
        if forced is not None:
            known_BL, prefix_B = forced
            keep_B1 = (t < prefix_B).unsqueeze(1)
            idx_B1 = torch.where(keep_B1, known_BL[:, t:t + 1], idx_B1)
            h_B1C = torch.where(keep_B1.unsqueeze(-1), F.embedding(known_BL[:, t:t + 1], codebook_VC), h_B1C)
        tokens.append(idx_B1)
        x_R1Cv = torch.cat((h_B1C, h_B1C)) if guided else h_B1C
    idx_BL = torch.cat(tokens, dim=1)
    pn = model.scales[0]
    h_BChw = F.embedding(idx_BL, codebook_VC).transpose(1, 2).reshape(B, vae.Cvae, pn, pn)
    f_hat, _ = vae.quantize.get_next_autoregressive_input(0, 1, torch.zeros_like(h_BChw), h_BChw)
    return [idx_BL], f_hat


@torch.no_grad()
def sample_ar(model: ARTransformer, vae, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
              decode: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Raster-order samples from the AR baseline (one token per cached step); the linear guidance ramp runs over
    the token index. Returns ([idx_BL], images in [-1, 1] or None). `vae` must be a single-scale tokenizer."""
    labels_B = _labels_on(model, labels_B)
    check_sampling_args(model, labels_B, sample_cfg)
    with _eval_mode(model, vae):
        idx_Bl, f_hat = _ar_loop(model, vae, labels_B, sample_cfg, generator)
        return idx_Bl, decode_images(vae, f_hat) if decode else None


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

    Returns (tokens (N, L) int64, images (N, C, H, W) uint8), both on the CPU, for evaluation (FID wants uint8)."""
    labels_N = _labels_on(model, labels)
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


def best_time(fn, device: torch.device | str, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `fn` after one warm-up call (which also pays for compilation);
    the device is synchronised around each call, so GPU work is counted in full."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_per_image(model: VAR | ARTransformer, vae, labels_B, sample_cfg: SampleConfig, repeats: int = 3,
                   decode: bool = True) -> float:
    """Wall time per image of one sampling call for the batch `labels_B` (labels to decoded images), best of
    `repeats`, under bf16 autocast on CUDA: the measured cost column of the ablation and speed notebooks."""
    labels_B = _labels_on(model, labels_B)
    device = labels_B.device
    sample = sample_ar if isinstance(model, ARTransformer) else sample_var
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def run():
        with amp:
            sample(model, vae, labels_B, sample_cfg, batch_generator(0, 0, device), decode=decode)

    return best_time(run, device, repeats) / len(labels_B)


# ----------------------------------------------------------------------------------------------- zero-shot editing

def box_mask(height: int, width: int, box: tuple[int, int, int, int], mode: str, batch_size: int = 1) -> torch.Tensor:
    """keep_mask_BHW (1 = known pixel) for a box (top, left, bottom, right), bottom/right exclusive:
    mode "inpaint" regenerates the box (known outside it), "outpaint" regenerates the border (known inside)."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"box {box} (top, left, bottom, right) must lie inside the {height}x{width} image")
    if mode not in ("inpaint", "outpaint"):
        raise ValueError(f"mode {mode!r}: choose 'inpaint' (unknown box) or 'outpaint' (unknown border)")
    inside_HW = torch.zeros(height, width)
    inside_HW[top:bottom, left:right] = 1.0
    keep_HW = 1.0 - inside_HW if mode == "inpaint" else inside_HW
    return keep_HW.expand(batch_size, height, width).clone()


def _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg) -> torch.Tensor:
    """Validated labels (None -> the null class); raises ValueError naming the bad argument."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (B, C, H, W), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    if tuple(keep_mask_BHW.shape) != (B, H, W):
        raise ValueError(f"keep_mask_BHW has shape {tuple(keep_mask_BHW.shape)}; it must be (B, H, W) = "
                         f"{(B, H, W)} like the images (1 = known pixel), e.g. from box_mask(...)")
    if labels is None:
        labels = torch.full((B,), model.num_classes)
    labels_B = _labels_on(model, labels)
    if labels_B.shape != (B,):
        raise ValueError(f"labels has shape {tuple(labels_B.shape)}; give one class per image ({B}) or None")
    check_sampling_args(model, labels_B, sample_cfg)
    return labels_B


def _known_at(keep_mask_BHW: torch.Tensor, pn: int) -> torch.Tensor:
    """Which tokens of a pn x pn map are known: the mask's area fraction over each token's cell > 0.5."""
    mask_B1HW = keep_mask_BHW.float().unsqueeze(1)
    return F.interpolate(mask_B1HW, size=(pn, pn), mode="area").flatten(1) > 0.5


@torch.no_grad()
def edit(model: VAR, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig,
         generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Zero-shot in-/out-painting and class-conditional editing (paper Sec. 4.4, Fig. 8).

    At every scale the tokens of the known region are the image's own tokens (substituted in embedding space
    before the next scale's input is built) and only the others are sampled; scales with <= 3 tokens are taken
    whole from the image, as the authors' demo. labels None = unconditional (the null class)."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg)
    with _eval_mode(model, vae):
        known_idx_Bl = vae.img_to_idxBl(images)
        forced = []
        for pn, known_Bl in zip(model.scales, known_idx_Bl, strict=True):
            keep_Bl = _known_at(keep_mask_BHW.to(known_Bl.device), pn)
            forced.append((known_Bl, keep_Bl | (pn * pn <= 3)))
        steps = CachedSteps(model, _both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0),
                            model.scales[-1] ** 2)
        idx_Bl, f_hat = _var_loop(model, vae, labels_B, sample_cfg, generator, steps, forced)
        return idx_Bl, decode_images(vae, f_hat)


@torch.no_grad()
def edit_ar(model: ARTransformer, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig,
            generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The AR baseline's best effort at the same task: it can only condition on the raster prefix, so tokens before
    the first unknown one are kept and everything after it is sampled (known tokens further on are lost)."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg)
    with _eval_mode(model, vae):
        (known_BL,) = vae.img_to_idxBl(images)
        keep_BL = _known_at(keep_mask_BHW.to(known_BL.device), model.scales[0])
        prefix_B = torch.where(keep_BL.all(dim=1), model.L, (~keep_BL).int().argmax(dim=1))
        idx_Bl, f_hat = _ar_loop(model, vae, labels_B, sample_cfg, generator, (known_BL, prefix_B))
        return idx_Bl, decode_images(vae, f_hat)
