"""Sampler throughput: varlib's `sample_var` beside the authors' `autoregressive_infer_cfg`, and VAR vs. raster AR.

    python benchmarks/bench_sampler.py --authors-dir .authors/VAR --out bench_sampler.json [--mode graphs]
    python benchmarks/bench_sampler.py --authors-dir .authors/VAR --mode overlap --depths 16 30 --batches 64 256 \
        --dist-samples 0 --profile-dir profiles --out overlap.json
    python benchmarks/bench_sampler.py --ar-compare --depths 16 --batches 64 --out ar_vs_var.json
    python benchmarks/bench_sampler.py --quick --out /tmp/bench_quick.json        # tiny CPU smoke run

Images/s end to end: labels -> tokens -> decoded 256x256 images with the paper-size VQVAE (random weights, the same
weights in both samplers), README settings (cfg 1.5, top-k 900, top-p 0.96), best of N timed runs after a warm-up.
varlib runs under bf16 autocast, the authors' sampler under fp16 autocast as their demo does. varlib's --mode: eager
`sample_var`, `sample_var(compile=True)` (compiled blocks and decoder), or `VARSampler` (per-scale CUDA graphs of the
compiled blocks, compiled decoder; captured in the warm-up call), or `VARSampler.many` (overlap: the decoder of
one batch on a second stream while the next batch draws its tokens). Depths 16/20/24/30,
batches 16/64/256; an out-of-memory at one size is recorded and the run goes on. Each row also records how much
of a call's span the GPU spends in kernels (`gpu_busy`): near 1, the time is in the kernels, not in host waits.

--mode overlap times both samplers over 8 consecutive batches with their own labels: `VARSampler.many` against
the authors' `autoregressive_infer_cfg` called 8 times, in the same process; a varlib row also gives the same
sampler's one-batch calls and its tokens alone per batch. With --profile-dir, the kernel table and a per-stream
timeline of one overlapped pair of batches (the token stream's and the decoder's busy intervals, and one character
per millisecond: T tokens only, D decoder only, X both, . neither). It needs CUDA: on the CPU it falls back to eager.

Token-distribution check (skipped with --dist-samples 0): both samplers draw tokens from the same weights (varlib's
state dict loaded into the authors' model with strict=True; the head and AdaLN gammas re-drawn larger so that the
distributions are peaked and class-dependent); every sample is scored under the unguided model by teacher forcing,
and the per-scale mean token log-likelihoods must agree within a few standard errors (the two samplers use their
generators differently, so the tokens themselves differ).

--ar-compare: VAR and the raster AR baseline at the same depth (matched parameter count within 1%) and the same
final 16x16 token grid, each with its tokenizer, end to end (the paper's "about 20x faster" claim).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import math
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from varlib.authors import authors_var, import_authors_models
from varlib.config import PAPER_SCALES_256, README_SAMPLING, SampleConfig, TokenizerConfig, VARConfig
from varlib.device import autocast, synchronize
from varlib.fast_sampling import ARSampler, VARSampler
from varlib.report import provenance, write_provenance
from varlib.sampling import batch_generator, sample_ar, sample_var
from varlib.timing import busy_time, gpu_busy, host_syncs, measure, write_profile
from varlib.tokenizer import VQVAE
from varlib.transformer import VAR, ARTransformer, teacher_forcing_input


@dataclasses.dataclass(frozen=True)
class Setup:
    device: torch.device
    tokenizer: TokenizerConfig
    num_classes: int
    depths: tuple[int, ...]
    batches: tuple[int, ...]
    repeats: int
    sampling: SampleConfig
    dist_samples: int
    dist_batch: int
    ar_batch: int
    profile_dir: Path | None = None

    def var_config(self, depth: int, scales: tuple[int, ...] | None = None) -> VARConfig:
        return VARConfig(depth=depth, num_classes=self.num_classes, vocab_size=self.tokenizer.vocab_size,
                         z_channels=self.tokenizer.z_channels, scales=scales or self.tokenizer.scales)

    @property
    def amp(self):
        """(ours, theirs) autocast dtypes: bf16 for varlib, fp16 as the authors' demo; none on the CPU."""
        return (torch.bfloat16, torch.float16) if self.device.type == "cuda" else (None, None)


