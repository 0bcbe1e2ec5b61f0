"""VAR transformer and the raster AR baseline: masks, attention paths, KV cache, compatibility with the authors."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import randomised

from varlib.config import TokenizerConfig, VARConfig
from varlib.tokenizer import VQVAE
from varlib.transformer import (
    VAR,
    ARTransformer,
    AttnMask,
    KVCache,
    block_causal_bias,
    build_model,
    mask_groups,
    mask_plan,
    masked_sdpa,
    reference_attention,
    teacher_forcing_input,
)

FIXTURE = Path(__file__).parent / "fixtures" / "var_compat.pt"  # written by scripts/make_var_fixture.py
SCALES = (1, 2, 3, 4)
PAPER_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def tiny(scales=SCALES, **kw) -> VARConfig:
    return VARConfig(**{**dict(depth=2, head_dim=16, num_classes=5, vocab_size=32, z_channels=8, scales=scales), **kw})


def input_dependence(model, L_in_minus_first: int, z: int) -> torch.Tensor:
    """dep[i, j] = whether logits of token i depend on input j (input j feeds token first_l + j)."""
    x = torch.randn(1, L_in_minus_first, z, requires_grad=True)
    logits = model(torch.tensor([1]), x)
    dep = torch.zeros(logits.shape[1], L_in_minus_first, dtype=torch.bool)
    for i in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[0, i].sum(), x, retain_graph=True)
        dep[i] = grad[0].abs().sum(-1) > 0
    return dep


def test_var_mask_is_block_causal():
    model = randomised(VAR(tiny()))
    s = mask_groups([pn * pn for pn in SCALES])
    bias = model.attn_bias_for_masking[0, 0]
    assert torch.equal(bias == 0, s[:, None] >= s[None, :])
    dep = input_dependence(model, model.L - 1, 8)
    # input j is the input of token j + 1: token i may use it iff scale(j + 1) <= scale(i)
    allowed = s[:, None] >= s[None, 1:]
    assert torch.equal(dep, allowed), "a token sees a later scale, or misses one of its own/earlier scales"


def test_ar_mask_is_causal():
    model = randomised(ARTransformer(tiny(scales=(4,))))
    L = model.L
    assert torch.equal(model.attn_bias_for_masking[0, 0] == 0, torch.ones(L, L, dtype=torch.bool).tril())
    dep = input_dependence(model, L - 1, 8)
    assert torch.equal(dep, torch.ones(L, L - 1, dtype=torch.bool).tril(-1))


SPLIT_SCALES = (1, 2, 8, 9)  # the last two scales (64 and 81 tokens) get their own unmasked attention calls


@pytest.mark.parametrize("kw", [dict(), dict(attn_l2_norm=False), dict(adaln=False), dict(shared_aln=True),
                                dict(scales=SPLIT_SCALES), dict(scales=(5,))])
def test_sdpa_equals_reference_attention(kw):
    fast = randomised(build_model(tiny(**kw), sdpa=True))
    slow = build_model(tiny(**kw), sdpa=False).eval()
    slow.load_state_dict(fast.state_dict(), strict=True)
    label_B, x = torch.tensor([0, 4, 5]), torch.randn(3, fast.L - 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(label_B, x), slow(label_B, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(label_B, x[:, :70]), slow(label_B, x[:, :70]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", [[pn * pn for pn in SPLIT_SCALES], [64, 81], [1] * 20])
def test_masked_sdpa_equals_the_dense_mask_with_gradients(sizes):
    """The fused path (dense prefix + one unmasked call per large scale, or flash's causal mask) computes the same
    attention and the same gradients as softmax with the additive bias, also over a prefix."""
    bias = block_causal_bias(mask_groups(sizes))
    mask = AttnMask(bias, *mask_plan(sizes))
    assert mask.causal == (len(sizes) == 20) and (mask.causal or len(mask.groups) == 2)
    for length in (sum(sizes), sum(sizes) - 3, 5):
        q, k, v = (torch.randn(2, 3, length, 8, requires_grad=True) for _ in range(3))
        fast = masked_sdpa(q, k, v, mask.prefix(length), scale=0.3)
        grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
        ref = reference_attention(q, k, v, bias[:, :, :length, :length], scale=0.3)
        grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_fast, grads_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["var", "ar"])
def test_cached_steps_equal_full_masked_forward(kind):
    """Step-by-step logits with the KV cache == one masked forward over the same inputs (per scale / per token)."""
    cfg = tiny() if kind == "var" else tiny(scales=(3,))
    model = randomised(build_model(cfg))
    steps = model.begin_ends if kind == "var" else [(t, t + 1) for t in range(model.L)]
    label_B, x = torch.tensor([2, 5]), torch.randn(2, model.L - 1, 8)
    with torch.no_grad():
        full = model(label_B, x)
        cond_BD = model.class_emb(label_B)
        caches = model.new_caches(steps[-1][1] - steps[-1][0])
        for begin, end in steps:
            x_BlC = model.start_tokens(cond_BD) if begin == 0 else model.embed_inputs(x[:, begin - 1:end - 1], begin)
            step = model.step(x_BlC, cond_BD, caches)
            torch.testing.assert_close(step, full[:, begin:end], rtol=1e-5, atol=1e-5)
    assert caches[0].k_BHLc.shape[2] == model.L - (steps[-1][1] - steps[-1][0]), "the last step must not be stored"


def test_kv_cache_refuses_overflow_before_the_final_step():
    cache = KVCache(capacity=4)
    kv = torch.zeros(1, 2, 3, 4)
    cache.update(kv, kv)
    with pytest.raises(RuntimeError, match="capacity"):
        cache.update(kv, kv)


def test_class_dropout_uses_the_null_class_in_training_only():
    cfg = tiny(cond_drop_rate=1.0, drop_path_rate=0.0)
    model = randomised(VAR(cfg))
    x = torch.randn(2, model.L - 1, 8)
    with torch.no_grad():
        null = model(torch.tensor([5, 5]), x)
        assert not torch.allclose(model(torch.tensor([1, 2]), x), null)
        model.train()
        torch.testing.assert_close(model(torch.tensor([1, 2]), x), null)


def test_without_adaln_the_class_enters_only_as_start_token():
    model = randomised(VAR(tiny(adaln=False)))
    names = set(model.state_dict())
    assert not any("ada_lin" in k for k in names) and "blocks.0.norm1.weight" in names
    x = torch.randn(2, model.L - 1, 8)
    with torch.no_grad():
        a, b = model(torch.tensor([0, 0]), x), model(torch.tensor([0, 3]), x)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_init_follows_the_authors_constants():
    model = VAR(VARConfig(depth=4, num_classes=10, vocab_size=64, scales=SCALES))
    C = model.C
    std = (1 / (3 * C)) ** 0.5
    block = model.blocks[0]
    assert block.ada_lin[-1].weight[:2 * C].std().item() == pytest.approx(1e-5 * std, rel=0.1)  # gammas
    assert block.ada_lin[-1].weight[2 * C:].std().item() == pytest.approx(0.5 * std, rel=0.1)  # scales/shifts
    assert model.head.weight.std().item() == pytest.approx(0.02 * std, rel=0.1)
    assert block.attn.proj.weight.std().item() == pytest.approx(std / (2 * 4) ** 0.5, rel=0.1)
    assert torch.allclose(block.attn.scale_mul_1H11.exp(), torch.tensor(4.0))
    rates = [b.drop_path_p for b in model.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1 * 4 / 24)


def test_paper_d16_key_set_and_size():
    with torch.device("meta"):
        model = VAR(VARConfig(depth=16, num_classes=1000, vocab_size=4096, scales=PAPER_SCALES))
    sd = model.state_dict()
    assert len(sd) == 220
    assert model.num_params() == 310_283_520  # the authors' 310.28M
    expected = {"word_embed.weight": (1024, 32), "class_emb.weight": (1001, 1024), "pos_start": (1, 1, 1024),
                "pos_1LC": (1, 680, 1024), "lvl_embed.weight": (10, 1024), "lvl_1L": (1, 680),
                "attn_bias_for_masking": (1, 1, 680, 680), "blocks.15.attn.mat_qkv.weight": (3072, 1024),
                "blocks.0.attn.zero_k_bias": (1024,), "blocks.0.attn.scale_mul_1H11": (1, 16, 1, 1),
                "blocks.0.ada_lin.1.weight": (6144, 1024), "head_nm.ada_lin.1.weight": (2048, 1024),
                "head.weight": (4096, 1024)}
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # REFERENCE.md section 8: 134k tokens/s at 18.5% MFU of 989 TFLOP/s for d16 -> ~1.365 GFLOP per token
    assert model.flops_per_token() == pytest.approx(0.185 * 989e12 / 134e3, rel=0.01)


@pytest.mark.parametrize("case, split", [("anorm", False), ("shared_aln", False), ("split", True)])
def test_authors_logits_fixture(case, split):
    """Strict load of the authors' state dict, equal teacher-forcing logits (both attention paths); the "split" case
    ends in a scale of 64 tokens, which varlib's fused path attends in its own unmasked call."""
    fixture = torch.load(FIXTURE, weights_only=True)["cases"][case]
    cfg = VARConfig(**fixture["config"])
    causal, dense, groups = mask_plan([pn * pn for pn in cfg.scales])
    assert not causal and bool(groups) == split
    if split:
        assert groups == ((cfg.num_tokens - cfg.scales[-1] ** 2, cfg.num_tokens),) and dense < cfg.num_tokens
    for sdpa in (True, False):
        model = VAR(cfg, sdpa=sdpa)
        model.load_state_dict(fixture["state_dict"], strict=True)
        with torch.no_grad():
            logits = model.eval()(fixture["label_B"], fixture["x_BLCv_wo_first_l"])
        # float32 rounding is ~1e-7 here; attending the 64-token scale to itself alone would be off by ~1e-3
        torch.testing.assert_close(logits, fixture["logits_BLV"], rtol=1e-5, atol=1e-5)


TOK = dict(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False,
           vocab_size=32, z_channels=8)


@torch.no_grad()
def test_teacher_forcing_input_is_the_downsampled_prefix_f_hat():
    """Scale k's input is f_hat of the scales < k (Alg. 2 on that prefix alone) area-resized to h_k x w_k, flattened
    row-major: a token never sees its own scale's codes, and the scales line up with the transformer's positions."""
    scales = (1, 2, 3, 4)
    vae = randomised(VQVAE(TokenizerConfig(**TOK, scales=scales)))
    g = torch.Generator().manual_seed(0)
    idx_Bl = [torch.randint(0, 32, (2, pn * pn), generator=g) for pn in scales]
    tf = teacher_forcing_input(vae, idx_Bl)
    assert tf.shape == (2, sum(pn * pn for pn in scales) - 1, 8) and tf.dtype == torch.float32
    begin = 0
    for k in range(1, len(scales)):
        pn = scales[k]
        f_hat = vae.quantize.idxBl_to_fhat(idx_Bl[:k])
        expected = F.interpolate(f_hat, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
        torch.testing.assert_close(tf[:, begin:begin + pn * pn], expected, rtol=1e-5, atol=1e-6)
        begin += pn * pn
    changed = [idx.clone() for idx in idx_Bl]
    changed[-1] = (changed[-1] + 1) % 32
    assert torch.equal(teacher_forcing_input(vae, changed), tf), "the last scale's codes must feed no input"


@torch.no_grad()
def test_teacher_forcing_input_of_the_raster_baseline_is_the_right_shifted_embedding():
    vae = randomised(VQVAE(TokenizerConfig(**TOK, scales=(4,))))
    idx_BL = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    tf = teacher_forcing_input(vae, [idx_BL])
    assert tf.shape == (2, 15, 8)
    E = vae.quantize.embedding.weight
    for t in range(15):  # input t (which predicts token t + 1) is the embedding of token t
        torch.testing.assert_close(tf[:, t], E[idx_BL[:, t]])
    model = build_model(tiny(scales=(4,)))
    assert isinstance(model, ARTransformer) and model(torch.tensor([0, 1]), tf).shape == (2, 16, 32)


def test_bad_configs_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="ARTransformer"):
        VAR(tiny(scales=(4,)))
    with pytest.raises(ValueError, match="scales"):
        ARTransformer(tiny())
    model = VAR(tiny())
    with pytest.raises(ValueError, match="x_BLCv_wo_first_l"):
        model(torch.tensor([0]), torch.randn(1, model.L, 8))
