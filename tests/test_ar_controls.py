"""The controlled AR-against-VAR comparison of the claims protocol: the AR over VAR's own multi-scale tokens (causal,
cached sampling equal to a full forward, its own cache key), the test NLL per image, parameter counts matched within
2%, training steps at equal FLOPs, and a sampling setting chosen on one sample set and reported on another."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import randomised

from varlib import study as study_module
from varlib.artifacts import jsonable, key_of
from varlib.config import MultiScaleARConfig, SampleConfig, TokenizerConfig, TrainConfig, VARConfig, get_profile
from varlib.sampling import (
    batch_generator,
    best_setting,
    guidance_ramp,
    sample_ar,
    sample_ar_reference,
    sample_many,
    sampling_grid,
)
from varlib.study import Study
from varlib.tokenizer import VQVAE, split_scales
from varlib.train import evaluate, train_model
from varlib.transformer import (
    VAR,
    ARTransformer,
    build_model,
    mask_groups,
    steps_for_flops,
    teacher_forcing_input,
    training_flops,
)

SCALES = (1, 2, 3, 4)  # L = 30
L = sum(pn * pn for pn in SCALES)
V, CV = 32, 8
TOK = TokenizerConfig(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False,
                      vocab_size=V, z_channels=CV, scales=SCALES)
CFG = VARConfig(depth=2, head_dim=16, num_classes=5, vocab_size=V, z_channels=CV, scales=SCALES)
SC = SampleConfig(cfg=1.5, top_k=12, top_p=0.9)
LABELS = torch.tensor([0, 1, 4, 5, 2])  # 5 = the null class


def next_token(cfg: VARConfig = CFG) -> MultiScaleARConfig:
    return MultiScaleARConfig(**dataclasses.asdict(cfg))


@pytest.fixture(scope="module")
def pair():
    """A randomised AR over VAR's tokens and an untrained tokenizer of the same scales."""
    torch.manual_seed(0)
    return randomised(build_model(next_token())), VQVAE(TOK).eval()


