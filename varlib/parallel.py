"""Processes under torchrun: joining the process group and the few collectives the two trainers share.

Every trainer runs unchanged in one process (no process group: these helpers then do nothing) or in N processes
under `torchrun --nproc_per_node=N`, where each rank trains on its contiguous 1/N share of every global batch, so
that N ranks compute what one process computes on the combined batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on
    CUDA, gloo on CPU; each rank takes the GPU of its LOCAL_RANK."""
    world = world_size()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def share_of(batch_N: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous 1/world of a global batch (the batch must split evenly)."""
    if len(batch_N) % world:
        raise ValueError(f"the batch size {len(batch_N)} must be divisible by the {world} processes")
    n = len(batch_N) // world
    return batch_N[rank * n:(rank + 1) * n]


def data_parallel(module: nn.Module, device: torch.device, world: int, broadcast_buffers: bool = True) -> nn.Module:
    """`module` under DistributedDataParallel when there are several processes, else `module` itself."""
    if world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=broadcast_buffers)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over the ranks, in place (unchanged without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` averaged over the ranks, in place (unchanged without a process group)."""
    _, world = rank_and_world()
    return sum_over_ranks(x).div_(world) if world > 1 else x


def gather_batch(x_B: torch.Tensor) -> torch.Tensor:
    """The global batch: every rank's share of it concatenated in rank order (`x_B` itself without a process group).
    Shares must be equal in size."""
    _, world = rank_and_world()
    if world == 1:
        return x_B
    shares = [torch.empty_like(x_B) for _ in range(world)]
    dist.all_gather(shares, x_B.contiguous())
    return torch.cat(shares)