def paper_setup(args) -> Setup:
    return Setup(device=torch.device(args.device), tokenizer=TokenizerConfig.paper(PAPER_SCALES_256), num_classes=1000,
                 depths=tuple(args.depths), batches=tuple(args.batches), repeats=args.repeats,
                 sampling=README_SAMPLING, dist_samples=args.dist_samples, dist_batch=64, ar_batch=args.batches[0],
                 profile_dir=args.profile_dir)


def quick_setup(args) -> Setup:
    tok = dataclasses.replace(TokenizerConfig.paper((1, 2, 3, 4)), ch=32, vocab_size=64)  # GroupNorm needs ch % 32
    return Setup(device=torch.device("cpu"), tokenizer=tok, num_classes=10, depths=(2,), batches=(2,), repeats=1,
                 sampling=SampleConfig(cfg=1.5, top_k=32, top_p=0.96), dist_samples=8, dist_batch=4, ar_batch=2,
                 profile_dir=args.profile_dir)


# ----------------------------------------------------------------------------------------------- models

def exercise_weights(model: VAR, seed: int) -> VAR:
    """Redraw the head and the AdaLN gamma rows larger than at init, so that the token distributions are peaked and
    depend on the class and the blocks (at init the blocks are near identities and the logits near uniform)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    C = model.C
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g, device="cpu") * 2 / math.sqrt(C))
        for block in model.blocks:
            gammas = block.ada_lin[-1].weight[:2 * C]
            gammas.copy_(torch.randn(gammas.shape, generator=g, device="cpu") * 0.5 / math.sqrt(C))
    return model


def build_ours(setup: Setup, depth: int) -> VAR:
    with torch.device(setup.device):
        return exercise_weights(VAR(setup.var_config(depth)), seed=depth).eval().requires_grad_(False)


def build_vae(tok: TokenizerConfig, device) -> VQVAE:
    with torch.device(device):
        return VQVAE(tok).eval().requires_grad_(False)


def build_theirs(models, setup: Setup, depth: int, our_state: dict, our_vae: VQVAE):
    """The authors' VQVAE and VAR holding varlib's weights (strict loads both ways prove the layouts agree)."""
    tok = setup.tokenizer
    with contextlib.redirect_stdout(io.StringIO()), torch.device(setup.device):  # their constructors print
        their_vae = models.VQVAE(vocab_size=tok.vocab_size, z_channels=tok.z_channels, ch=tok.ch,
                                 share_quant_resi=tok.share_phi, v_patch_nums=tok.scales, test_mode=True)
        their_vae.load_state_dict(our_vae.state_dict(), strict=True)
        theirs = authors_var(models, setup.var_config(depth), cond_drop_rate=0.1, device=setup.device)
    theirs.vae_proxy, theirs.vae_quant_proxy = (their_vae,), (their_vae.quantize,)
    theirs.load_state_dict(our_state, strict=True)
    return theirs.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- timed runs

def labels_for(setup: Setup, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(setup.num_classes, (n,), generator=g).to(setup.device)


MODES = ("eager", "compile", "graphs", "overlap")
STREAMED = 8  # consecutive batches per timed pass in --mode overlap


def our_sampler(model: VAR, vae: VQVAE, mode: str):
    """varlib's sampler for --mode, called as (labels, sample_cfg, generator, decode=...) -> (idx_Bl, images); one
    batch at a time, so `VARSampler` for overlap too."""
    if mode in ("graphs", "overlap"):
        return VARSampler(model, vae)
    return functools.partial(sample_var, model, vae, compile=mode == "compile")


def bench_ours(setup: Setup, model: VAR, vae: VQVAE, batch: int, mode: str) -> dict:
    labels = labels_for(setup, batch, seed=batch)
    amp = setup.amp[0]
    sampler = our_sampler(model, vae, mode)

    def run(decode=True):
        with autocast(setup.device, amp):
            return sampler(labels, setup.sampling, batch_generator(0, 0, setup.device), decode=decode)

    row = measure(run, setup.device, setup.repeats)
    if "seconds" in row:
        tokens_only = measure(lambda: run(decode=False), setup.device, setup.repeats)
        row["transformer_and_sampling_s"] = tokens_only.get("seconds")
        row["host_syncs_per_call"] = len(host_syncs(lambda: run(decode=False), setup.device))
        row.update(gpu_busy(run, setup.device))
        write_profile(setup.profile_dir, f"varlib_d{model.cfg.depth}_b{batch}_{mode}", run, setup.device, calls=1,
                      rows=40)
    if isinstance(sampler, VARSampler):
        sampler.release()
    return row


def bench_decoder(setup: Setup, vae: VQVAE, batch: int, compile: bool) -> dict:
    """The VQVAE decoder alone (f_hat -> images) under varlib's autocast: its share of a sampling call."""
    f_hat = torch.randn(batch, vae.Cvae, setup.tokenizer.scales[-1], setup.tokenizer.scales[-1], device=setup.device)

    def run():
        with torch.no_grad(), autocast(setup.device, setup.amp[0]):
            vae.fhat_to_img(f_hat, compile=compile)

    row = {"batch": batch, "compile": compile, **measure(run, setup.device, setup.repeats)}
    print(f"decoder alone: {row}", flush=True)
    return row


