"""The multi-scale VQVAE: shapes, Alg. 1/2 consistency, the authors' key names, and equality with the authors' code
on a stored fixture (tests/fixtures/tokenizer_compat.pt, written by scripts/make_tokenizer_fixture.py)."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_TOKENIZER, random_images, tiny_vae

from varlib.config import TokenizerConfig
from varlib.tokenizer import VQVAE, bicubic_upsample, cat_scales, phi_index, split_scales

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer_compat.pt"
TINY = TINY_TOKENIZER


@pytest.mark.parametrize("n, size", [(1, 8), (3, 8), (5, 16), (13, 16), (8, 8)])
def test_matmul_bicubic_equals_interpolate(n, size):
    """The fast path (two matmuls) against the reference F.interpolate, values and gradients, also under autocast
    (where both stay float32)."""
    torch.manual_seed(n)
    x_ref = torch.randn(2, 4, n, n, requires_grad=True)
    x_fast = x_ref.detach().clone().requires_grad_()
    weight = torch.randn(2, 4, size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.interpolate(x_ref, size=(size, size), mode="bicubic")
        fast = bicubic_upsample(x_fast, size)
    assert fast.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=2e-6, rtol=0)
    (ref * weight).sum().backward()
    (fast * weight).sum().backward()
    # a gradient sums up to size^2 terms, in a different order: float32 rounding of that sum
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-4, rtol=1e-5)


@torch.no_grad()
def test_token_shapes_and_ranges_per_scale():
    vae = tiny_vae()
    idx_Bl = vae.img_to_idxBl(random_images(TINY))
    assert [tuple(t.shape) for t in idx_Bl] == [(3, pn * pn) for pn in TINY.scales]
    assert all(t.dtype == torch.long and t.min() >= 0 and t.max() < TINY.vocab_size for t in idx_Bl)
    idx_BL = cat_scales(idx_Bl)
    assert idx_BL.shape == (3, TINY.num_tokens)
    assert all(torch.equal(a, b) for a, b in zip(split_scales(idx_BL, TINY.scales), idx_Bl, strict=True))
    with pytest.raises(ValueError, match="scales"):
        split_scales(idx_BL[:, :-1], TINY.scales)


@torch.no_grad()
def test_encode_decode_round_trip_matches_coarse_to_fine():
    vae = tiny_vae()
    x = random_images(TINY)
    idx_Bl = vae.img_to_idxBl(x)
    recs = vae.img_to_reconstructed_img(x)
    assert len(recs) == len(TINY.scales)
    for k in range(1, len(TINY.scales) + 1):  # decoding the first k token maps = the k-th coarse-to-fine image
        torch.testing.assert_close(vae.idxBl_to_img(idx_Bl[:k]), recs[k - 1], atol=1e-5, rtol=0)
    assert recs[-1].shape == x.shape and recs[-1].abs().max() <= 1


@pytest.mark.parametrize("scales", [(1, 2, 3, 4), (4,)])
@torch.no_grad()
def test_teacher_forcing_input_equals_the_samplers_incremental_update(scales):
    vae = tiny_vae(scales=scales)
    x = random_images(vae.cfg)
    codes = vae.quantize.residual_quantize(vae.img_to_f(x))
    var_input = vae.idxBl_to_var_input(codes.idx_Bl)
    K, C = len(scales), TINY.z_channels
    assert var_input.shape == (3, vae.cfg.num_tokens - scales[0] ** 2, C) and var_input.dtype == torch.float32
    # the sampler's loop, fed the ground-truth tokens, must see exactly the teacher-forcing inputs
    f_hat, inputs = torch.zeros_like(codes.f_hats[0]), []
    for si, pn in enumerate(scales):
        h_BChw = vae.quantize.embedding(codes.idx_Bl[si]).transpose(1, 2).reshape(3, C, pn, pn)
        f_hat, nxt = vae.quantize.get_next_autoregressive_input(si, K, f_hat, h_BChw)
        if si < K - 1:
            inputs.append(nxt.flatten(2).transpose(1, 2))
        torch.testing.assert_close(f_hat, codes.f_hats[si], atol=1e-6, rtol=0)  # and rebuild Alg. 1's f_hat_k
    assert torch.equal(torch.cat([var_input[:, :0], *inputs], dim=1), var_input)


def test_phi_selection_follows_the_authors_ticks():
    assert [phi_index(4, si / 9) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(3, si / 2) for si in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("share_phi, keys", [
    (0, {f"quantize.quant_resi.{k}.weight" for k in range(4)}),
    (1, {"quantize.quant_resi.qresi.weight"}),
    (2, {"quantize.quant_resi.qresi_ls.0.weight", "quantize.quant_resi.qresi_ls.1.weight"}),
])
def test_phi_sharing_variants_use_the_authors_key_names(share_phi, keys):
    state = tiny_vae(share_phi=share_phi).state_dict()
    assert {k for k in state if k.startswith("quantize.quant_resi") and k.endswith("weight")} == keys


def test_paper_config_has_the_authors_key_count_and_size():
    with torch.device("meta"):
        vae = VQVAE(TokenizerConfig.paper())
    state = vae.state_dict()
    assert len(state) == 324
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    assert state["quantize.ema_vocab_hit_SV"].shape == (10, 4096)
    assert state["encoder.down.4.attn.1.qkv.weight"].shape == (1920, 640, 1, 1)
    assert state["decoder.up.4.attn.2.proj_out.weight"].shape == (640, 640, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in state and "encoder.down.4.downsample.conv.weight" not in state


def test_usage_buffer_of_another_scale_count_is_replaced():
    vae = tiny_vae()
    state = tiny_vae(scales=(1, 2, 4)).state_dict()  # same weights' shapes, 3-scale usage buffer
    state["quantize.ema_vocab_hit_SV"] = torch.ones(3, TINY.vocab_size)
    vae.load_state_dict(state, strict=True)
    assert vae.quantize.ema_vocab_hit_SV.shape == (4, TINY.vocab_size)


def load_fixture_recipe():
    path = ROOT / "scripts" / "make_tokenizer_fixture.py"
    spec = importlib.util.spec_from_file_location("make_tokenizer_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def test_matches_the_authors_code_on_the_stored_fixture():
    fx = torch.load(FIXTURE, weights_only=True)
    c = fx["config"]
    cfg = dataclasses.replace(TokenizerConfig.paper(c["scales"]), ch=c["ch"], vocab_size=c["vocab_size"],
                              z_channels=c["z_channels"])
    vae = VQVAE(cfg).eval()
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert shapes == fx["shapes"]  # the authors' key set and shapes at reduced width
    vae.load_state_dict(load_fixture_recipe().seeded_state_dict(shapes, fx["seed"]), strict=True)

    idx_Bl = vae.img_to_idxBl(fx["x"])
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(idx_Bl, fx["idx_Bl"], strict=True))
    for ours, theirs in zip(vae.img_to_reconstructed_img(fx["x"]), fx["recs"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(vae.idxBl_to_img(fx["idx_Bl"]), fx["idx_rec"], atol=1e-4, rtol=0)
    torch.testing.assert_close(vae.idxBl_to_var_input(fx["idx_Bl"]), fx["var_input"], atol=1e-5, rtol=0)
    vae.train()
    rec, vq_loss, _ = vae(fx["x"])
    torch.testing.assert_close(rec, fx["train_rec"], atol=1e-4, rtol=0)
    torch.testing.assert_close(vq_loss, fx["vq_loss"], atol=1e-5, rtol=1e-5)


def test_vq_loss_trains_codebook_and_straight_through_reaches_encoder():
    vae = tiny_vae().train()
    rec, vq_loss, _ = vae(random_images(TINY))
    (rec.square().mean() + vq_loss).backward()
    assert vae.quantize.embedding.weight.grad.abs().sum() > 0
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vae.quantize.ema_vocab_hit_SV.sum() == 3 * TINY.num_tokens  # first record: the hit counts themselves


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="expects 16x16"):
        tiny_vae().img_to_idxBl(torch.zeros(1, 1, 32, 32))
