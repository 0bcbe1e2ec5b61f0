"""Training throughput: varlib's training step beside the authors' at the paper's d16, 256 px (REFERENCE.md section 8).

    python benchmarks/bench_train.py --out results/bench_train.json          # one GPU: d16, 680 tokens, V 4096, B 96
    python benchmarks/bench_train.py --quick --out /tmp/bench_train.json     # CPU smoke: a tiny model, two steps
    python benchmarks/bench_train.py --cpu-profile quick                     # CPU: training time per depth of a profile
    torchrun --standalone --nproc_per_node=2 benchmarks/bench_train.py --variants "varlib compile" --authors-dir none \
        --out results/bench_ddp/world2/bench_train.json                     # N GPUs: DDP, 96 sequences per GPU
    python benchmarks/bench_train.py --scaling results/bench_ddp/world{1,2}/bench_train.json \
        --out results/bench_ddp/scaling/scaling.json                         # efficiency of N GPUs against one
    python benchmarks/bench_train.py --study-profile full --depths 2,6,10 \
        --out results/bench_train/study/bench_train_study.json               # the study's own 32 px models
    python benchmarks/bench_train.py --study-profile full --depths 2 --variants "varlib graph" --processes 4 \
        --out results/bench_train/packed/packed4.json                        # 4 models trained at once on one GPU

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

--study-profile: steps/s of the study's own models, the profile's VARConfig at each of --depths (32 px at full: 7
scales, 155 tokens, V 1024, B 512), for the variants eager, compile, graph (`TrainConfig.cuda_graph`: the whole step
replayed from one CUDA graph) and compile + graph, in a table and the JSON. --processes K runs K copies of that
measurement at once on the same GPU, as K trainings packed onto it would: each process builds and warms up its
models, waits at a file barrier so that all K time their steps together, and the JSON gives each one's steps/s, their
sum, and the total of all K's steps over the span from the first start to the last end (the lower bound when they
do not overlap well).

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
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from varlib.authors import import_authors_models
from varlib.config import PAPER_SCALES_256, PROFILES, TokenizerConfig, TrainConfig, VARConfig, get_profile
from varlib.device import autocast, synchronize
from varlib.parallel import rank_and_world, setup_distributed
from varlib.report import provenance, write_provenance
from varlib.timing import PEAK_FLOPS, gpu_busy, mfu, time_steps, write_profile
from varlib.tokenizer import VQVAE, split_scales
from varlib.train import TrainStep, evaluate
from varlib.transformer import build_model

VARLIB_VARIANTS = ["varlib eager", "varlib eager + chunked CE", "varlib compile", "varlib compile + chunked CE",
                   "varlib graph", "varlib compile + graph"]
AUTHORS_VARIANTS = ["authors as released", "authors compile"]
STUDY_VARIANTS = ["varlib eager", "varlib compile", "varlib graph", "varlib compile + graph"]
BARRIER_TIMEOUT_S = 120.0  # packed processes wait this long for each other before a variant is recorded as failed


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


def variant_config(train_cfg: TrainConfig, name: str) -> tuple[TrainConfig, int]:
    """The training config and head chunk of a varlib variant, read off its name."""
    cfg = dataclasses.replace(train_cfg, compile="compile" in name, cuda_graph="graph" in name)
    return cfg, 128 if "chunked" in name else 0


def chosen_variants(text: str, known: list[str]) -> list[str]:
    """The comma-separated --variants, in the order of `known`; SystemExit naming any unknown one."""
    chosen = set(text.split(","))
    if chosen - set(known):
        raise SystemExit(f"unknown --variants {sorted(chosen - set(known))}; choose from {known}")
    return [name for name in known if name in chosen]


class FileBarrier:
    """Where packed processes meet before they time a variant: each touches <folder>/<key>.<rank> and waits until
    all `parties` have (they share nothing else, no process group)."""

    def __init__(self, folder: Path, parties: int, rank: int):
        self.folder, self.parties, self.rank = folder, parties, rank

    def arrive(self, key: str) -> None:
        (self.folder / f"{key}.{self.rank}").touch()

    def wait(self, key: str) -> None:
        self.arrive(key)
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while len(list(self.folder.glob(f"{key}.*"))) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"packed process {self.rank}: the others did not reach {key} within "
                                   f"{BARRIER_TIMEOUT_S:.0f} s")
            time.sleep(0.005)


def packed_time_steps(step, device: torch.device, warmup: int, steps: int, barrier: FileBarrier, key: str) -> dict:
    """`time_steps` in one of several packed processes: the warm-up, the barrier `key` (so that all time their steps
    together), the timed steps with their wall-clock span (`timed_from`, `timed_to`: the parent takes the span of all),
    and the barrier `key`_done, so that no process warms up its next variant while others still time this one."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    barrier.wait(key)
    timed_from = time.time()
    rec = time_steps(step, device, 0, steps)
    timed_to = time.time()
    barrier.wait(f"{key}_done")
    return dict(rec, warmup_s=warmup_s, timed_from=timed_from, timed_to=timed_to)