def authors_call(setup: Setup, theirs, labels: torch.Tensor, g_seed: int):
    sc = setup.sampling
    with autocast(setup.device, setup.amp[1]):
        return theirs.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=g_seed, cfg=sc.cfg,
                                               top_k=sc.top_k, top_p=sc.top_p, more_smooth=False)


def bench_theirs(setup: Setup, theirs, batch: int) -> dict:
    labels = labels_for(setup, batch, seed=batch)

    def run():
        return authors_call(setup, theirs, labels, g_seed=0)

    row = measure(run, setup.device, setup.repeats)
    if "seconds" in row:
        row.update(gpu_busy(run, setup.device))
        write_profile(setup.profile_dir, f"authors_d{theirs.depth}_b{batch}", run, setup.device, calls=1, rows=40)
    return row


# ----------------------------------------------------------------------------------------------- many batches

def streamed_labels(setup: Setup, batch: int) -> list[torch.Tensor]:
    """The labels of `STREAMED` consecutive batches, each its own draw."""
    return [labels_for(setup, batch, seed=1000 * batch + i) for i in range(STREAMED)]


def seconds_per_batch(fn, setup: Setup, batches: int) -> float:
    """Wall seconds per batch of `fn()` (which runs `batches` consecutive batches), best of `setup.repeats` passes;
    the caller has warmed up."""
    best = float("inf")
    for _ in range(setup.repeats):
        synchronize(setup.device)
        start = time.perf_counter()
        fn()
        synchronize(setup.device)
        best = min(best, time.perf_counter() - start)
    return best / batches


def peak_reserved_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_reserved(device) / 1e9


def bench_overlap(setup: Setup, model: VAR, vae: VQVAE, batch: int) -> dict:
    """`VARSampler.many` over `STREAMED` consecutive batches; beside it the same sampler's one-batch calls and its
    tokens alone (decode=False), per batch."""
    label_batches = streamed_labels(setup, batch)
    sampler = VARSampler(model, vae)

    def streamed(n: int) -> None:
        generators = [batch_generator(0, i, setup.device) for i in range(n)]
        with autocast(setup.device, setup.amp[0]):
            for _ in sampler.many(label_batches[:n], setup.sampling, generators):
                pass

    def one_by_one(n: int, decode: bool = True) -> None:
        with autocast(setup.device, setup.amp[0]):
            for i in range(n):
                sampler(label_batches[i], setup.sampling, batch_generator(0, i, setup.device), decode=decode)

    try:
        torch.cuda.reset_peak_memory_stats(setup.device)
        streamed(2)  # the warm-up: compiles the blocks and the decoder, captures the graphs
        row = {"seconds": seconds_per_batch(lambda: streamed(STREAMED), setup, STREAMED),
               "batches": STREAMED, "peak_reserved_gb": peak_reserved_gb(setup.device),
               "one_batch_call_s": seconds_per_batch(lambda: one_by_one(3), setup, 3),
               "transformer_and_sampling_s": seconds_per_batch(lambda: one_by_one(3, decode=False), setup, 3)}
        row.update(profile_pair(setup.profile_dir, f"varlib_d{model.cfg.depth}_b{batch}_overlap",
                                lambda: streamed(2), setup.device))
    except torch.OutOfMemoryError:
        row = {"oom": True}
    finally:
        sampler.release()
    return row


