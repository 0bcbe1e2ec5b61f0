"""Training throughput: varlib's training step beside the authors' at the paper's d16, 256 px (REFERENCE.md section 8).

    python benchmarks/bench_train.py --out results/bench_train.json          # one GPU: d16, 680 tokens, V 4096, B 96
    python benchmarks/bench_train.py --quick --out /tmp/bench_train.json     # CPU smoke: a tiny model, two steps
    python benchmarks/bench_train.py --cpu-profile quick                     # CPU: training time per depth of a profile
    torchrun --standalone --nproc_per_node=2 benchmarks/bench_train.py --variants "varlib compile" --authors-dir none \
        --out results/bench_ddp/world2/bench_train.json                     # N GPUs: DDP, 96 sequences per GPU
    python benchmarks/bench_train.py --scaling results/bench_ddp/world{1,2}/bench_train.json \
        --out results/bench_ddp/scaling/scaling.json                         # efficiency of N GPUs against one

Random tokens and labels, bf16 autocast on CUDA, fused AdamW, gradient clipping at 2. varlib's step is
`varlib.train.TrainStep` exactly as the trainer runs it (teacher-forcing input from the codebook, forward + loss,
backward, clip, AdamW); the authors' step is their trainer's (their `idxBl_to_var_input`, their VAR forward, CE averaged
over the L tokens, backward, clip, fused AdamW), on their model built by their `build_vae_var` with random weights.
Their builder replaces `reset_parameters` on torch's layer classes for the whole process, so varlib's models are built
and measured first. A variant that fails is recorded with its error and the others still run.

FLOPs per token: the model's `flops_per_token()`, 6 x (matmul parameters) + 12 x depth x L x width (attention scores
and values, forward + backward); MFU (`varlib.timing.mfu`) is per GPU, against 989 TFLOP/s (H100 SXM dense bf16).
`gpu_busy`: the share of two steps' span in which the GPU runs kernels (near 1: the time is in the kernels; below, the
GPU waits on the host). The timing helpers are varlib.timing's.

Under torchrun each of the N processes runs varlib's step under DistributedDataParallel on its own GPU and its own
random batch of --batch sequences (weak scaling: the global batch is N x --batch); tokens/s counts all N, MFU is per
GPU, rank 0 writes the JSON, and the authors' variants are skipped. --scaling then gives the efficiency of each run:
tokens/s on N GPUs / (N x tokens/s on one).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from varlib.authors import import_authors_models
from varlib.config import PAPER_SCALES_256, TokenizerConfig, TrainConfig, VARConfig, get_profile
from varlib.device import autocast
from varlib.parallel import rank_and_world, setup_distributed
from varlib.report import provenance, write_provenance
from varlib.timing import PEAK_FLOPS, gpu_busy, mfu, time_steps, write_profile
from varlib.tokenizer import VQVAE, split_scales
from varlib.train import TrainStep, evaluate
from varlib.transformer import build_model

VARLIB_VARIANTS = ["varlib eager", "varlib eager + chunked CE", "varlib compile", "varlib compile + chunked CE"]
AUTHORS_VARIANTS = ["authors as released", "authors compile"]


def random_batch(var_cfg: VARConfig, batch: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    idx_BL = torch.randint(var_cfg.vocab_size, (batch, var_cfg.num_tokens), generator=gen).to(device)
    label_B = torch.randint(var_cfg.num_classes, (batch,), generator=gen).to(device)
    return idx_BL, label_B


def varlib_variant(var_cfg: VARConfig, tok_cfg: TokenizerConfig, train_cfg: TrainConfig, batch: int,
                   device: torch.device, chunk: int):
    """varlib's step; under torchrun under DDP, each rank on its own random batch."""
    rank, world = rank_and_world()
    torch.manual_seed(0)
    model = build_model(var_cfg).to(device).train()
    vae = VQVAE(tok_cfg).to(device).eval().requires_grad_(False)
    train_step = TrainStep(model, vae, train_cfg, device, chunk=chunk, world=world)
    idx_BL, label_B = random_batch(var_cfg, batch, device, seed=rank)
    return lambda: train_step(label_B, idx_BL, train_cfg.lr), model


