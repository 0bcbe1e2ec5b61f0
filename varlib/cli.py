"""The command lines, through `Study`: `python -m varlib.tokenizer_train` and `python -m varlib.train`.

Both take the study's arguments (--profile, --dataset, --resolution, --seed, --device) and run unchanged under
`torchrun --nproc_per_node=N`; a bad argument (an unknown profile, a missing folder, a device that does not exist, a
negative seed) is an argparse usage error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch.distributed as dist

from .config import PROFILES
from .data import DataError
from .parallel import setup_distributed
from .report import provenance, write_provenance
from .study import Study

log = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 0")
    return value


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, or a folder of class folders")
    parser.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the profile's)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the transformers' training seed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def study_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Study:
    """The Study the arguments describe; what cannot be built is reported as a usage error."""
    try:
        return Study.create(args.profile, args.dataset, args.resolution, args.seed, args.device)
    except (ValueError, DataError) as e:
        parser.error(str(e))


def tokenizer_main(argv: list[str] | None = None) -> None:
    """Train (or load from the cache) the tokenizer of a profile; under torchrun each rank trains on its share of
    every global batch."""
    parser = argparse.ArgumentParser(prog="python -m varlib.tokenizer_train",
                                     description="Train (or load from the cache) the tokenizer of a profile.")
    add_study_arguments(parser)
    parser.add_argument("--steps", type=positive_int, help="training steps (default: the profile's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = study_from_arguments(parser, args)
    if args.steps:
        study = study.replace(tokenizer_train=dataclasses.replace(study.profile.tokenizer_train, steps=args.steps))
    rank, world, study.device = setup_distributed(study.device)
    study.tokenizer()
    if rank == 0:
        log.info("tokenizer ready: %s", study.tokenizer_key())
    if world > 1:
        dist.destroy_process_group()


def train_main(argv: list[str] | None = None) -> None:
    """Train (or load from the cache) one transformer; under torchrun with DistributedDataParallel."""
    parser = argparse.ArgumentParser(prog="python -m varlib.train",
                                     description="Train (or load from the cache) one VAR transformer.")
    add_study_arguments(parser)
    parser.add_argument("--depth", type=positive_int, help="transformer depth (default: the profile's)")
    parser.add_argument("--steps", type=positive_int, help="training steps (default: the profile's)")
    parser.add_argument("--history-out", help="also write the training history (one row per evaluation) as CSV here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = study_from_arguments(parser, args)
    if args.steps:
        study = study.replace(train=dataclasses.replace(study.profile.train, steps=args.steps))
    rank, world, study.device = setup_distributed(study.device)
    study.tokenizer()  # under torchrun: trained by all ranks
    if rank == 0:  # one process encodes the data; the others then read the cache
        for split in ("train", "test"):
            study.tokens(split)
    if world > 1:
        dist.barrier()
    model, history = study.transformer(study.var_config(args.depth))
    if rank == 0:
        log.info("final evaluation:\n%s", history.drop(columns=["test_loss_per_scale", "test_err_per_scale"])
                 .tail(1).to_string(index=False))
        if args.history_out:
            out = Path(args.history_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            history.to_csv(out, index=False)
            write_provenance(out.parent, provenance("varlib.train", {**vars(args), "processes": world},
                                                    study.device, study.seed, time.perf_counter() - started,
                                                    [out.name]))
    if world > 1:
        dist.destroy_process_group()
