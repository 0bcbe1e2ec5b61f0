"""The fast path beside the plain sampling loop: `sample_var`'s transformer steps replayed from CUDA graphs.

`VARSampler` runs `varlib.sampling.var_loop` (the same loop, the same token choice, the same generator use) with
`GraphedSteps` in place of `CachedSteps`, and decodes with the compiled decoder; tests/test_sampling.py holds its
tokens and images equal to `sample_var(compile=True)` on a GPU. `VARSampler.many` is its throughput mode over many
batches (the decoder of one batch on a second stream while the next batch draws its tokens), held equal to one-batch
calls; `sample_many` is `varlib.sampling.sample_many` through it (and through `ARSampler`, the same engine for the
next-token ARs), which `Study.sample` takes on a GPU.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from .config import SampleConfig
from .data import to_uint8
from .sampling import (
    CachedSteps,
    ar_loop,
    batch_generator,
    both_branches,
    check_sampling_args,
    eval_mode,
    labels_on,
    var_loop,
)
from .transformer import VAR, ARTransformer, compute_dtype

log = logging.getLogger(__name__)


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

    def __init__(self, model, rows: int, ranges: list[tuple[int, int]] | None = None):
        """`ranges`: the token range of each step, VAR's scales (`model.begin_ends`) unless given (one token per
        step for a next-token AR: `token_ranges`)."""
        device = model.lvl_1L.device
        ranges = model.begin_ends if ranges is None else ranges
        self.labels_R = torch.full((rows,), model.num_classes, device=device)
        self.inputs = {begin: torch.zeros(rows, end - begin, model.cfg.z_channels, device=device)
                       for begin, end in ranges[1:]}
        widest = max(end - begin for begin, end in ranges)
        # every step writes its logits into one buffer sized for the largest step (one per step: 5.7 GB at d30,
        # B=256 with guidance, instead of 2.1 GB)
        logits_RlV = torch.empty(rows, widest, model.cfg.vocab_size, device=device)
        dtype = compute_dtype(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False):
            self.steps = CachedSteps(model, self.labels_R, ranges[-1][1] - ranges[-1][0], compile=True)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            # the warm-up, twice: the second run takes the path of the captures (caches allocated, then seek), so
            # that nothing compiles or autotunes (which synchronises) while a graph is being captured
            with torch.cuda.stream(side):
                for _ in range(2):
                    for begin, _ in ranges:
                        self.steps(begin, self.inputs.get(begin))
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.empty_cache()  # the warm-up's intermediates go back to the device, for the graphs' pool
            pool = torch.cuda.graph_pool_handle()
            self.graphs, self.logits = {}, {}
            for begin, end in reversed(ranges):
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


class VARSampler:
    """`sample_var` for repeated calls on a GPU: the transformer steps replayed from CUDA graphs (`GraphedSteps`,
    captured on the first call for each number of rows and autocast dtype), the decoder compiled. It draws the tokens
    `sample_var` draws under the same generator (token choice runs outside the graphs, as there).

        sampler = VARSampler(model, vae)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            idx_Bl, images = sampler(labels_B, README_SAMPLING, generator)
            for idx_Bl, images in sampler.many(label_batches, README_SAMPLING, generators):
                ...

    The graphs keep their KV caches (and the pool they were captured in) between calls: at d30 with B=256 and
    guidance that is 50 GB; `release()` gives it back."""

    def __init__(self, model: VAR, vae):
        if model.lvl_1L.device.type != "cuda":
            raise ValueError(f"VARSampler replays CUDA graphs: the model is on {model.lvl_1L.device}; use sample_var "
                             f"on the CPU")
        self.model, self.vae = model, vae
        self.graphs: dict[tuple[int, torch.dtype], GraphedSteps] = {}
        # `many`'s two streams (the token stream at a higher priority measured the same on an H200: 290 vs 292
        # img/s at d16, B=64)
        self.tokens_stream = torch.cuda.Stream(model.lvl_1L.device)
        self.decoder_stream = torch.cuda.Stream(model.lvl_1L.device)

    @torch.no_grad()
    def __call__(self, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
                 decode: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        idx_Bl, f_hat = self.draw(labels_B, sample_cfg, generator)
        with eval_mode(self.vae):
            return idx_Bl, self.vae.fhat_to_img(f_hat, compile=True) if decode else None

    @torch.no_grad()
    def draw(self, labels_B, sample_cfg: SampleConfig,
             generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(idx_Bl, f_hat) of one batch, on the current stream: Alg. 2 up to the decoder."""
        model, vae = self.model, self.vae
        labels_B = labels_on(model, labels_B)
        check_sampling_args(model, labels_B, sample_cfg)
        labels_R = both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0)
        with eval_mode(model, vae):
            key = (len(labels_R), compute_dtype(labels_R.device))
            if key not in self.graphs:
                self.graphs[key] = GraphedSteps(model, len(labels_R), self.ranges())
            steps = self.graphs[key]
            steps.set_labels(labels_R)
            return self.loop(model, vae, labels_B, sample_cfg, generator, steps=steps)

    def ranges(self) -> list[tuple[int, int]]:
        """The token range of each step: VAR's scales."""
        return self.model.begin_ends

    @staticmethod
    def loop(model, vae, labels_B, sample_cfg, generator, steps):
        return var_loop(model, vae, labels_B, sample_cfg, generator, steps)

    @torch.no_grad()
    def many(self, label_batches: Iterable, sample_cfg: SampleConfig,
             generators: Iterable[torch.Generator]) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """(idx_Bl, images) of each batch in turn, those of `self(labels_B, sample_cfg, generator)` batch by batch,
        with the decoder of batch i on a second stream while batch i+1 draws its tokens. One generator per batch;
        both iterables are read lazily, as the batches go.

        Measured on an H200 (benchmarks/bench_sampler.py --mode overlap), it is no faster than one-batch calls: at
        d16, B=64, 0.219 s a batch either way (d30: 0.657 against 0.654 s). The GPU is already 97-99% busy, and the
        decoder's convolutions fill every multiprocessor: while they run, the next batch's small dependent kernels
        each wait for their blocks to retire and its tokens barely advance (of one overlapped pair at d16, B=64, the
        two streams are both busy 37 ms out of 445), whatever the token stream's priority.

        The autocast state at the first `next` holds for every batch. The results of batch i are handed over once
        batch i+1's tokens are queued: the caller's current stream then waits for batch i's decoder and for the token
        stream (so that the caller may use this sampler or its outputs in any order), and the handed tensors are
        marked as used by it, so that their memory is not reused before the caller's queued work on them is done.
        Labels already on the GPU avoid a copy that waits for the token stream."""
        caller = torch.cuda.current_stream(self.model.lvl_1L.device)
        tokens, decoder = self.tokens_stream, self.decoder_stream
        amp = dict(device_type="cuda", dtype=torch.get_autocast_dtype("cuda"),
                   enabled=torch.is_autocast_enabled("cuda"), cache_enabled=torch.is_autocast_cache_enabled())
        pending = None
        try:
            for labels_B, generator in one_each(label_batches, generators):
                tokens.wait_stream(caller)  # the caller's work before this batch (labels, generator, graphs' buffers)
                with torch.cuda.stream(tokens), torch.autocast(**amp):
                    idx_Bl, f_hat = self.draw(labels_B, sample_cfg, generator)
                decoder.wait_stream(tokens)  # f_hat is complete
                # f_hat's memory goes back to the token stream's pool when it is freed: not before the decoder read it
                f_hat.record_stream(decoder)
                with torch.cuda.stream(decoder), torch.autocast(**amp), eval_mode(self.vae):
                    images = self.vae.fhat_to_img(f_hat, compile=True)
                decoded = torch.cuda.Event()
                decoded.record(decoder)
                del f_hat
                if pending is not None:
                    yield hand_over(*pending, caller, tokens)
                pending = idx_Bl, images, decoded
            if pending is not None:
                yield hand_over(*pending, caller, tokens)
        finally:  # also when the caller stops early: nothing of ours is left running unordered with its stream
            caller.wait_stream(tokens)
            caller.wait_stream(decoder)

    def release(self) -> None:
        """Drop the captured graphs and their memory (the next call captures again)."""
        self.graphs.clear()
        torch.cuda.empty_cache()


