"""Two processes under torchrun (gloo, CPU) train exactly like one process on the combined batch.

The test launches this file with torchrun; each rank runs `train_rank` and saves what it trained. Dropout, drop-path
and class dropout are off so that the only randomness is the (shared, seeded) choice of batches.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from varlib.config import TokenizerConfig, TrainConfig, VARConfig
from varlib.tokenizer import VQVAE
from varlib.train import train_model

TOK = TokenizerConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False, vocab_size=32,
                      scales=(1, 2, 4, 8))
VAR_CFG = VARConfig(depth=1, vocab_size=32, scales=TOK.scales, cond_drop_rate=0.0, drop_path_rate=0.0)
TRAIN = TrainConfig(steps=2, batch_size=8, lr_scale=100.0, eval_every=1)


def trained(out: Path | None = None) -> dict:
    """Train on fixed random tokens (the same on every rank); returns the parameters and the history."""
    gen = torch.Generator().manual_seed(0)
    tokens = [dict(idx=torch.randint(TOK.vocab_size, (n, TOK.num_tokens), generator=gen, dtype=torch.int16),
                   labels=torch.randint(VAR_CFG.num_classes, (n,), generator=gen)) for n in (32, 10)]
    torch.manual_seed(0)
    vae = VQVAE(TOK)
    model, history = train_model(VAR_CFG, TRAIN, vae, *tokens, "cpu", progress=False)
    return dict(params=model.state_dict(), history=history.drop(columns="wall_time_s").to_dict("list"))


def test_two_ranks_equal_one_process_on_the_combined_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                    str(tmp_path)], check=True, timeout=600, env=env)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = trained()
    for name, p0 in rank0["params"].items():
        assert torch.equal(p0, rank1["params"][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(p0, single["params"][name], rtol=1e-5, atol=1e-6, msg=name)
    assert rank0["history"]["step"] == [1, 2]
    for col in ("train_loss", "test_loss_all", "test_err_all", "test_loss_last"):
        assert rank0["history"][col] == pytest.approx(single["history"][col], rel=1e-5), col


if __name__ == "__main__":  # one rank under torchrun
    result = trained()
    torch.save(result, Path(sys.argv[1]) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
