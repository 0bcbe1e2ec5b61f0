"""Devices and precision: which device a run uses, its autocast context, and waiting for it.

One home for the choices every loop makes the same way: `resolve_device("auto")` is CUDA when there is a GPU;
`autocast(device)` is bf16 on CUDA (no loss scaling needed) and full float32 elsewhere; `synchronize` makes host
timings count the device's queued work.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA when available, else the CPU) or a device name; a device that does not exist here is a
    ValueError naming it and the devices there are."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or count == 0:
            raise ValueError(f"device {device!r} does not exist here ({count} CUDA device(s)); use auto or cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: varlib runs on cpu or cuda")
    return dev


def autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16) -> contextlib.AbstractContextManager:
    """`dtype` autocast on CUDA (bf16 by default; None: none); full float32 on other devices."""
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that host clocks time it in full."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