def run_variant(name: str, make, device: torch.device, tokens_per_step: int, flops_token: float, warmup: int,
                steps: int, profile_dir: Path | None = None, barrier: FileBarrier | None = None,
                key: str = "") -> dict:
    """Times one variant (`tokens_per_step` over all ranks); with `profile_dir`, also writes the profiler table of
    two of its steps there. With a `barrier` (packed processes), its timed steps start when every process has warmed
    up this variant (`key`), and the profiler is left out: it would see this process's kernels only."""
    say(f"== {name}")
    try:
        step, model = make()
        if barrier is None:
            rec = time_steps(step, device, warmup, steps)
        else:
            rec = packed_time_steps(step, device, warmup, steps, barrier, key)
        rec["params"] = sum(p.numel() for p in model.parameters())
        if barrier is None:
            try:
                rec.update(gpu_busy(step, device, calls=2))
                write_profile(profile_dir, name.replace(" ", "_"), step, device, calls=2)
            except Exception as e:  # the profiler failing, or seeing no kernel, costs the busy share, not the timing
                rec["gpu_busy_error"] = f"{type(e).__name__}: {e}"[:500]
        del step, model
    except Exception as e:  # a failing variant (compiler, out of memory) is recorded, the others still run
        rec = dict(error=f"{type(e).__name__}: {e}"[:2000])
        if barrier is not None:  # the other processes need not wait for this one
            barrier.arrive(key)
            barrier.arrive(f"{key}_done")
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
    chosen = chosen_variants(args.variants or ",".join(VARLIB_VARIANTS + AUTHORS_VARIANTS),
                             VARLIB_VARIANTS + AUTHORS_VARIANTS)
    results = []
    for name in VARLIB_VARIANTS:
        if name in chosen:
            cfg, chunk = variant_config(train_cfg, name)
            results.append(run_variant(name, lambda cfg=cfg, chunk=chunk: varlib_variant(
                var_cfg, tok_cfg, cfg, batch, device, chunk), **common))
    if args.authors_dir is not None and set(chosen) & set(AUTHORS_VARIANTS) and world == 1:
        models = import_authors_models(Path(args.authors_dir), device)
        for name in AUTHORS_VARIANTS:
            if name in chosen:
                results.append(run_variant(name, lambda compile="compile" in name: authors_variant(
                    models, var_cfg, tok_cfg, train_cfg, batch, device, compile), **common))
    return dict(config=dict(depth=depth, scales=scales, num_tokens=L, vocab_size=V, batch=batch, world=world,
                            flops_per_token=flops_token, peak_flops=PEAK_FLOPS), results=results)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def study_profile(args, barrier: FileBarrier | None = None) -> dict:
    """Steps/s of the study's own models: the profile's VARConfig at each of --depths with its batch and tokenizer
    (random weights and tokens: the cost depends on the shapes only), for each variant."""
    device = torch.device(args.device)
    prof = get_profile(args.study_profile)
    batch = args.batch or prof.train.batch_size
    train_cfg = dataclasses.replace(prof.train, batch_size=batch)
    L = prof.var.num_tokens
    names = chosen_variants(args.variants or ",".join(STUDY_VARIANTS), VARLIB_VARIANTS)
    rows = []
    for depth in args.depths or prof.scaling_depths:
        var_cfg = dataclasses.replace(prof.var, depth=depth)
        with torch.device("meta"):
            flops_token = build_model(var_cfg).flops_per_token()
        say(f"{args.study_profile} profile, d{depth}: {len(var_cfg.scales)} scales, L={L}, V={var_cfg.vocab_size}, "
            f"batch {batch}, {device}")
        profile_dir = Path(args.profile_dir) / f"d{depth}" if args.profile_dir and barrier is None else None
        for name in names:
            cfg, chunk = variant_config(train_cfg, name)
            rec = run_variant(name, lambda cfg=cfg, chunk=chunk, var_cfg=var_cfg: varlib_variant(
                var_cfg, prof.tokenizer, cfg, batch, device, chunk), device, batch * L, flops_token, args.warmup,
                args.steps, profile_dir, barrier, key=f"d{depth}-{slug(name)}")
            if "s_per_step" in rec:
                rec["steps_per_s"] = 1 / rec["s_per_step"]
            rows.append(dict(depth=depth, **rec))
    if barrier is None:
        say(study_table(rows))
    return dict(profile=args.study_profile, config=dict(batch=batch, scales=prof.var.scales, num_tokens=L,
                                                        vocab_size=prof.var.vocab_size, steps=args.steps,
                                                        warmup=args.warmup), rows=rows)


def study_table(rows: list[dict]) -> str:
    lines = [f"{'depth':>5}  {'variant':24s} {'steps/s':>8}  {'GPU busy':>8}  {'warm-up s':>9}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{'d' + str(r['depth']):>5}  {r['name']:24s} FAILED: {r['error'][:200]}")
            continue
        busy = f"{r['gpu_busy']:.0%}" if r.get("gpu_busy") is not None else "-"
        lines.append(f"{'d' + str(r['depth']):>5}  {r['name']:24s} {r['steps_per_s']:8.1f}  {busy:>8}  "
                     f"{r['warmup_s']:9.1f}")
    return "\n".join(lines)