def token_ranges(model: ARTransformer) -> list[tuple[int, int]]:
    """One token per step, in order: the steps of a next-token AR."""
    return [(t, t + 1) for t in range(model.L)]


class ARSampler(VARSampler):
    """`sample_ar` on the same engine as `VARSampler`: the next-token AR's L one-token steps replayed from CUDA graphs
    of the compiled blocks (one graph per position), token choice outside the graphs as in `sample_ar`, the decoder
    compiled. The speed claim compares VAR with the raster AR on this one engine, so that neither is timed on host
    overhead the other is spared (at d16 an eager AR step launches ~320 kernels for one token per image)."""

    def __init__(self, model: ARTransformer, vae):
        if not isinstance(model, ARTransformer):
            raise ValueError(f"ARSampler samples a next-token ARTransformer, got {type(model).__name__}; use "
                             f"VARSampler for VAR")
        super().__init__(model, vae)

    def ranges(self) -> list[tuple[int, int]]:
        return token_ranges(self.model)

    @staticmethod
    def loop(model, vae, labels_B, sample_cfg, generator, steps):
        return ar_loop(model, vae, labels_B, sample_cfg, generator, steps=steps)


def one_each(label_batches: Iterable, generators: Iterable[torch.Generator]) -> Iterator[tuple]:
    """(labels_B, generator) pairs; a ValueError when one iterable runs out before the other."""
    missing = object()
    for labels_B, generator in itertools.zip_longest(label_batches, generators, fillvalue=missing):
        if labels_B is missing or generator is missing:
            raise ValueError("VARSampler.many: label_batches and generators differ in length; give one generator "
                             "per batch")
        yield labels_B, generator