def authors_variant(models, var_cfg: VARConfig, tok_cfg: TokenizerConfig, train_cfg: TrainConfig, batch: int,
                    device: torch.device, compile: bool):
    torch.manual_seed(0)
    vae, var = models.build_vae_var(
        device=device, patch_nums=var_cfg.scales, V=var_cfg.vocab_size, Cvae=var_cfg.z_channels, ch=tok_cfg.ch,
        share_quant_resi=4, num_classes=var_cfg.num_classes, depth=var_cfg.depth, shared_aln=False,
        attn_l2_norm=True, init_adaln=0.5, init_adaln_gamma=1e-3, init_head=0.02, init_std=-1)
    var.train()
    net = torch.compile(var) if compile else var
    opt = torch.optim.AdamW(var.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                            weight_decay=train_cfg.weight_decay, fused=device.type == "cuda")
    idx_BL, label_B = random_batch(var_cfg, batch, device)
    weight_1L = torch.ones(1, var_cfg.num_tokens, device=device) / var_cfg.num_tokens
    V = var_cfg.vocab_size

    def step():
        idx_Bl = split_scales(idx_BL, var_cfg.scales)
        x_BLCv_wo_first_l = vae.quantize.idxBl_to_var_input(idx_Bl)
        with autocast(device):
            logits_BLV = net(label_B, x_BLCv_wo_first_l)
            loss = F.cross_entropy(logits_BLV.view(-1, V), idx_BL.view(-1), reduction="none").view(batch, -1)
            loss = loss.mul(weight_1L).sum(-1).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(var.parameters(), train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, var


def say(*args) -> None:
    """print, on rank 0 only (every rank runs the same steps under torchrun)."""
    if rank_and_world()[0] == 0:
        print(*args, flush=True)


def run_variant(name: str, make, device: torch.device, tokens_per_step: int, flops_token: float, warmup: int,
                steps: int, profile_dir: Path | None = None) -> dict:
    """Times one variant (`tokens_per_step` over all ranks); with `profile_dir`, also writes the profiler table of
    two of its steps there."""
    say(f"== {name}")
    try:
        step, model = make()
        rec = time_steps(step, device, warmup, steps)
        rec["params"] = sum(p.numel() for p in model.parameters())
        rec.update(gpu_busy(step, device, calls=2))
        write_profile(profile_dir, name.replace(" ", "_"), step, device, calls=2)
        del step, model
    except Exception as e:  # a failing variant (compiler, out of memory) is recorded, the others still run
        rec = dict(error=f"{type(e).__name__}: {e}"[:2000])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    if "s_per_step" in rec:
        rec["tokens_per_s"] = tokens_per_step / rec["s_per_step"]
        rec["mfu"] = mfu(rec["tokens_per_s"], flops_token, world=rank_and_world()[1])
        say(f"   {rec['s_per_step']:.4f} s/step  {rec['tokens_per_s'] / 1e3:.1f}k tokens/s  MFU {rec['mfu']:.1%}  "
              f"peak {rec.get('peak_mem_gb', float('nan')):.1f} GiB  GPU busy {rec.get('gpu_busy', float('nan')):.1%}  "
              f"(warm-up {rec['warmup_s']:.1f} s)")
    else:
        say(f"   FAILED: {rec['error'][:300]}")
    return dict(name=name, **rec)


def throughput(args) -> dict:
    _, world, device = setup_distributed(torch.device(args.device))
    if args.quick:
        scales, depth, V, batch, num_classes, ch = (1, 2, 3, 4), 2, 64, 8, 10, 32
    else:
        scales, depth, V, batch, num_classes, ch = PAPER_SCALES_256, args.depth, 4096, args.batch or 96, 1000, 160
    tok_cfg = dataclasses.replace(TokenizerConfig.paper(scales), vocab_size=V, ch=ch)
    var_cfg = VARConfig(depth=depth, num_classes=num_classes, vocab_size=V, z_channels=tok_cfg.z_channels,
                        scales=scales)
    train_cfg = TrainConfig(batch_size=batch)
    L = var_cfg.num_tokens
    with torch.device("meta"):  # the FLOPs count needs the layer shapes only, not weights
        flops_token = build_model(var_cfg).flops_per_token()
    tokens_per_step = world * batch * L
    say(f"d{depth}, {len(scales)} scales, L={L}, V={V}, batch {batch} per process, {world} process(es), {device}: "
        f"{flops_token / 1e9:.3f} GFLOP/token")
    # profiler tables only with one process: under DDP every rank would have to run the profiled steps too
    profile_dir = Path(args.profile_dir) if args.profile_dir and world == 1 else None
    common = dict(device=device, tokens_per_step=tokens_per_step, flops_token=flops_token, warmup=args.warmup,
                  steps=args.steps, profile_dir=profile_dir)
    chosen = set(args.variants.split(","))
    unknown = chosen - set(VARLIB_VARIANTS) - set(AUTHORS_VARIANTS)
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}; choose from {VARLIB_VARIANTS + AUTHORS_VARIANTS}")
    results = []
    for name in VARLIB_VARIANTS:
        if name in chosen:
            cfg = dataclasses.replace(train_cfg, compile="compile" in name)
            chunk = 128 if "chunked" in name else 0
            results.append(run_variant(name, lambda cfg=cfg, chunk=chunk: varlib_variant(
                var_cfg, tok_cfg, cfg, batch, device, chunk), **common))
    if args.authors_dir is not None and chosen & set(AUTHORS_VARIANTS) and world == 1:
        models = import_authors_models(Path(args.authors_dir), device)
        for name in AUTHORS_VARIANTS:
            if name in chosen:
                results.append(run_variant(name, lambda compile="compile" in name: authors_variant(
                    models, var_cfg, tok_cfg, train_cfg, batch, device, compile), **common))
    return dict(config=dict(depth=depth, scales=scales, num_tokens=L, vocab_size=V, batch=batch, world=world,
                            flops_per_token=flops_token, peak_flops=PEAK_FLOPS), results=results)


