"""Write tests/fixtures/tokenizer_compat.pt: the authors' VQVAE run on one input, for varlib's compatibility test.

    .venv/bin/python scripts/make_tokenizer_fixture.py --authors-dir .authors/VAR [--full]

The authors' VQVAE is built at the paper's hyper-parameters (ch_mult (1,1,2,2,4), two ResNet blocks, attention,
4 partially shared phis, 16x downsampling) but at reduced width (ch=32, V=64, Cvae=32, scales (1,2,3,4), 64 px). Its
4.4M weights would not fit the fixture's size limit, so they are drawn from a seeded recipe (`seeded_state_dict`, over
the sorted key set) that the test repeats without the authors' code; the fixture stores the key set with shapes, the
input, the authors' tokens, their coarse-to-fine reconstructions, teacher-forcing input and training-pass VQ loss.

--full also checks the paper-width model (ch=160, V=4096, 10 scales): same key set and shapes as varlib's
`VQVAE(TokenizerConfig.paper())`, strict loading of the authors' state dict, parameter count.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

from varlib.authors import import_authors_models
from varlib.config import TokenizerConfig
from varlib.tokenizer import VQVAE

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer_compat.pt"
REDUCED = dict(ch=32, vocab_size=64, z_channels=32, scales=(1, 2, 3, 4))
SEED = 0

log = logging.getLogger("make_tokenizer_fixture")


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random weights of sane magnitude for a VQVAE key set: convs ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), norm
    scales ~ 1 + N(0, 0.1^2), codebook ~ N(0, 1), usage buffer zero; drawn in sorted key order from one generator."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=g)
        if key.endswith("ema_vocab_hit_SV"):
            out[key] = torch.zeros(shape)
        elif key.endswith("embedding.weight"):
            out[key] = noise
        elif len(shape) == 4:
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
        elif ".norm" in key and key.endswith(".weight"):
            out[key] = 1 + 0.1 * noise
        else:
            out[key] = 0.02 * noise
    return out


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def make_fixture(vqvae_mod) -> dict:
    theirs = vqvae_mod.VQVAE(vocab_size=REDUCED["vocab_size"], z_channels=REDUCED["z_channels"], ch=REDUCED["ch"],
                             v_patch_nums=REDUCED["scales"], test_mode=True)
    shapes = shapes_of(theirs.state_dict())
    theirs.load_state_dict(seeded_state_dict(shapes, SEED), strict=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(SEED + 1)) * 2 - 1
    with torch.no_grad():
        idx_Bl = theirs.img_to_idxBl(x)
        recs = theirs.img_to_reconstructed_img(x)
        var_input = theirs.quantize.idxBl_to_var_input(idx_Bl)
        idx_rec = theirs.idxBl_to_img(idx_Bl, same_shape=True, last_one=True)
    theirs.train()
    with torch.no_grad():
        train_rec, _, vq_loss = theirs(x)
    return {"config": REDUCED, "seed": SEED, "shapes": shapes, "x": x, "idx_Bl": idx_Bl, "recs": recs,
            "idx_rec": idx_rec, "var_input": var_input, "train_rec": train_rec, "vq_loss": vq_loss}


def check_full_width(vqvae_mod) -> None:
    theirs = vqvae_mod.VQVAE(vocab_size=4096, z_channels=32, ch=160, share_quant_resi=4, test_mode=True)
    ours = VQVAE(TokenizerConfig.paper())
    their_shapes, our_shapes = shapes_of(theirs.state_dict()), shapes_of(ours.state_dict())
    if their_shapes != our_shapes:
        raise SystemExit(f"key sets differ: only theirs {sorted(set(their_shapes) - set(our_shapes))}, only ours "
                         f"{sorted(set(our_shapes) - set(their_shapes))}, shapes differ "
                         f"{[k for k in their_shapes if k in our_shapes and their_shapes[k] != our_shapes[k]]}")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    n_params = sum(p.numel() for p in ours.parameters())
    parts = {name: sum(p.numel() for p in getattr(ours, name).parameters())
             for name in ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")}
    log.info("paper width: %d tensors, identical key set and shapes, strict load ok; %d parameters (%.2fM): %s",
             len(our_shapes), n_params, n_params / 1e6, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-dir", type=Path, required=True, help="checkout of FoundationVision/VAR")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--full", action="store_true", help="also check the paper-width model (not stored)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # their VQ loss in training mode asks torch.distributed for the world size
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    vqvae_mod = import_authors_models(args.authors_dir).vqvae
    fixture = make_fixture(vqvae_mod)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    log.info("wrote %s (%d bytes); tokens per scale: %s", args.out, args.out.stat().st_size,
             [t[0].tolist() for t in fixture["idx_Bl"]])
    if args.full:
        check_full_width(vqvae_mod)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
