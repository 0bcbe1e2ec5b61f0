"""Write tests/fixtures/var_compat.pt: the authors' VAR transformer on fixed inputs, for varlib's compatibility test.

    .venv/bin/python scripts/make_var_fixture.py --authors-dir .authors/VAR [--full]

Three reduced models (depth 2, V=64, Cvae=32, 10 classes): at width 64 in 2 heads and scales (1, 2, 3, 4), one with
attention normalisation and per-block AdaLN (the released setting) and one without attention normalisation and with
shared AdaLN; and at width 32 the released setting over scales (1, 2, 4, 8), whose last scale (64 tokens) takes
varlib's split-attention path (`transformer.mask_plan`). Their weights are the authors' initialisation plus seeded
noise (so that no block is close to the identity and some attention temperatures exceed the log(100) clamp). The
fixture holds each state dict, the inputs and the authors' teacher-forcing logits with class dropout disabled; the
test loads the state dict into varlib's `VAR` with strict=True and compares logits, without the authors' code. The
authors' code is imported by `varlib.authors.import_authors_models`.

--full also checks the paper's d16 model (220 keys, 310.28M parameters): the same key set, shapes and buffers as
varlib's, and strict loading of the authors' state dict (nothing is stored).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

from varlib.authors import authors_var, import_authors_models
from varlib.config import VARConfig
from varlib.transformer import VAR, mask_plan

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "var_compat.pt"
REDUCED = dict(depth=2, head_dim=32, num_classes=10, vocab_size=64, z_channels=32, scales=(1, 2, 3, 4))
CASES = {  # appended cases keep the earlier ones bit-identical (seeds and draws are in this order)
    "anorm": dict(attn_l2_norm=True, shared_aln=False),
    "shared_aln": dict(attn_l2_norm=False, shared_aln=True),
    # the last scale has 8 x 8 = 64 tokens >= SPLIT_MIN_TOKENS: varlib's split-attention path (mask_plan groups)
    "split": dict(head_dim=16, scales=(1, 2, 4, 8), attn_l2_norm=True, shared_aln=False),
}
PAPER_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SEED = 0

log = logging.getLogger("make_var_fixture")


def perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Weights + seeded noise (sorted key order); attention temperatures spread over [log 1, log 400]."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        value = state[key]
        if key.endswith("scale_mul_1H11"):
            out[key] = torch.rand(value.shape, generator=g) * math.log(400)
        elif value.is_floating_point() and key not in ("attn_bias_for_masking",) and "zero_k_bias" not in key:
            out[key] = value + 0.1 * torch.randn(value.shape, generator=g) / math.sqrt(value.shape[-1])
        else:
            out[key] = value.clone()
    return out


def make_fixture(models) -> dict:
    g = torch.Generator().manual_seed(SEED)
    cases = {}
    for i, (name, overrides) in enumerate(CASES.items()):
        cfg = VARConfig(**{**REDUCED, **overrides})
        theirs = authors_var(models, cfg, cond_drop_rate=0.0)
        theirs.load_state_dict(perturbed(theirs.state_dict(), SEED + i), strict=True)
        theirs.eval()
        label_B = torch.tensor([0, 3, 9, 10])  # 10 = the null class
        x_BLCv = torch.randn(4, cfg.num_tokens - 1, cfg.z_channels, generator=g)
        with torch.no_grad():
            logits_BLV = theirs(label_B, x_BLCv)
        cases[name] = {"config": {**REDUCED, **overrides}, "state_dict": theirs.state_dict(), "label_B": label_B,
                       "x_BLCv_wo_first_l": x_BLCv, "logits_BLV": logits_BLV}
        log.info("%s: %d keys, logits %s, split groups %s", name, len(cases[name]["state_dict"]),
                 tuple(logits_BLV.shape), mask_plan([pn * pn for pn in cfg.scales])[2])
    return {"seed": SEED, "cases": cases}


def check_full(models) -> None:
    """d16 as released: same keys, shapes, buffers; strict load both ways; parameter count (authors' 310.28M)."""
    cfg = VARConfig(depth=16, num_classes=1000, vocab_size=4096, scales=PAPER_SCALES)
    ours = VAR(cfg)
    theirs = authors_var(models, cfg, cond_drop_rate=0.1)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    only_theirs, only_ours = sorted(set(theirs_sd) - set(ours_sd)), sorted(set(ours_sd) - set(theirs_sd))
    if only_theirs or only_ours:
        raise SystemExit(f"d16 key sets differ: only theirs {only_theirs}, only ours {only_ours}")
    bad = [k for k in ours_sd if ours_sd[k].shape != theirs_sd[k].shape or ours_sd[k].dtype != theirs_sd[k].dtype]
    if bad:
        raise SystemExit(f"d16 shapes/dtypes differ at {bad}")
    for k in ("lvl_1L", "attn_bias_for_masking", "blocks.0.attn.zero_k_bias"):
        if not torch.equal(ours_sd[k], theirs_sd[k]):
            raise SystemExit(f"d16 buffer {k} differs")
    ours.load_state_dict(theirs_sd, strict=True)
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"d16: {len(ours_sd)} keys, identical shapes and buffers, strict load ok; params ours "
          f"{ours.num_params() / 1e6:.2f}M, theirs {n_theirs / 1e6:.2f}M")
    if ours.num_params() != n_theirs:
        raise SystemExit("d16 parameter counts differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-dir", type=Path, required=True, help="a FoundationVision/VAR checkout")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--full", action="store_true", help="also compare the full d16 key set (nothing stored)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.manual_seed(SEED)
    models = import_authors_models(args.authors_dir)
    fixture = make_fixture(models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    if args.full:
        check_full(models)


if __name__ == "__main__":
    main()
