"""Tokenizer training throughput: seconds per `TokenizerStep` of a profile's tokenizer, eager and compiled.

    python benchmarks/bench_tokenizer.py --profile full --out bench_tokenizer.json       # one GPU
    python benchmarks/bench_tokenizer.py --profile smoke --steps 2 --out /tmp/bt.json    # CPU smoke run

Real Fashion-MNIST batches, the profile's batch size, bf16 autocast on CUDA; the step with and without the GAN
(discriminator on). Variants: eager and `compile` (encoder, decoder and discriminator through torch.compile), each in
NCHW and channels-last memory format. With --profile-steps, a torch.profiler table of the eager step (top operators by
device time, and host time against device time: a step whose host time exceeds its device time is launch-bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import time
from pathlib import Path

import torch

from varlib.classifier import PerceptualDistance, ResNetClassifier
from varlib.config import get_profile
from varlib.data import load_split, to_float
from varlib.report import provenance, write_provenance
from varlib.timing import profile_table, time_steps
from varlib.tokenizer import VQVAE
from varlib.tokenizer_train import PatchDiscriminator, TokenizerStep


def make_step(prof, compile: bool, channels_last: bool, device: torch.device):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    vae = VQVAE(prof.tokenizer).to(device, memory_format=fmt).train()
    disc = PatchDiscriminator(prof.tokenizer.in_channels).to(device, memory_format=fmt).train()
    # the profile's perceptual term on a random classifier of the study's architecture: the cost does not depend on
    # its weights
    perceptual = PerceptualDistance(ResNetClassifier(prof.tokenizer.in_channels, prof.var.num_classes))
    step = TokenizerStep(vae, disc, dataclasses.replace(prof.tokenizer_train, compile=compile), device,
                         perceptual=perceptual if prof.tokenizer_train.perceptual_term == "classifier" else None)
    images = load_split(prof.data, "train").images_u8[:prof.tokenizer_train.batch_size].to(device)
    x = to_float(images).contiguous(memory_format=fmt)
    return step, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile-steps", type=int, default=0)
    parser.add_argument("--variants", default="eager,eager+cl,compile,compile+cl")
    parser.add_argument("--out")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    prof = get_profile(args.profile)
    print(f"{args.profile} tokenizer {prof.tokenizer}, batch {prof.tokenizer_train.batch_size}, {device}")
    rows = []
    for name in args.variants.split(","):
        compile, channels_last = name.startswith("compile"), name.endswith("+cl")
        step, x = make_step(prof, compile, channels_last, device)
        for use_gan in (False, True):
            try:
                run = lambda step=step, x=x, use_gan=use_gan: step(x, use_gan)  # noqa: E731
                rec = time_steps(run, device, args.warmup, args.steps)
            except Exception as e:  # a failing variant (compiler, memory) is recorded; the others still run
                rec = dict(error=f"{type(e).__name__}: {e}"[:1000])
            rows.append(dict(variant=name, gan=use_gan, **rec))
            print(rows[-1], flush=True)
        if name == "eager" and args.profile_steps:
            print(profile_table(functools.partial(step, x, False), device, args.profile_steps, rows=20), flush=True)
        del step, x
        gc.collect()
        torch._dynamo.reset()
    out = dict(profile=args.profile, tokenizer=dataclasses.asdict(prof.tokenizer),
               batch=prof.tokenizer_train.batch_size, rows=rows,
               env=dict(torch=torch.__version__, gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        write_provenance(Path(args.out).parent, provenance("bench_tokenizer", vars(args), args.device, None,
                                                           time.perf_counter() - started, [Path(args.out).name]))


if __name__ == "__main__":
    main()