def packed(args) -> dict:
    """--processes K: K processes of the --study-profile measurement at once on this device (K models trained
    together), each timing its steps after the file barrier; per variant, each one's steps/s, their sum, and all
    their steps over the span from the first process's start to the last one's end."""
    K = args.processes
    if K < 1:
        raise SystemExit(f"--processes {K}: give the number of processes to run at once, >= 1")
    with tempfile.TemporaryDirectory(prefix="bench_train_packed_") as tmp:
        folder, procs = Path(tmp), []
        for rank in range(K):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--study-profile", args.study_profile,
                   "--variants", args.variants or ",".join(STUDY_VARIANTS), "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--device", args.device, "--processes", str(K),
                   "--packed-rank", str(rank), "--packed-dir", tmp, "--out", str(folder / f"rank{rank}.json")]
            if args.depths:
                cmd += ["--depths", ",".join(map(str, args.depths))]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            with open(folder / f"rank{rank}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        for rank, proc in enumerate(procs):
            if proc.wait() != 0:
                tail = (folder / f"rank{rank}.log").read_text()[-3000:]
                raise SystemExit(f"packed process {rank} failed (exit {proc.returncode}):\n{tail}")
        children = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(K)]
    rows = []
    for i, first in enumerate(children[0]["rows"]):
        recs = [child["rows"][i] for child in children]
        row = dict(depth=first["depth"], name=first["name"], processes=K)
        errors = [r["error"] for r in recs if "error" in r]
        if errors:
            rows.append(dict(row, error=errors[0]))
            continue
        span = max(r["timed_to"] for r in recs) - min(r["timed_from"] for r in recs)
        each = [r["steps_per_s"] for r in recs]
        rows.append(dict(row, params=first["params"], steps_per_s_each=each, steps_per_s_sum=sum(each),
                         steps_per_s_span=K * args.steps / span))
    lines = [f"{'depth':>5}  {'variant':24s} {'K':>2}  {'sum steps/s':>11}  {'span steps/s':>12}  each"]
    for r in rows:
        if "error" in r:
            lines.append(f"{'d' + str(r['depth']):>5}  {r['name']:24s} {K:2d}  FAILED: {r['error'][:200]}")
        else:
            lines.append(f"{'d' + str(r['depth']):>5}  {r['name']:24s} {K:2d}  {r['steps_per_s_sum']:11.1f}  "
                         f"{r['steps_per_s_span']:12.1f}  {' '.join(f'{x:.1f}' for x in r['steps_per_s_each'])}")
    print("\n".join(lines), flush=True)
    return dict(profile=args.study_profile, config=dict(children[0]["config"], processes=K), rows=rows,
                processes=children)


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


def depth_list(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(d) for d in text.split(","))
    except ValueError:
        depths = ()
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of depths >= 1, e.g. 2,6,10")
    return depths


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
    parser.add_argument("--variants", help=f"comma-separated names of the variants to run (default: all; with "
                                           f"--study-profile: {','.join(STUDY_VARIANTS)})")
    parser.add_argument("--profile-dir", help="write a profiler table of each variant's step here")
    parser.add_argument("--quick", action="store_true", help="a tiny model, two timed steps (CPU smoke test)")
    parser.add_argument("--cpu-profile", help="instead: time the training of every depth of this profile on the CPU")
    parser.add_argument("--train-steps", type=int, help="--cpu-profile: project this many steps, one evaluation")
    parser.add_argument("--test-sequences", type=int, help="--cpu-profile: evaluate on this many test sequences")
    parser.add_argument("--study-profile", choices=sorted(PROFILES),
                        help="instead: steps/s of this profile's own models (its VARConfig, batch and tokenizer)")
    parser.add_argument("--depths", type=depth_list, help="--study-profile: e.g. 2,6,10 (default: the profile's "
                                                          "scaling depths)")
    parser.add_argument("--processes", type=int, help="--study-profile: run K processes of it at once on the device "
                                                      "(packed trainings) and sum their steps/s")
    parser.add_argument("--packed-rank", type=int, help=argparse.SUPPRESS)  # a process started by --processes
    parser.add_argument("--packed-dir", help=argparse.SUPPRESS)
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
    child = args.packed_rank is not None
    if args.scaling:
        out = scaling(args.scaling)
    elif args.study_profile and child:
        out = study_profile(args, FileBarrier(Path(args.packed_dir), args.processes, args.packed_rank))
    elif args.study_profile and args.processes is not None:
        out = packed(args)
    elif args.study_profile:
        out = study_profile(args)
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
    if args.out and rank == 0 and not child:  # a packed process's JSON goes into its parent's, with its provenance
        write_provenance(Path(args.out).parent, provenance("bench_train", vars(args), args.device, None,
                                                           time.perf_counter() - started, [Path(args.out).name]))
        print(f"wrote {args.out}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
