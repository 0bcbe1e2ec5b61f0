"""Sampler throughput: varlib's `sample_var` beside the authors' `autoregressive_infer_cfg`, and VAR vs. raster AR.

    python benchmarks/bench_sampler.py --authors-dir .authors/VAR --out bench_sampler.json [--mode graphs]
    python benchmarks/bench_sampler.py --ar-compare --depths 16 --batches 64 --out ar_vs_var.json
    python benchmarks/bench_sampler.py --quick --out /tmp/bench_quick.json        # tiny CPU smoke run

Images/s end to end: labels -> tokens -> decoded 256x256 images with the paper-size VQVAE (random weights, the same
weights in both samplers), README settings (cfg 1.5, top-k 900, top-p 0.96), best of N timed runs after a warm-up.
varlib runs under bf16 autocast, the authors' sampler under fp16 autocast as their demo does. varlib's --mode: eager
`sample_var`, `sample_var(compile=True)` (compiled blocks and decoder), or `VARSampler` (per-scale CUDA graphs of the
compiled blocks, compiled decoder; captured in the warm-up call). Depths 16/20/24/30,
batches 16/64/256; an out-of-memory at one size is recorded and the run goes on. Each row also records how much
of a call's span the GPU spends in kernels (`gpu_busy`): near 1, the time is in the kernels, not in host waits.

Token-distribution check: both samplers draw tokens from the same weights (varlib's state dict loaded into the
authors' model with strict=True; the head and AdaLN gammas re-drawn larger so that the distributions are peaked and
class-dependent); every sample is scored under the unguided model by teacher forcing, and the per-scale mean token
log-likelihoods must agree within a few standard errors (the two samplers use their generators differently, so the
tokens themselves differ).

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
import time
from pathlib import Path

import torch

from varlib.authors import authors_var, import_authors_models
from varlib.config import PAPER_SCALES_256, README_SAMPLING, SampleConfig, TokenizerConfig, VARConfig
from varlib.device import autocast
from varlib.fast_sampling import VARSampler
from varlib.report import provenance, write_provenance
from varlib.sampling import batch_generator, sample_ar, sample_var
from varlib.timing import gpu_busy, host_syncs, measure, write_profile
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


MODES = ("eager", "compile", "graphs")


def our_sampler(model: VAR, vae: VQVAE, mode: str):
    """varlib's sampler for --mode, called as (labels, sample_cfg, generator, decode=...) -> (idx_Bl, images)."""
    if mode == "graphs":
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


def bench_theirs(setup: Setup, theirs, batch: int) -> dict:
    labels = labels_for(setup, batch, seed=batch)
    sc = setup.sampling

    def run():
        with autocast(setup.device, setup.amp[1]):
            return theirs.autoregressive_infer_cfg(B=batch, label_B=labels, g_seed=0, cfg=sc.cfg, top_k=sc.top_k,
                                                   top_p=sc.top_p, more_smooth=False)

    row = measure(run, setup.device, setup.repeats)
    if "seconds" in row:
        row.update(gpu_busy(run, setup.device))
        write_profile(setup.profile_dir, f"authors_d{theirs.depth}_b{batch}", run, setup.device, calls=1, rows=40)
    return row


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
        sc = setup.sampling
        with autocast(setup.device, setup.amp[1]):
            theirs.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=seed, cfg=sc.cfg, top_k=sc.top_k,
                                            top_p=sc.top_p, more_smooth=False)
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

def ar_compare(setup: Setup, depth: int, mode: str) -> dict:
    """End-to-end time for one batch: VAR (all scales) vs raster AR (one token per step), same depth and grid."""
    last = setup.tokenizer.scales[-1]
    var_vae = build_vae(setup.tokenizer, setup.device)
    ar_vae = build_vae(dataclasses.replace(setup.tokenizer, scales=(last,)), setup.device)
    with torch.device(setup.device):
        var = VAR(setup.var_config(depth)).eval().requires_grad_(False)
        ar = ARTransformer(setup.var_config(depth, scales=(last,))).eval().requires_grad_(False)
    labels = labels_for(setup, setup.ar_batch, seed=7)
    gen = batch_generator(0, 0, setup.device)
    sample = our_sampler(var, var_vae, mode)

    def run_var():
        with autocast(setup.device, setup.amp[0]):
            sample(labels, setup.sampling, gen)

    def run_ar():
        with autocast(setup.device, setup.amp[0]):
            sample_ar(ar, ar_vae, labels, setup.sampling, gen)

    var_row, ar_row = measure(run_var, setup.device, setup.repeats), measure(run_ar, setup.device, setup.repeats)
    out = {"depth": depth, "batch": setup.ar_batch, "grid": f"{last}x{last}", "var_params": var.num_params(),
           "ar_params": ar.num_params(), "var": var_row, "ar": ar_row}
    if "seconds" in var_row and "seconds" in ar_row:
        out["ar_over_var_time"] = ar_row["seconds"] / var_row["seconds"]
    return out