def hand_over(idx_Bl: list[torch.Tensor], images: torch.Tensor, decoded: torch.cuda.Event,
              caller: torch.cuda.Stream, tokens: torch.cuda.Stream) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A batch's results made safe to use on the caller's stream (see `VARSampler.many`)."""
    caller.wait_event(decoded)  # the images; the decoder had waited for the batch's tokens
    caller.wait_stream(tokens)
    for t in (*idx_Bl, images):
        t.record_stream(caller)  # allocated on our streams: freed by the caller, reused after its work on them
    return idx_Bl, images


@torch.no_grad()
def sample_many(model: VAR | ARTransformer, vae, labels, sample_cfg: SampleConfig, batch_size: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`varlib.sampling.sample_many` on a GPU, through the `many` of `VARSampler` (VAR: the tokens of
    `sample_var(compile=True)`) or of `ARSampler` (the next-token ARs: the tokens of the plain token loop over the
    compiled blocks): the same batches and generator streams (`batch_generator(seed, i)`).

    Returns (tokens (N, L) int64, images (N, C, H, W) uint8), both on the CPU. The graphs are captured for
    `batch_size` rows (and once more for a shorter last batch) and released at the end."""
    labels_N = labels_on(model, labels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_sampling_args(model, labels_N, sample_cfg)
    sampler = ARSampler(model, vae) if isinstance(model, ARTransformer) else VARSampler(model, vae)
    batches = labels_N.split(batch_size)
    generators = (batch_generator(seed, i, labels_N.device) for i in range(len(batches)))
    tokens, images = [], []
    try:
        for idx_Bl, images_B in tqdm(sampler.many(batches, sample_cfg, generators), total=len(batches),
                                     desc="sampling", leave=False):
            tokens.append(torch.cat(idx_Bl, dim=1).cpu())
            images.append(to_uint8(images_B).cpu())
    finally:
        sampler.release()
    log.info("sampled %d images in %d batches (seed %d), decoder overlapped", len(labels_N), len(tokens), seed)
    return torch.cat(tokens), torch.cat(images)
