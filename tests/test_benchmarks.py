"""The benchmarks' CPU smoke modes, each run as a script (never imported) against the installed package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varlib.config import TokenizerConfig, VARConfig
from varlib.timing import PEAK_FLOPS
from varlib.transformer import build_model

ROOT = Path(__file__).resolve().parents[1]
AUTHORS = ROOT / ".authors" / "VAR"


def run_script(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_bench_train_quick(tmp_path):
    out = tmp_path / "bench_train.json"
    run_script("benchmarks/bench_train.py", "--quick", "--device", "cpu", "--authors-dir", "none",
               "--variants", "varlib eager", "--out", str(out))
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["name"] == "varlib eager" and row["s_per_step"] > 0 and (tmp_path / "provenance.json").is_file()
    cfg = result["config"]
    z_channels = TokenizerConfig.paper(tuple(cfg["scales"])).z_channels
    var_cfg = VARConfig(depth=cfg["depth"], num_classes=10, vocab_size=cfg["vocab_size"], z_channels=z_channels,
                        scales=tuple(cfg["scales"]))
    with torch.device("meta"):
        assert cfg["flops_per_token"] == build_model(var_cfg).flops_per_token()  # MFU from the model's own count
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * cfg["flops_per_token"] / PEAK_FLOPS)


def test_bench_train_study_profile_and_packed_processes(tmp_path):
    """--study-profile times the profile's own models per depth and variant (the graph variant needs CUDA: on the CPU
    it is recorded as failed, with the reason); --processes 2 runs two of those measurements at once and sums them."""
    common = ["benchmarks/bench_train.py", "--study-profile", "smoke", "--depths", "1", "--warmup", "1", "--steps",
              "2", "--device", "cpu"]
    run_script(*common, "--variants", "varlib eager,varlib graph", "--out", str(tmp_path / "study.json"))
    study = json.loads((tmp_path / "study.json").read_text())
    eager, graph = study["rows"]
    assert (eager["depth"], eager["name"]) == (1, "varlib eager") and eager["steps_per_s"] > 0
    assert graph["name"] == "varlib graph" and "needs a CUDA device" in graph["error"]
    assert study["config"]["batch"] == 32 and (tmp_path / "provenance.json").is_file()

    run_script(*common, "--variants", "varlib eager", "--processes", "2", "--out", str(tmp_path / "packed.json"))
    packed = json.loads((tmp_path / "packed.json").read_text())
    (row,) = packed["rows"]
    assert row["processes"] == 2 and len(row["steps_per_s_each"]) == 2 and len(packed["processes"]) == 2
    assert row["steps_per_s_sum"] == pytest.approx(sum(row["steps_per_s_each"]))
    assert 0 < row["steps_per_s_span"] <= row["steps_per_s_sum"] * 1.01  # the span covers every process's steps


def test_bench_sampler_quick(tmp_path):
    """The quick run asks for --mode overlap, which needs CUDA: on the CPU it says so and runs eager."""
    out = tmp_path / "bench_sampler.json"
    extra = ["--authors-dir", str(AUTHORS)] if AUTHORS.is_dir() else []
    result = run_script("benchmarks/bench_sampler.py", "--quick", "--mode", "overlap", "--out", str(out), *extra)
    assert "img/s" in result.stdout and "--mode overlap needs CUDA" in result.stdout
    bench = json.loads(out.read_text())
    assert bench["mode"] == "eager"
    rows = {row["impl"]: row for row in bench["rows"]}
    assert rows["varlib"]["seconds"] > 0 and rows["varlib"]["transformer_and_sampling_s"] > 0
    assert bench["ar_compare"]["ar_over_var_time"] > 0
    if extra:
        assert rows["authors"]["seconds"] > 0 and bench["distribution"]["consistent"]


def test_bench_tokenizer_smoke(tmp_path):
    out = tmp_path / "bench_tokenizer.json"
    run_script("benchmarks/bench_tokenizer.py", "--profile", "smoke", "--steps", "1", "--warmup", "1",
               "--variants", "eager", "--device", "cpu", "--out", str(out))
    bench = json.loads(out.read_text())
    assert bench["profile"] == "smoke" and [(r["variant"], r["gan"]) for r in bench["rows"]] == [
        ("eager", False), ("eager", True)]
    assert all(r["s_per_step"] > 0 for r in bench["rows"])