def bench_theirs_streamed(setup: Setup, theirs, batch: int) -> dict:
    """The authors' sampler called for `STREAMED` consecutive batches (g_seed = the batch's index)."""
    label_batches = streamed_labels(setup, batch)

    def consecutive(n: int) -> None:
        for i in range(n):
            authors_call(setup, theirs, label_batches[i], g_seed=i)

    try:
        torch.cuda.reset_peak_memory_stats(setup.device)
        consecutive(1)
        row = {"seconds": seconds_per_batch(lambda: consecutive(STREAMED), setup, STREAMED), "batches": STREAMED,
               "peak_reserved_gb": peak_reserved_gb(setup.device), **gpu_busy(lambda: consecutive(2), setup.device)}
    except torch.OutOfMemoryError:
        row = {"oom": True}
    finally:
        torch.cuda.empty_cache()
    return row


def stream_timeline(events: list[dict], chars: int = 200, gap_us: float = 50.0) -> dict:
    """Per CUDA stream of a chrome trace's device events: busy ms and busy intervals (gaps under `gap_us` closed), in
    ms from the first event; the GPU-busy share of the window (any stream); the time both of the two busiest streams
    run, one or neither; and a timeline of about `chars` characters, one per bin of at least 1 ms (T: the stream
    that starts first, the token stream, only; D: the other, the decoder, only; X: both; .: neither, each for at
    least half the bin)."""
    by_stream = defaultdict(list)
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            by_stream[e["args"]["stream"]].append((e["ts"], e["ts"] + e["dur"]))
    if not by_stream:
        return {}
    window, busy = busy_time([span for spans in by_stream.values() for span in spans])
    t0 = min(start for spans in by_stream.values() for start, _ in spans)
    busiest = sorted(by_stream, key=lambda s: busy_time(by_stream[s])[1], reverse=True)[:2]
    roles = dict(zip(sorted(busiest, key=lambda s: min(by_stream[s])), ("tokens", "decoder"), strict=False))
    merged = {}
    for stream, spans in by_stream.items():
        out = []
        for start, stop in sorted(spans):
            if out and start - out[-1][1] < gap_us:
                out[-1][1] = max(out[-1][1], stop)
            else:
                out.append([start, stop])
        merged[stream] = out
    bin_us = max(1e3, window / chars)
    bins = math.ceil(window / bin_us)
    cover = {role: [0.0] * bins for role in ("tokens", "decoder")}
    for stream, role in roles.items():
        for start, stop in merged[stream]:
            for b in range(int((start - t0) // bin_us), min(bins, int((stop - t0) // bin_us) + 1)):
                lo, hi = t0 + b * bin_us, t0 + (b + 1) * bin_us
                cover[role][b] += max(0.0, min(stop, hi) - max(start, lo)) / bin_us
    line = "".join("X" if t >= 0.5 and d >= 0.5 else "T" if t >= 0.5 else "D" if d >= 0.5 else "."
                   for t, d in zip(cover["tokens"], cover["decoder"], strict=True))
    # exact shares, from the union of each role's kernels
    union = busy_time([span for s in roles for span in by_stream[s]])[1]
    each = {role: busy_time(by_stream[s])[1] for s, role in roles.items()}
    both = sum(each.values()) - union
    ms = lambda us: round(us / 1e3, 3)  # noqa: E731
    return {
        "gpu_window_ms": ms(window), "gpu_busy_ms": ms(busy), "gpu_busy": busy / window,
        "both_busy_ms": ms(both), "only_tokens_ms": ms(each.get("tokens", 0.0) - both),
        "only_decoder_ms": ms(each.get("decoder", 0.0) - both), "neither_ms": ms(window - union),
        "timeline_bin_ms": ms(bin_us), "timeline": line,
        "streams": {roles.get(s, f"stream {s}"): {"stream": s, "busy_ms": ms(busy_time(spans)[1]),
                                                  "intervals_ms": [[ms(a - t0), ms(b - t0)] for a, b in merged[s]]}
                    for s, spans in by_stream.items()},
    }


def profile_pair(folder: Path | None, name: str, fn, device: torch.device, rows: int = 40) -> dict:
    """Profile `fn` (one overlapped pair of batches: batch 1's tokens beside batch 0's decoder) on the device:
    the GPU-busy share and the `stream_timeline` shares (without intervals). With a folder, also the kernel table
    (<name>.txt) and the whole timeline (<name>_timeline.json)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        timeline = stream_timeline(json.loads(trace.read_text())["traceEvents"])
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(prof.key_averages().table(sort_by="self_cuda_time_total",
                                                                      row_limit=rows, max_name_column_width=90))
        (folder / f"{name}_timeline.json").write_text(json.dumps(timeline, indent=1))
    summary = {k: v for k, v in timeline.items() if k != "streams"}
    summary["stream_busy_ms"] = {role: v["busy_ms"] for role, v in timeline.get("streams", {}).items()}
    return summary


# ----------------------------------------------------------------------------------------------- distributions

@torch.no_grad()
def per_scale_loglik(model: VAR, vae: VQVAE, labels: torch.Tensor, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
    """(B, K) mean log-likelihood of each sample's tokens per scale under the unguided model (teacher forcing)."""
    logits_BLV = model(labels, teacher_forcing_input(vae, idx_Bl))
    logp_BL = logits_BLV.log_softmax(-1).gather(-1, torch.cat(idx_Bl, 1).unsqueeze(-1)).squeeze(-1)
    return torch.stack([logp_BL[:, b:e].mean(1) for b, e in model.begin_ends], dim=1)


@torch.no_grad()
def authors_tokens(theirs, setup: Setup, labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """The tokens the authors' sampler draws, read off their codebook lookups with a forward hook."""
    seen = []
    handle = theirs.vae_quant_proxy[0].embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        authors_call(setup, theirs, labels, g_seed=seed)
    finally:
        handle.remove()
    return seen


def distribution_check(setup: Setup, ours: VAR, theirs, vae: VQVAE) -> dict:
    scores = {"varlib": [], "authors": []}
    for i, labels in enumerate(labels_for(setup, setup.dist_samples, seed=123).split(setup.dist_batch)):
        with autocast(setup.device, setup.amp[0]):
            idx_Bl, _ = sample_var(ours, vae, labels, setup.sampling, batch_generator(1, i, setup.device),
                                   decode=False)
        scores["varlib"].append(per_scale_loglik(ours, vae, labels, idx_Bl))
        scores["authors"].append(per_scale_loglik(ours, vae, labels, authors_tokens(theirs, setup, labels, 1000 + i)))
    out = {}
    for name, chunks in scores.items():
        ll_NK = torch.cat(chunks).float()
        out[name] = {"mean": ll_NK.mean(0).tolist(), "stderr": (ll_NK.std(0) / math.sqrt(len(ll_NK))).tolist()}
    z = [(a - b) / math.sqrt(sa**2 + sb**2 + 1e-12) for a, b, sa, sb in zip(
        out["varlib"]["mean"], out["authors"]["mean"], out["varlib"]["stderr"], out["authors"]["stderr"], strict=True)]
    out["z_per_scale"] = z
    out["consistent"] = all(abs(v) < 4 for v in z)
    out["samples"] = setup.dist_samples
    return out


# ----------------------------------------------------------------------------------------------- VAR vs AR

def ar_sampler(model: ARTransformer, vae: VQVAE, mode: str):
    """The raster AR's sampler on the same engine as `our_sampler` gives VAR: per-token CUDA graphs of the compiled
    blocks (`ARSampler`) for graphs/overlap, else the eager token loop."""
    if mode in ("graphs", "overlap") and model.lvl_1L.device.type == "cuda":
        return ARSampler(model, vae)
    return functools.partial(sample_ar, model, vae)


def ar_compare(setup: Setup, depth: int, mode: str) -> dict:
    """End-to-end time for one batch: VAR (all scales) vs raster AR (one token per step), same depth and grid, both
    on the engine of --mode (with graphs: CUDA graphs for both)."""
    last = setup.tokenizer.scales[-1]
    var_vae = build_vae(setup.tokenizer, setup.device)
    ar_vae = build_vae(dataclasses.replace(setup.tokenizer, scales=(last,)), setup.device)
    with torch.device(setup.device):
        var = VAR(setup.var_config(depth)).eval().requires_grad_(False)
        ar = ARTransformer(setup.var_config(depth, scales=(last,))).eval().requires_grad_(False)
    labels = labels_for(setup, setup.ar_batch, seed=7)
    gen = batch_generator(0, 0, setup.device)
    sample, sample_ar_ = our_sampler(var, var_vae, mode), ar_sampler(ar, ar_vae, mode)

    def run_var():
        with autocast(setup.device, setup.amp[0]):
            sample(labels, setup.sampling, gen)

    def run_ar():
        with autocast(setup.device, setup.amp[0]):
            sample_ar_(labels, setup.sampling, gen)

    var_row, ar_row = measure(run_var, setup.device, setup.repeats), measure(run_ar, setup.device, setup.repeats)
    out = {"depth": depth, "batch": setup.ar_batch, "grid": f"{last}x{last}", "var_params": var.num_params(),
           "ar_params": ar.num_params(), "engine": mode, "var": var_row, "ar": ar_row}
    if "seconds" in var_row and "seconds" in ar_row:
        out["ar_over_var_time"] = ar_row["seconds"] / var_row["seconds"]
    return out


# ----------------------------------------------------------------------------------------------- main

def img_per_s(row: dict, batch: int) -> str:
    return "OOM" if row.get("oom") else f"{batch / row['seconds']:.1f}"


def print_row(row: dict) -> None:
    print(f"{row['impl']:8} {row['depth']:5d} {row['params'] / 1e6:7.0f}M {row['batch']:5d} "
          f"{img_per_s(row, row['batch']):>8} {row.get('transformer_and_sampling_s') or float('nan'):9.3f} "
          f"{row.get('seconds', float('nan')):8.3f} {row.get('peak_reserved_gb') or float('nan'):8.1f} "
          f"{row.get('gpu_busy', float('nan')):8.1%}", flush=True)


def speedups(rows: list[dict]) -> list[dict]:
    """varlib's img/s over the authors' at each (depth, batch) where both ran."""
    theirs = {(r["depth"], r["batch"]): r for r in rows if r["impl"] == "authors" and "seconds" in r}
    out = []
    for r in rows:
        other = theirs.get((r["depth"], r["batch"]))
        if r["impl"] == "varlib" and "seconds" in r and other is not None:
            out.append({"depth": r["depth"], "batch": r["batch"], "varlib_img_s": r["batch"] / r["seconds"],
                        "authors_img_s": r["batch"] / other["seconds"], "ratio": other["seconds"] / r["seconds"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-dir", type=Path, help="a FoundationVision/VAR checkout (omit: varlib only)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results (rewritten after every row)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 20, 24, 30])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5, help="best of N timed runs")
    parser.add_argument("--dist-samples", type=int, default=512,
                        help="samples per sampler for the token check (0: no check)")
    parser.add_argument("--mode", choices=MODES, default="eager",
                        help="varlib's sampler: eager, compiled blocks and decoder, CUDA graphs (VARSampler), or "
                             "VARSampler.many over consecutive batches (overlap)")
    parser.add_argument("--ar-compare", action="store_true", help="only the VAR vs raster-AR timing")
    parser.add_argument("--decoder", action="store_true", help="also time the decoder alone")
    parser.add_argument("--profile-dir", type=Path, help="write a profiler table of one call per timed row here "
                                                         "(--mode overlap: of one overlapped pair, with its timeline)")
    parser.add_argument("--quick", action="store_true", help="tiny models on the CPU (smoke test)")
    args = parser.parse_args()
    started = time.perf_counter()
    setup = quick_setup(args) if args.quick else paper_setup(args)
    if setup.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    mode = args.mode
    if mode == "overlap" and setup.device.type != "cuda":
        print(f"--mode overlap needs CUDA (VARSampler.many decodes on a second CUDA stream); on {setup.device} this "
              f"run falls back to --mode eager")
        mode = "eager"
    overlap = mode == "overlap"
    models = import_authors_models(args.authors_dir, setup.device) if args.authors_dir else None
    result = {"torch": torch.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu",
              "sampling": dataclasses.asdict(setup.sampling), "mode": mode, "rows": []}
    if overlap:
        result["consecutive_batches"] = STREAMED
    print(f"device {result['device']}, torch {torch.__version__}, sampling {setup.sampling}")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1))

    if not args.ar_compare or args.quick:
        vae = build_vae(setup.tokenizer, setup.device)
        if args.decoder:
            result["decoder"] = bench_decoder(setup, vae, setup.batches[0], mode != "eager")
        print(f"{'impl':8} {'depth':>5} {'params':>8} {'batch':>5} {'img/s':>8} {'tokens s':>9} {'total s':>8} "
              f"{'peak GB':>8} {'GPU busy':>8}")
        for di, depth in enumerate(setup.depths):
            torch._dynamo.reset()  # each depth compiles its own graphs: keep them under the recompile limit
            ours = build_ours(setup, depth)
            if models is not None and di == 0 and setup.dist_samples:
                theirs = build_theirs(models, setup, depth, ours.state_dict(), vae)
                result["distribution"] = {"depth": depth, **distribution_check(setup, ours, theirs, vae)}
                print(f"token check at d{depth}: consistent={result['distribution']['consistent']}, "
                      f"z per scale {[round(z, 2) for z in result['distribution']['z_per_scale']]}")
                del theirs
            params = ours.num_params()
            for batch in setup.batches:
                timed = bench_overlap(setup, ours, vae, batch) if overlap else bench_ours(setup, ours, vae, batch,
                                                                                           mode)
                result["rows"].append({"impl": "varlib", "depth": depth, "params": params, "batch": batch, **timed})
                print_row(result["rows"][-1])
                save()
            if models is None:
                continue
            state = {k: v.cpu() for k, v in ours.state_dict().items()}
            del ours
            theirs = build_theirs(models, setup, depth, state, vae)
            for batch in setup.batches:
                timed = bench_theirs_streamed(setup, theirs, batch) if overlap else bench_theirs(setup, theirs, batch)
                result["rows"].append({"impl": "authors", "depth": depth, "params": params, "batch": batch, **timed})
                print_row(result["rows"][-1])
                save()
            del theirs
        result["speedups"] = speedups(result["rows"])
        for r in result["speedups"]:
            print(f"d{r['depth']} B={r['batch']}: varlib {r['varlib_img_s']:.1f} img/s, authors "
                  f"{r['authors_img_s']:.1f} img/s, {r['ratio']:.2f}x")

    if args.ar_compare or args.quick:
        cmp = ar_compare(setup, setup.depths[0], mode)
        result["ar_compare"] = cmp
        print(f"VAR d{cmp['depth']} ({cmp['var_params'] / 1e6:.0f}M) vs raster AR ({cmp['ar_params'] / 1e6:.0f}M), "
              f"batch {cmp['batch']}, {cmp['grid']} tokens: VAR {img_per_s(cmp['var'], cmp['batch'])} img/s, "
              f"AR {img_per_s(cmp['ar'], cmp['batch'])} img/s, AR/VAR time {cmp.get('ar_over_var_time', 'n/a')}")

    save()
    write_provenance(args.out.parent, provenance("bench_sampler", vars(args), setup.device, None,
                                                 time.perf_counter() - started, [args.out.name]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