def random_tokens(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return split_scales(torch.randint(0, V, (n, L), generator=g), SCALES)


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- the model

def test_the_ar_over_var_tokens_is_causal_in_scale_then_raster_order(pair):
    """Token t's input is the code of token t - 1 of r_1..r_K concatenated; changing token t changes no logit at
    positions <= t and does change the next one."""
    model, vae = pair
    assert isinstance(model, ARTransformer) and model.L == L
    assert torch.equal(model.attn_bias_for_masking[0, 0] == 0, torch.ones(L, L, dtype=torch.bool).tril())
    assert torch.equal(model.lvl_1L[0], mask_groups([pn * pn for pn in SCALES]))  # VAR's level embeddings
    idx_Bl = random_tokens(2)
    idx_BL = torch.cat(idx_Bl, 1)
    x = teacher_forcing_input(vae, idx_Bl, next_token=True)
    torch.testing.assert_close(x, vae.quantize.embedding.weight[idx_BL[:, :-1]])
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        logits = model(labels, x)
        for t in (0, 4, 13, L - 2):  # inside and at the borders of scales
            changed = idx_BL.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            other = model(labels, teacher_forcing_input(vae, split_scales(changed, SCALES), next_token=True))
            assert torch.equal(other[:, :t + 1], logits[:, :t + 1]), f"a change to token {t} leaked to <= {t}"
            assert not torch.allclose(other[:, t + 1], logits[:, t + 1]), f"token {t + 1} does not see token {t}"


def test_it_has_vars_parameters_and_a_key_of_its_own():
    """Same parameter names and shapes as VAR (the controlled difference is the order, not the capacity); the
    config differs from VAR's only by its type tag, which is in the cache key."""
    var, ar = VAR(CFG), build_model(next_token())
    assert {k: v.shape for k, v in var.state_dict().items() if k != "attn_bias_for_masking"} == \
           {k: v.shape for k, v in ar.state_dict().items() if k != "attn_bias_for_masking"}
    assert var.flops_per_token() == ar.flops_per_token()
    a, b = jsonable(CFG), jsonable(next_token())
    assert a.pop("__type__") == "VARConfig" and b.pop("__type__") == "MultiScaleARConfig" and a == b
    assert key_of("var", CFG) != key_of("var", next_token())
    assert dataclasses.replace(next_token(), depth=3).__class__ is MultiScaleARConfig
    with pytest.raises(ValueError, match="MultiScaleARConfig"):
        VAR(next_token())
    with pytest.raises(ValueError, match="MultiScaleARConfig"):
        ARTransformer(CFG)
    with pytest.raises(ValueError, match="scales"):
        MultiScaleARConfig(scales=(8,))


# ----------------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("sc", [SC, SampleConfig(cfg=0.0), SampleConfig(cfg=2.0, cfg_schedule="constant", top_k=5)])
def test_cached_sampling_equals_the_full_forward_reference(pair, sc):
    model, vae = pair
    idx_a, img_a = sample_ar(model, vae, LABELS, sc, gen())
    idx_b, img_b = sample_ar_reference(model, vae, LABELS, sc, gen())
    assert [t.shape for t in idx_a] == [(len(LABELS), pn * pn) for pn in SCALES]
    assert all(torch.equal(a, b) for a, b in zip(idx_a, idx_b, strict=True))
    torch.testing.assert_close(img_a, img_b)
    torch.testing.assert_close(img_a, vae.fhat_to_img(vae.quantize.idxBl_to_fhat(idx_a)))  # decoded as VAR's tokens


def test_the_raster_ar_cached_sampling_equals_its_reference():
    torch.manual_seed(0)
    model = randomised(build_model(dataclasses.replace(CFG, scales=(4,))))
    vae = VQVAE(dataclasses.replace(TOK, scales=(4,))).eval()
    (a,), img_a = sample_ar(model, vae, LABELS, SC, gen())
    (b,), img_b = sample_ar_reference(model, vae, LABELS, SC, gen())
    assert a.shape == (len(LABELS), 16) and torch.equal(a, b)
    torch.testing.assert_close(img_a, img_b)


def test_guidance_ramps_over_the_scales_on_vars_tokens_and_over_tokens_in_raster_order():
    ramp, steps = guidance_ramp((1, 2, 3))
    assert steps == 3 and ramp == [0] + [1] * 4 + [2] * 9
    assert guidance_ramp((3,)) == (list(range(9)), 9)


def test_sample_many_dispatches_to_the_next_token_sampler(pair):
    model, vae = pair
    tokens, images = sample_many(model, vae, LABELS, SC, batch_size=2, seed=7)
    assert tokens.shape == (len(LABELS), L) and images.dtype == torch.uint8
    first, _ = sample_ar(model, vae, LABELS[:2], SC, batch_generator(7, 0, "cpu"))
    assert torch.equal(tokens[:2], torch.cat(first, 1))


# ----------------------------------------------------------------------------------------------- test NLL

@pytest.mark.parametrize("var", [False, True])
def test_nll_per_image_is_the_sum_over_the_sequence_of_the_token_cross_entropies(pair, var):
    """nll_per_image = mean over images of sum_t -log p(x_t | x_<t, class), in nats: L x loss_all, and a hand
    computation from the logits (VAR and the AR over its tokens predict the same L tokens)."""
    model, vae = pair
    if var:
        torch.manual_seed(0)
        model = randomised(VAR(CFG))
    N = 7
    idx_Bl = random_tokens(N, seed=3)
    labels = torch.arange(N) % CFG.num_classes
    tokens = {"idx": torch.cat(idx_Bl, 1).to(torch.int16), "labels": labels}
    out = evaluate(model, vae, tokens, "cpu", batch_size=3)
    assert out["nll_per_image"] == pytest.approx(L * out["loss_all"], rel=1e-12)
    with torch.no_grad():
        logits_NLV = model(labels, teacher_forcing_input(vae, idx_Bl, next_token=not var))
    logp_NL = F.log_softmax(logits_NLV.double(), -1).gather(-1, torch.cat(idx_Bl, 1).unsqueeze(-1)).squeeze(-1)
    assert out["nll_per_image"] == pytest.approx(float(-logp_NL.sum(1).mean()), rel=1e-5)
    assert out["nll_per_image"] > 10 * out["loss_all"]  # a sum over 30 tokens, not a mean


def test_train_model_trains_the_ar_over_var_tokens():
    """Unchanged `train_model` learns tokens that follow the class (loss falls), with `training_flops`' count."""
    torch.manual_seed(0)
    vae = VQVAE(TOK).eval()
    cfg = next_token(dataclasses.replace(CFG, depth=1))
    labels = torch.arange(96) % cfg.num_classes
    idx = ((labels[:, None] * 7 + torch.arange(L)[None]) % V).to(torch.int16)
    tokens = {"idx": idx, "labels": labels}
    train_cfg = TrainConfig(steps=30, batch_size=16, lr_scale=3000.0, eval_every=15)
    before = evaluate(build_model(cfg), vae, tokens, "cpu")
    model, history = train_model(cfg, train_cfg, vae, tokens, tokens, "cpu", progress=False)
    assert isinstance(model, ARTransformer) and model.L == L
    assert history.test_loss_all.iloc[-1] < 0.5 * before["loss_all"]
    assert history.flops_seen.iloc[-1] == training_flops(model, train_cfg.steps, train_cfg.batch_size)


# ----------------------------------------------------------------------------------------------- matching

def full_study(profile: str = "full") -> Study:
    return Study(get_profile(profile), "cpu", classes=tuple(str(i) for i in range(10)))


def test_the_three_controlled_models_match_in_parameters_at_the_full_profiles_d6():
    configs = full_study().controlled_configs(6)
    assert list(configs) == ["raster AR", "AR on VAR tokens", "VAR"]
    with torch.device("meta"):  # shapes only
        models = {name: build_model(cfg) for name, cfg in configs.items()}
    assert [type(m).__name__ for m in models.values()] == ["ARTransformer", "ARTransformer", "VAR"]
    assert [m.L for m in models.values()] == [64, 155, 155]
    counts = {name: m.num_params() for name, m in models.items()}
    C = configs["VAR"].width
    # positions and level embeddings: 155 - 64 more positions, 7 - 1 more levels
    assert counts["VAR"] == counts["AR on VAR tokens"] == counts["raster AR"] + (155 - 64 + 7 - 1) * C
    assert max(counts.values()) <= 1.02 * min(counts.values())
    assert all(cfg.depth == 6 for cfg in configs.values())
    assert full_study().tokenizer_for(configs["AR on VAR tokens"]) == full_study().profile.tokenizer


def test_a_mismatch_beyond_two_percent_is_refused_with_the_counts(monkeypatch):
    with pytest.raises(ValueError, match=r"depth 1 .*'raster AR': \d+"):
        full_study("quick").controlled_configs(1)  # 64 of 129k parameters are positions: 5% apart
    monkeypatch.setattr(study_module, "PARAM_MATCH", 0.001)
    with pytest.raises(ValueError, match="0%"):
        full_study().controlled_configs(6)


def test_steps_at_equal_training_flops():
    configs = full_study().controlled_configs(6)
    with torch.device("meta"):
        ar, ms, var = (build_model(cfg) for cfg in configs.values())
    assert training_flops(var, 2000, 512) == var.flops_per_token() * 155 * 512 * 2000
    budget = training_flops(var, 2000, 512)
    steps = steps_for_flops(ar, budget, 512)
    assert steps == round(2000 * var.flops_per_token() * 155 / (ar.flops_per_token() * 64))
    assert 2000 * 155 / 64 < steps < 2000 * 155 / 64 * 1.05  # 2.4x the tokens, a little cheaper per token
    assert abs(training_flops(ar, steps, 512) - budget) <= training_flops(ar, 1, 512) / 2
    assert steps_for_flops(ms, budget, 512) == 2000  # the same tokens and blocks: equal steps are equal FLOPs


# ----------------------------------------------------------------------------------------------- the grid

def test_the_grid_is_the_protocols():
    grid = sampling_grid(SampleConfig(top_p=0.9), 1024)
    assert [(s.cfg, s.top_k) for s in grid] == [(c, k) for c in (1.0, 1.5, 2.0, 3.0) for k in (0, 154)]
    assert all(s.top_p == 0.9 for s in grid)


def test_best_setting_chooses_on_one_set_and_reports_on_the_other():
    """Set A (stream 10, 5k) chooses, set B (stream 11, 10k) reports: a setting that is best on B only is not
    chosen, and the reported number is B's score of A's choice."""
    grid = sampling_grid(SampleConfig(), 1024)
    best_on_a, best_on_b = grid[5], grid[2]
    calls = []

    def score(setting, stream, n):
        calls.append((setting, stream, n))
        lowest = best_on_a if stream == 10 else best_on_b
        return {"FID": 1.0 if setting == lowest else 5.0 + grid.index(setting), "recall": float(stream)}

    choice = best_setting(score, grid, select=(10, 5000), report=(11, 10000))
    assert choice.setting == best_on_a
    assert choice.report == {"FID": 5.0 + 5, "recall": 11.0}
    assert [s for s, _ in choice.selection] == grid and choice.selection[5][1] == 1.0
    assert calls == [(s, 10, 5000) for s in grid] + [(best_on_a, 11, 10000)]
    with pytest.raises(ValueError, match="stream 3"):
        best_setting(score, grid, select=(3, 5000), report=(3, 10000))