def cpu_profile_times(args) -> dict:
    """Seconds per training step and per evaluation of every depth of a profile, and the projected training time."""
    prof = get_profile(args.cpu_profile)
    train_cfg = dataclasses.replace(prof.train, batch_size=args.batch or prof.train.batch_size,
                                    steps=args.train_steps or prof.train.steps,
                                    eval_every=args.train_steps or prof.train.eval_every)
    device = torch.device("cpu")
    n_test = args.test_sequences or prof.data.limit_test or 10_000
    rows = []
    for depth in prof.scaling_depths:
        var_cfg = dataclasses.replace(prof.var, depth=depth)
        torch.manual_seed(0)
        model = build_model(var_cfg).train()
        vae = VQVAE(prof.tokenizer).eval().requires_grad_(False)
        train_step = TrainStep(model, vae, train_cfg, device)
        idx_BL, label_B = random_batch(var_cfg, train_cfg.batch_size, device)
        rec = time_steps(lambda: train_step(label_B, idx_BL, train_cfg.lr), device, 1, args.steps)  # noqa: B023
        eval_tokens = dict(idx=torch.randint(var_cfg.vocab_size, (512, var_cfg.num_tokens)),
                           labels=torch.randint(var_cfg.num_classes, (512,)))
        t0 = time.perf_counter()
        evaluate(model, vae, eval_tokens, device)
        eval_s = (time.perf_counter() - t0) * n_test / 512
        n_evals = -(-train_cfg.steps // train_cfg.eval_every)
        total = rec["s_per_step"] * train_cfg.steps + eval_s * n_evals
        rows.append(dict(depth=depth, params=model.num_params(), s_per_step=rec["s_per_step"], eval_s=eval_s,
                         steps=train_cfg.steps, batch=train_cfg.batch_size, evals=n_evals, total_s=total))
        print(f"d{depth}: {model.num_params() / 1e6:.2f}M params, {rec['s_per_step']:.3f} s/step, "
              f"eval {eval_s:.1f} s x {n_evals}, projected {total / 60:.1f} min", flush=True)
    print(f"all depths: {sum(r['total_s'] for r in rows) / 60:.1f} min (tokenizer not included)")
    return dict(profile=args.cpu_profile, threads=torch.get_num_threads(), rows=rows)


def scaling(paths: list[str]) -> dict:
    """Per variant, the efficiency of each run against the run with one process among `paths`: tokens/s on N
    processes / (N x tokens/s on one)."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    worlds = [run["config"].get("world", 1) for run in runs]
    single = {r["name"]: r for run, n in zip(runs, worlds, strict=True) if n == 1 for r in run["results"]
              if "tokens_per_s" in r}
    if not single:
        raise SystemExit(f"--scaling needs the JSON of a run with one process among {paths}")
    rows = []
    for run, n in sorted(zip(runs, worlds, strict=True), key=lambda pair: pair[1]):
        for r in run["results"]:
            if "tokens_per_s" in r and r["name"] in single:
                rows.append(dict(name=r["name"], world=n, tokens_per_s=r["tokens_per_s"], mfu_per_gpu=r["mfu"],
                                 efficiency=r["tokens_per_s"] / (n * single[r["name"]]["tokens_per_s"])))
                print(f"{r['name']:28s} {n} process(es): {r['tokens_per_s'] / 1e3:8.1f}k tokens/s, MFU per GPU "
                      f"{r['mfu']:.1%}, efficiency {rows[-1]['efficiency']:.1%}")
    return dict(files=paths, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-dir", default=".authors/VAR",
                        help="the authors' code (FoundationVision/VAR); 'none' to skip their variants")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--batch", type=int, help="default: 96 (GPU), the profile's (--cpu-profile)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARLIB_VARIANTS + AUTHORS_VARIANTS),
                        help="comma-separated names of the variants to run")
    parser.add_argument("--profile-dir", help="write a profiler table of each variant's step here")
    parser.add_argument("--quick", action="store_true", help="a tiny model, two timed steps (CPU smoke test)")
    parser.add_argument("--cpu-profile", help="instead: time the training of every depth of this profile on the CPU")
    parser.add_argument("--train-steps", type=int, help="--cpu-profile: project this many steps, one evaluation")
    parser.add_argument("--test-sequences", type=int, help="--cpu-profile: evaluate on this many test sequences")
    parser.add_argument("--scaling", nargs="+", metavar="JSON",
                        help="instead: the scaling efficiency of earlier runs (one of them with one process)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.authors_dir == "none":
        args.authors_dir = None
    if args.quick:
        args.warmup, args.steps = 1, 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the authors' trainer
    if args.scaling:
        out = scaling(args.scaling)
    elif args.cpu_profile:
        out = cpu_profile_times(args)
    else:
        out = throughput(args)
    rank, world = rank_and_world()
    out["env"] = dict(torch=torch.__version__, python=platform.python_version(), device=args.device,
                      gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor())
    if args.out and rank == 0:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        write_provenance(Path(args.out).parent, provenance("bench_train", vars(args), args.device, None,
                                                           time.perf_counter() - started, [Path(args.out).name]))
        print(f"wrote {args.out}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