# ----------------------------------------------------------------------------------------------- main

def img_per_s(row: dict, batch: int) -> str:
    return "OOM" if row.get("oom") else f"{batch / row['seconds']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-dir", type=Path, help="a FoundationVision/VAR checkout (omit: varlib only)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 20, 24, 30])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5, help="best of N timed runs")
    parser.add_argument("--dist-samples", type=int, default=512, help="samples per sampler for the token check")
    parser.add_argument("--mode", choices=MODES, default="eager",
                        help="varlib's sampler: eager, compiled blocks and decoder, or CUDA graphs (VARSampler)")
    parser.add_argument("--ar-compare", action="store_true", help="only the VAR vs raster-AR timing")
    parser.add_argument("--decoder", action="store_true", help="also time the decoder alone")
    parser.add_argument("--profile-dir", type=Path, help="write a profiler table of one call per timed row here")
    parser.add_argument("--quick", action="store_true", help="tiny models on the CPU (smoke test)")
    args = parser.parse_args()
    started = time.perf_counter()
    setup = quick_setup(args) if args.quick else paper_setup(args)
    if setup.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    models = import_authors_models(args.authors_dir, setup.device) if args.authors_dir else None
    result = {"torch": torch.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu",
              "sampling": dataclasses.asdict(setup.sampling), "mode": args.mode, "rows": []}
    print(f"device {result['device']}, torch {torch.__version__}, sampling {setup.sampling}")

    if not args.ar_compare or args.quick:
        vae = build_vae(setup.tokenizer, setup.device)
        if args.decoder:
            result["decoder"] = bench_decoder(setup, vae, setup.batches[0], args.mode != "eager")
        print(f"{'impl':8} {'depth':>5} {'params':>8} {'batch':>5} {'img/s':>8} {'tokens s':>9} {'total s':>8} "
              f"{'peak GB':>8} {'GPU busy':>8}")
        for di, depth in enumerate(setup.depths):
            torch._dynamo.reset()  # each depth compiles its own graphs: keep them under the recompile limit
            ours = build_ours(setup, depth)
            if models is not None and di == 0:
                theirs = build_theirs(models, setup, depth, ours.state_dict(), vae)
                result["distribution"] = {"depth": depth, **distribution_check(setup, ours, theirs, vae)}
                print(f"token check at d{depth}: consistent={result['distribution']['consistent']}, "
                      f"z per scale {[round(z, 2) for z in result['distribution']['z_per_scale']]}")
                del theirs
            params = ours.num_params()
            for batch in setup.batches:
                row = {"impl": "varlib", "depth": depth, "params": params, "batch": batch,
                       **bench_ours(setup, ours, vae, batch, args.mode)}
                result["rows"].append(row)
                print(f"{'varlib':8} {depth:5d} {params / 1e6:7.0f}M {batch:5d} {img_per_s(row, batch):>8} "
                      f"{row.get('transformer_and_sampling_s') or float('nan'):9.3f} "
                      f"{row.get('seconds', float('nan')):8.3f} {row.get('peak_reserved_gb') or float('nan'):8.1f} "
                      f"{row.get('gpu_busy', float('nan')):8.1%}")
            if models is None:
                continue
            state = {k: v.cpu() for k, v in ours.state_dict().items()}
            del ours
            theirs = build_theirs(models, setup, depth, state, vae)
            for batch in setup.batches:
                row = {"impl": "authors", "depth": depth, "params": params, "batch": batch,
                       **bench_theirs(setup, theirs, batch)}
                result["rows"].append(row)
                print(f"{'authors':8} {depth:5d} {params / 1e6:7.0f}M {batch:5d} {img_per_s(row, batch):>8} "
                      f"{'':9} {row.get('seconds', float('nan')):8.3f} "
                      f"{row.get('peak_reserved_gb') or float('nan'):8.1f} {row.get('gpu_busy', float('nan')):8.1%}")
            del theirs

    if args.ar_compare or args.quick:
        cmp = ar_compare(setup, setup.depths[0], args.mode)
        result["ar_compare"] = cmp
        print(f"VAR d{cmp['depth']} ({cmp['var_params'] / 1e6:.0f}M) vs raster AR ({cmp['ar_params'] / 1e6:.0f}M), "
              f"batch {cmp['batch']}, {cmp['grid']} tokens: VAR {img_per_s(cmp['var'], cmp['batch'])} img/s, "
              f"AR {img_per_s(cmp['ar'], cmp['batch'])} img/s, AR/VAR time {cmp.get('ar_over_var_time', 'n/a')}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    write_provenance(args.out.parent, provenance("bench_sampler", vars(args), setup.device, None,
                                                 time.perf_counter() - started, [args.out.name]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
