"""Timing: wall clocks that count the device's queued work, the profiler's view of a call, and MFU.

`best_time` and `time_per_image` give the measured cost columns of the notebooks; `time_steps`, `measure`,
`gpu_busy`, `host_syncs`, `profile_table` and `mfu` are what the benchmarks in benchmarks/ record. Every clock is
read after `varlib.device.synchronize`, so GPU work is counted in full.

MFU (model FLOPs utilisation, as nanoGPT's `estimate_mfu`): tokens/s per GPU x the model's training FLOPs per token
(`_TokenTransformer.flops_per_token`) / the GPU's peak, 989 TFLOP/s (H100 SXM dense bf16).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .config import SampleConfig
from .device import autocast, synchronize
from .sampling import batch_generator, labels_on, sample_ar, sample_var
from .transformer import VAR, ARTransformer

PEAK_FLOPS = 989e12  # H100 SXM, dense bf16


def mfu(tokens_per_s: float, flops_per_token: float, world: int = 1, peak_flops: float = PEAK_FLOPS) -> float:
    """Model FLOPs utilisation per GPU of a run that trains `tokens_per_s` tokens per second on `world` GPUs."""
    return tokens_per_s / world * flops_per_token / peak_flops


# ----------------------------------------------------------------------------------------------- wall clocks

def best_time(fn, device: torch.device | str, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `fn` after one warm-up call (which also pays for compilation);
    the device is synchronised around each call, so GPU work is counted in full."""
    device = torch.device(device)
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_per_image(model: VAR | ARTransformer, vae, labels_B, sample_cfg: SampleConfig, repeats: int = 3,
                   decode: bool = True) -> float:
    """Wall time per image of one sampling call for the batch `labels_B` (labels to decoded images), best of
    `repeats`, under bf16 autocast on CUDA: the measured cost column of the ablation and speed notebooks."""
    labels_B = labels_on(model, labels_B)
    device = labels_B.device
    sample = sample_ar if isinstance(model, ARTransformer) else sample_var

    def run():
        with autocast(device):
            sample(model, vae, labels_B, sample_cfg, batch_generator(0, 0, device), decode=decode)

    return best_time(run, device, repeats) / len(labels_B)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds per step after `warmup` untimed steps (compilation happens there), and the peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    out = dict(s_per_step=(time.perf_counter() - t1) / steps, warmup_s=t1 - t0)
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def measure(fn, device: torch.device, repeats: int) -> dict:
    """{"seconds": `best_time`, "peak_reserved_gb": the allocator's peak (None on the CPU)} or {"oom": True}: an
    out-of-memory is recorded, not fatal."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds = best_time(fn, device, repeats)
        peak = torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None
        return {"seconds": seconds, "peak_reserved_gb": peak}
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- where the time goes

def host_syncs(fn, device: torch.device) -> list[str]:
    """Messages of the host-device synchronisations during one call of `fn` (CUDA only; an empty list elsewhere)."""
    if device.type != "cuda":
        return []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0] for w in caught]


def profile_table(fn, device: torch.device, calls: int = 1, rows: int = 30) -> str:
    """torch.profiler's table of the operators and kernels of `calls` calls of `fn`, by self device time (CUDA) or
    self CPU time: where the time of a step goes."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)


def write_profile(folder: Path | None, name: str, fn, device: torch.device, calls: int, rows: int = 30) -> None:
    """With a folder: `profile_table` of `calls` calls of `fn`, written to <folder>/<name>.txt; None: nothing."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(profile_table(fn, device, calls, rows))


def busy_time(intervals_us: list[tuple[float, float]]) -> tuple[float, float]:
    """(window, busy) of (start, end) intervals: the span from the first start to the last end, and the part of it
    covered by at least one interval."""
    busy, covered_to = 0.0, -float("inf")
    for start, end in sorted(intervals_us):
        busy += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    window = covered_to - min(start for start, _ in intervals_us) if intervals_us else 0.0
    return window, busy


def gpu_busy(fn, device: torch.device, calls: int = 1) -> dict:
    """How much of the span of its work the GPU spends running the kernels, copies and memsets of `calls` calls of
    `fn` (from the profiler's trace): a fraction near 1 means the time is in the kernels, not in waits on the host.
    CUDA only; an empty dict elsewhere."""
    if device.type != "cuda":
        return {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    window, busy = busy_time([(e["ts"], e["ts"] + e["dur"]) for e in events
                              if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")])
    return dict(gpu_window_ms=window / 1e3 / calls, gpu_busy_ms=busy / 1e3 / calls, gpu_busy=busy / window)
