"""Two processes under torchrun (gloo, CPU) train exactly like one process on the combined batch: the transformer,
and the tokenizer (GAN on, codebook statistics and dead-code restarts over the global batch).

The tests launch this file with torchrun; each rank trains (`trained` or `trained_tokenizer`) and saves what it
trained. Dropout, drop-path and class dropout are off so that the only randomness is the (shared, seeded) choice of
batches.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from varlib.config import DataConfig, TokenizerConfig, TokenizerTrainConfig, TrainConfig, VARConfig
from varlib.data import load_split
from varlib.tokenizer import VQVAE
from varlib.tokenizer_train import train_tokenizer
from varlib.train import train_model

TOK = TokenizerConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False, vocab_size=32,
                      scales=(1, 2, 4, 8))
VAR_CFG = VARConfig(depth=1, vocab_size=32, scales=TOK.scales, cond_drop_rate=0.0, drop_path_rate=0.0)
ROOT = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(steps=2, batch_size=8, lr_scale=100.0, eval_every=1)
TOK_DATA = DataConfig(limit_train=64, limit_test=16)
TOK_TRAIN = TokenizerTrainConfig(steps=4, batch_size=8, lpips_weight=0.0, gan_start=0.25, restart_dead_codes_every=2)


def trained(out: Path | None = None) -> dict:
    """Train on fixed random tokens (the same on every rank); returns the parameters and the history."""
    gen = torch.Generator().manual_seed(0)
    tokens = [dict(idx=torch.randint(TOK.vocab_size, (n, TOK.num_tokens), generator=gen, dtype=torch.int16),
                   labels=torch.randint(VAR_CFG.num_classes, (n,), generator=gen)) for n in (32, 10)]
    torch.manual_seed(0)
    vae = VQVAE(TOK)
    model, history = train_model(VAR_CFG, TRAIN, vae, *tokens, "cpu", progress=False)
    return dict(params=model.state_dict(), history=history.drop(columns="wall_time_s").to_dict("list"))


def trained_tokenizer() -> dict:
    vae, history = train_tokenizer(load_split(TOK_DATA, "train").images_u8, TOK, TOK_TRAIN, "cpu", progress=False)
    return dict(params=vae.state_dict(), history=history.to_dict("list"))


def run_two_ranks(what: str, out: Path) -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                    what, str(out)], check=True, timeout=600, env=env)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def assert_same_params(rank0: dict, rank1: dict, single: dict, rtol: float, atol: float) -> None:
    for name, p0 in rank0["params"].items():
        assert torch.equal(p0, rank1["params"][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(p0, single["params"][name], rtol=rtol, atol=atol, msg=name)


def test_two_ranks_equal_one_process_on_the_combined_batch(tmp_path):
    rank0, rank1 = run_two_ranks("var", tmp_path)
    single = trained()
    assert_same_params(rank0, rank1, single, rtol=1e-5, atol=1e-6)
    assert rank0["history"]["step"] == [1, 2]
    for col in ("train_loss", "test_loss_all", "test_err_all", "test_loss_last"):
        assert rank0["history"][col] == pytest.approx(single["history"][col], rel=1e-5), col


def test_tokenizer_on_two_ranks_equals_one_process_on_the_combined_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path / "cache"))  # no snapshot of another run is resumed
    rank0, rank1 = run_two_ranks("tokenizer", tmp_path)
    single = trained_tokenizer()
    # Adam turns rounding-level gradients (conv biases just before a GroupNorm have almost none) into full steps, of
    # at most (1 - beta1) / sqrt(1 - beta2) = 1.6 lr with these betas: a parameter may drift by 2 x steps x lr; the
    # codebook and the usage EMA (hits counted over both ranks) may not
    assert_same_params(rank0, rank1, single, rtol=1e-4, atol=2 * TOK_TRAIN.steps * TOK_TRAIN.lr)
    for name in ("quantize.embedding.weight", "quantize.ema_vocab_hit_SV"):
        torch.testing.assert_close(rank0["params"][name], single["params"][name], rtol=1e-4, atol=1e-4, msg=name)
    assert sum(single["history"]["restarted"]) > 0, "the test should exercise dead-code restarts"
    for col in ("rec", "vq", "gan_g", "gan_d", "usage", "restarted"):
        assert rank0["history"][col] == pytest.approx(single["history"][col], rel=1e-4, nan_ok=True), col


def test_training_benchmark_under_torchrun_and_its_scaling_efficiency(tmp_path):
    bench = [str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--device", "cpu", "--authors-dir", "none",
             "--variants", "varlib eager"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    for world in (1, 2):
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] if world > 1 else []
        subprocess.run([sys.executable, *launch, *bench, "--out", str(tmp_path / f"world{world}" / "b.json")],
                       check=True, timeout=300, env=env, cwd=ROOT)
    runs = {w: json.loads((tmp_path / f"world{w}" / "b.json").read_text()) for w in (1, 2)}
    assert [runs[w]["config"]["world"] for w in (1, 2)] == [1, 2]
    out = tmp_path / "scaling" / "s.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--scaling",
                    *(str(tmp_path / f"world{w}" / "b.json") for w in (2, 1)), "--out", str(out)],
                   check=True, timeout=120, env=env, cwd=ROOT)
    rows = {r["world"]: r for r in json.loads(out.read_text())["rows"]}
    tokens_per_s = {w: runs[w]["results"][0]["tokens_per_s"] for w in (1, 2)}
    assert rows[1]["efficiency"] == pytest.approx(1.0)
    assert rows[2]["efficiency"] == pytest.approx(tokens_per_s[2] / (2 * tokens_per_s[1]))


if __name__ == "__main__":  # one rank under torchrun: what to train, where to save it
    result = trained() if sys.argv[1] == "var" else trained_tokenizer()
    torch.save(result, Path(sys.argv[2]) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
