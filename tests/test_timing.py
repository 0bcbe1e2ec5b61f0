"""varlib.timing: the union of kernel intervals, the CPU behaviour of the CUDA-only probes, best-of timing, MFU."""

import pytest
import torch

from varlib.timing import PEAK_FLOPS, best_time, busy_time, gpu_busy, host_syncs, measure, mfu, time_steps

CPU = torch.device("cpu")


def test_gpu_busy_time_is_the_union_of_kernel_intervals():
    # overlapping kernels count once; the idle 3..5 does not count; the window is first start to last end
    assert busy_time([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0)]) == (6.0, 4.0)
    assert busy_time([(0.0, 4.0), (1.0, 2.0)]) == (4.0, 4.0)
    assert busy_time([]) == (0.0, 0.0)


def test_cuda_only_probes_return_nothing_on_the_cpu_and_do_not_call():
    calls = []
    assert gpu_busy(lambda: calls.append(1), CPU, calls=2) == {}
    assert host_syncs(lambda: calls.append(1), CPU) == []
    assert calls == []


def test_best_time_warms_up_once_and_keeps_the_fastest():
    calls = []
    seconds = best_time(lambda: calls.append(1), CPU, repeats=4)
    assert len(calls) == 5 and 0 <= seconds < 0.1


def test_measure_records_an_out_of_memory_instead_of_raising():
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert measure(oom, CPU, repeats=1) == {"oom": True}
    row = measure(lambda: None, CPU, repeats=2)
    assert row["seconds"] >= 0 and row["peak_reserved_gb"] is None


def test_time_steps_runs_warmup_then_timed_steps():
    calls = []
    rec = time_steps(lambda: calls.append(1), CPU, warmup=2, steps=3)
    assert len(calls) == 5 and rec["s_per_step"] >= 0 and "peak_mem_gb" not in rec


def test_mfu_is_per_gpu_against_the_peak():
    assert mfu(1000.0, PEAK_FLOPS / 1000) == pytest.approx(1.0)
    assert mfu(2000.0, PEAK_FLOPS / 1000, world=2) == pytest.approx(1.0)
