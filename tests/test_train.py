"""Transformer training on cached tokens: loss goes down (VAR and the AR baseline), resume equals an uninterrupted run,
evaluation metrics mean what they say, the token cache is hit. Tokens come from a tiny real tokenizer trained for 20
steps on 256 Fashion-MNIST images."""

import dataclasses
import json
import logging

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from varlib import train
from varlib.artifacts import TrainState
from varlib.cli import train_main
from varlib.config import DataConfig, TokenizerConfig, TokenizerTrainConfig, TrainConfig, VARConfig, get_profile
from varlib.data import load_split
from varlib.study import Study
from varlib.tokenizer import VQVAE, frozen, split_scales
from varlib.transformer import build_model, teacher_forcing_input

DATA = DataConfig(limit_train=256, limit_test=128)
TOK = TokenizerConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False, vocab_size=32,
                      scales=(1, 2, 4, 8))
TOK_TRAIN = TokenizerTrainConfig(steps=20, batch_size=32, gan_weight=0.0, restart_dead_codes_every=10)
VAR_CFG = VARConfig(depth=1, vocab_size=TOK.vocab_size, z_channels=TOK.z_channels, scales=TOK.scales)
TRAIN = TrainConfig(steps=24, batch_size=32, lr_scale=100.0, eval_every=8)


def tiny_study() -> Study:
    prof = dataclasses.replace(get_profile("smoke"), data=DATA, tokenizer=TOK, tokenizer_train=TOK_TRAIN,
                               var=VAR_CFG, train=TRAIN)
    return Study(prof, "cpu", progress=False)


@pytest.fixture(scope="module")
def tokens():
    study = tiny_study()
    return study.tokenizer(), study.tokens("train"), study.tokens("test")


def test_token_cache_is_built_once_and_hit(tokens, caplog):
    vae, tokens_train, _ = tokens
    assert tokens_train["idx"].shape == (DATA.limit_train, TOK.num_tokens)
    assert tokens_train["idx"].dtype == torch.int16
    assert int(tokens_train["idx"].min()) >= 0 and int(tokens_train["idx"].max()) < TOK.vocab_size
    assert torch.equal(tokens_train["labels"], load_split(DATA, "train").labels)
    with caplog.at_level(logging.INFO, logger="varlib.artifacts"):
        again = tiny_study().tokens("train")
    assert any("cache hit" in r.message and "/tokens/" in r.message for r in caplog.records)
    assert torch.equal(again["idx"], tokens_train["idx"])
    # the cache holds what the frozen tokenizer gives for these images
    images = load_split(DATA, "train").float_images(slice(0, 16))
    assert torch.equal(torch.cat(vae.img_to_idxBl(images), 1), tokens_train["idx"][:16].long())


def test_var_training_lowers_the_loss(tokens):
    vae, tokens_train, tokens_test = tokens
    torch.manual_seed(TRAIN.seed)
    before = train.evaluate(build_model(VAR_CFG), vae, tokens_test, "cpu")
    model, history = train.train_model(VAR_CFG, TRAIN, vae, tokens_train, tokens_test, "cpu", progress=False)
    assert list(history["step"]) == [8, 16, 24]
    assert history["test_loss_all"].iloc[-1] < before["loss_all"] - 0.3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert not model.training
    assert list(history["tokens_seen"]) == [s * TRAIN.batch_size * TOK.num_tokens for s in history["step"]]
    assert history["flops_seen"].iloc[-1] == model.flops_per_token() * history["tokens_seen"].iloc[-1]
    assert (history["wall_time_s"].diff().dropna() > 0).all()


def test_ar_baseline_training_lowers_the_loss(tokens):
    """The raster AR baseline on the last scale's 8x8 token map (one scale: causal mask, codebook-embedding inputs),
    read through a one-scale view of the same tokenizer (same codebook)."""
    multi_scale, tokens_train, tokens_test = tokens
    vae = VQVAE(dataclasses.replace(TOK, scales=(TOK.scales[-1],)))
    vae.load_state_dict(multi_scale.state_dict())
    last = TOK.scales[-1] ** 2
    ar_train, ar_test = ({**t, "idx": t["idx"][:, -last:]} for t in (tokens_train, tokens_test))
    ar_cfg = dataclasses.replace(VAR_CFG, scales=(TOK.scales[-1],))
    torch.manual_seed(TRAIN.seed)
    before = train.evaluate(build_model(ar_cfg), vae, ar_test, "cpu")
    _, history = train.train_model(ar_cfg, TRAIN, vae, ar_train, ar_test, "cpu", progress=False)
    assert history["test_loss_all"].iloc[-1] < before["loss_all"] - 0.3
    assert history["test_loss_last"].iloc[-1] == history["test_loss_all"].iloc[-1]  # one scale: last = all


class Interrupted(Exception):
    pass


def test_resume_ends_where_an_uninterrupted_run_ends(tokens, monkeypatch):
    vae, tokens_train, tokens_test = tokens
    cfg = dataclasses.replace(TRAIN, steps=6, batch_size=16, eval_every=2)
    reference, ref_history = train.train_model(VAR_CFG, cfg, vae, tokens_train, tokens_test, "cpu", progress=False)

    state = TrainState("var", {"test": "resume"})
    real_evaluate, calls = train.evaluate, []

    def evaluate_then_crash(*args, **kwargs):  # the run dies in its second evaluation, after the step-2 snapshot
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate_then_crash)
    with pytest.raises(Interrupted):
        train.train_model(VAR_CFG, cfg, vae, tokens_train, tokens_test, "cpu", progress=False, resume=state)
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    assert state.load()["step"] == 2

    resumed, history = train.train_model(VAR_CFG, cfg, vae, tokens_train, tokens_test, "cpu", progress=False,
                                         resume=state)
    for (name, p_ref), p in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p_ref, p), name
    cols = ["step", "train_loss", "test_loss_all", "test_err_last"]
    assert history[cols].equals(ref_history[cols])


def test_evaluate_measures_the_last_scale_on_its_own_tokens(tokens):
    vae, _, tokens_test = tokens
    cfg = dataclasses.replace(VAR_CFG, cond_drop_rate=0.5)  # eval mode must not drop classes
    torch.manual_seed(0)
    model = build_model(cfg)
    out = train.evaluate(model, vae, tokens_test, "cpu", batch_size=50)
    assert out == train.evaluate(model, vae, tokens_test, "cpu", batch_size=128)
    assert all(0 <= e <= 1 for e in [out["err_all"], out["err_last"], *out["err_per_scale"]])
    assert len(out["loss_per_scale"]) == len(TOK.scales) and out["loss_last"] == out["loss_per_scale"][-1]

    idx_BL = tokens_test["idx"].long()
    with torch.no_grad():
        logits_BLV = model.eval()(tokens_test["labels"], teacher_forcing_input(vae, split_scales(idx_BL, TOK.scales)))
    last = TOK.scales[-1] ** 2
    V = TOK.vocab_size
    ce_last = F.cross_entropy(logits_BLV[:, -last:].reshape(-1, V), idx_BL[:, -last:].reshape(-1))
    err_last = (logits_BLV[:, -last:].argmax(-1) != idx_BL[:, -last:]).float().mean()
    assert out["loss_last"] == pytest.approx(float(ce_last), rel=1e-5)
    assert out["err_last"] == pytest.approx(float(err_last), abs=1e-6)
    ce_all = F.cross_entropy(logits_BLV.reshape(-1, V), idx_BL.reshape(-1))
    assert out["loss_all"] == pytest.approx(float(ce_all), rel=1e-5)


def test_chunked_head_and_cross_entropy_match_the_plain_path(tokens):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(VAR_CFG, cond_drop_rate=0.0)).eval()
    plain, chunked = (loss_and_grads(tokens, model, train.TokenLoss(model, label_smoothing=0.1, chunk=chunk))
                      for chunk in (0, 16))
    assert_same(plain, chunked)


def loss_and_grads(tokens, model, net):
    """Per-token cross-entropy, predictions and parameter gradients of `net` (a TokenLoss over `model`) on 8 fixed
    training sequences."""
    vae, tokens_train, _ = tokens
    idx_BL, label_B = tokens_train["idx"][:8].long(), tokens_train["labels"][:8]
    x_BLCv = teacher_forcing_input(vae, split_scales(idx_BL, TOK.scales))
    model.zero_grad()
    ce_BL, pred_BL = net(label_B, x_BLCv, idx_BL)
    ce_BL.mean().backward()
    return ce_BL.detach(), pred_BL, [p.grad.clone() for p in model.parameters()]


def assert_same(a, b, **tolerance):
    (ce_a, pred_a, grads_a), (ce_b, pred_b, grads_b) = a, b
    torch.testing.assert_close(ce_a, ce_b, **tolerance)
    assert torch.equal(pred_a, pred_b)
    for g_a, g_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(g_a, g_b, **tolerance)


def test_lr_schedule_is_the_authors_lin0_shape():
    steps, warm, final = 1000, 0.02, 0.01
    lrs = [train.lr_factor(s, steps, warm, final) for s in range(steps)]
    assert lrs[0] == pytest.approx(0.005)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21], strict=True))  # warm-up rises to the peak
    assert max(lrs) == 1.0 and lrs[20] == 1.0 and lrs[60] == 1.0  # ... stays there for 5% of the rest
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
    assert lrs[-1] == pytest.approx(final)


def test_weight_decay_only_on_matrices():
    model = build_model(VARConfig(depth=2, vocab_size=32, scales=(1, 2, 4)))
    decay, no_decay = train.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    for n in ["pos_start", "pos_1LC", "lvl_embed.weight", "blocks.0.attn.scale_mul_1H11", "blocks.0.attn.q_bias",
              "head.bias", "blocks.1.ffn.fc1.bias"]:
        assert n not in decayed, n
    for n in ["class_emb.weight", "word_embed.weight", "blocks.0.attn.mat_qkv.weight", "blocks.0.ffn.fc2.weight",
              "blocks.0.ada_lin.1.weight", "head.weight"]:
        assert n in decayed, n
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_per_scale_weighting_gives_every_scale_the_same_total_weight():
    scales = (1, 2, 4)
    uniform, per_scale = (train.loss_weights(scales, m, "cpu") for m in ("uniform", "per_scale"))
    assert uniform.sum() == pytest.approx(1.0) and per_scale.sum() == pytest.approx(1.0)
    assert torch.allclose(uniform, torch.full((21,), 1 / 21))
    assert [float(w.sum()) for w in per_scale.split([1, 4, 16])] == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="scale_weighting"):
        train.loss_weights(scales, "linear", "cpu")


def test_a_trained_transformer_is_cached(tokens, caplog):
    cfg = dataclasses.replace(TRAIN, steps=4, eval_every=4)
    model, history = tiny_study().transformer(VAR_CFG, cfg)
    with caplog.at_level(logging.INFO, logger="varlib.artifacts"):
        again, history_again = tiny_study().transformer(VAR_CFG, cfg)
    assert any("cache hit" in r.message and "/var/" in r.message for r in caplog.records)
    assert history.equals(history_again)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_compiled_step_equals_the_eager_step_and_shares_its_artifact(tokens):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(VAR_CFG, cond_drop_rate=0.0)).eval()
    eager, compiled = (loss_and_grads(tokens, model, net) for net in (train.TokenLoss(model),
                                                                       torch.compile(train.TokenLoss(model))))
    assert_same(eager, compiled, rtol=1e-3, atol=1e-5)
    # so a model trained either way is one artifact
    keys = [tiny_study().transformer_key(VAR_CFG, dataclasses.replace(TRAIN, compile=c)) for c in (False, True)]
    assert keys[0] == keys[1]


def test_command_line_trains_a_transformer_and_writes_its_history(tmp_path):
    out = tmp_path / "curves" / "history.csv"
    train_main(["--profile", "smoke", "--depth", "1", "--device", "cpu", "--seed", "0", "--history-out", str(out)])
    history = pd.read_csv(out)
    smoke = get_profile("smoke").train
    assert history.step.iloc[-1] == smoke.steps and history.test_loss_all.notna().all()
    prov = json.loads((out.parent / "provenance.json").read_text())
    assert prov["files"] == ["history.csv"] and prov["parameters"]["processes"] == 1 and prov["git_sha"]


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "argument --seed: -1 is not an integer >= 0"),
    (["--steps", "0"], "argument --steps: 0 is not a positive integer"),
    (["--resolution", "0"], "argument --resolution: 0 is not a positive integer"),
    (["--device", "cuda:7"], "does not exist here"),
    (["--device", "tpu"], "not a device name"),
    (["--device", "meta"], "runs on cpu or cuda"),
    (["--profile", "huge"], "invalid choice"),
    (["--dataset", "/no/such/folder"], "no such directory"),
])
def test_command_line_reports_bad_arguments_as_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--profile", "smoke", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_transformer_and_a_tokenizer_that_disagree_are_refused(tokens):
    vae, tokens_train, tokens_test = tokens
    for change in ({"vocab_size": 64}, {"scales": (1, 2, 4)}):
        with pytest.raises(ValueError, match="disagree in"):
            train.train_model(dataclasses.replace(VAR_CFG, **change), TRAIN, vae, tokens_train, tokens_test, "cpu")
    few_classes = dataclasses.replace(VAR_CFG, num_classes=3)
    with pytest.raises(ValueError, match="class ids in"):
        train.train_model(few_classes, TRAIN, vae, tokens_train, tokens_test, "cpu")


# ----------------------------------------------------------------------------------------------- token sets

def test_augmented_token_sets_shift_the_images_and_are_reproducible(tokens):
    vae, tokens_train, _ = tokens
    study = tiny_study()
    images, moved = study.split("train").images_u8, study.augmented_images(1)
    assert moved.shape == images.shape and moved.dtype == torch.uint8 and not torch.equal(moved, images)
    # 28 px garments padded to 32 px: a shift of up to 2 px moves every pixel and loses none
    assert torch.equal(moved.sum((1, 2, 3), dtype=torch.int64), images.sum((1, 2, 3), dtype=torch.int64))
    s = study.augmentation_spec()["max_shift"]
    assert s == 2
    for i in range(8):  # each image is its original moved by one offset within +-2 px, unflipped (Fashion-MNIST)
        padded = F.pad(images[i], (s, s, s, s))
        assert any(torch.equal(moved[i], padded[:, s - dy:s - dy + 32, s - dx:s - dx + 32])
                   for dy in range(-s, s + 1) for dx in range(-s, s + 1))
    assert torch.equal(study.augmented_images(1), moved) and not torch.equal(study.augmented_images(2), moved)

    first = study.tokens("train", augmentation=1)
    assert torch.equal(first["labels"], tokens_train["labels"]) and first["idx"].shape == tokens_train["idx"].shape
    assert (first["idx"] != tokens_train["idx"]).any(1).float().mean() > 0.5
    from varlib.tokenizer_train import encode_images
    assert torch.equal(first["idx"].long(), encode_images(vae, moved, "cpu"))  # the cache holds what it says
    assert torch.equal(tiny_study().tokens("train", augmentation=1)["idx"], first["idx"])
    sets = study.training_tokens(dataclasses.replace(TRAIN, token_sets=3))
    assert len(sets) == 3 and torch.equal(sets[0]["idx"], tokens_train["idx"]) and torch.equal(sets[1]["idx"],
                                                                                                first["idx"])
    with pytest.raises(ValueError, match="only the training split"):
        study.tokens("test", augmentation=1)


def test_flips_only_where_the_profile_allows_and_the_recipe_keys_the_artifacts():
    study, flipping = tiny_study(), tiny_study().replace(hflip=True)
    plain, flipped = study.augmented_images(1), flipping.augmented_images(1)
    differs = (plain != flipped).flatten(1).any(1)
    assert 0.3 < differs.float().mean() < 0.7  # about half the images flipped, the same shifts
    assert torch.equal(flipped[differs].flip(-1), plain[differs]) and torch.equal(flipped[~differs], plain[~differs])
    two = dataclasses.replace(TRAIN, token_sets=2)
    # one set: the key a transformer had before there were token sets; several: they and their recipe count
    assert study.transformer_key(VAR_CFG, TRAIN) == flipping.transformer_key(VAR_CFG, TRAIN)
    assert len({study.transformer_key(VAR_CFG, TRAIN), study.transformer_key(VAR_CFG, two),
                flipping.transformer_key(VAR_CFG, two)}) == 3
    spec = study._transformer_spec(VAR_CFG, TRAIN, TOK)
    assert "token_sets" not in spec["train"] and "augmentation" not in spec


def test_each_image_visits_each_of_its_token_sets_once_every_few_epochs():
    n, sets, batch = 40, 3, 8  # 5 steps an epoch
    seen = torch.zeros(n, sets, dtype=torch.long)
    for step in range(3 * 5):  # epochs 0-2: one block of `sets` epochs
        image_B = train.batch_indices(step, batch, n, seed=0)
        set_B = train.token_set_indices(step, image_B, n, sets, seed=0)
        seen.index_put_((image_B, set_B), torch.ones(batch, dtype=torch.long), accumulate=True)
    assert (seen == 1).all()
    image_B = train.batch_indices(2, batch, n, 0)
    assert torch.equal(train.token_set_indices(2, image_B, n, sets, 0), train.token_set_indices(2, image_B, n, sets, 0))
    orders = [torch.stack([train.token_set_indices(s, train.batch_indices(s, batch, n, seed), n, sets, seed)
                           for s in range(5)]) for seed in (0, 1)]
    assert not torch.equal(*orders)
    assert not train.token_set_indices(7, image_B, n, 1, 0).any()
    # a batch across an epoch boundary: 7 images of epoch 0, 1 of epoch 1 (n = 39)
    image_B = train.batch_indices(4, batch, 39, 0)
    epoch_B = torch.tensor([0] * 7 + [1])
    order = train._set_order(39, sets, 0, 0)
    assert torch.equal(train.token_set_indices(4, image_B, 39, sets, 0), order[image_B, epoch_B])


def test_training_on_several_token_sets_reads_each_and_resumes_exactly(tokens, monkeypatch):
    vae, tokens_train, tokens_test = tokens
    cfg = dataclasses.replace(TRAIN, steps=10, batch_size=64, eval_every=4, token_sets=2)  # 2.5 epochs of 256
    sets = tiny_study().training_tokens(cfg)
    read, real_call = [], train.TrainStep.__call__

    def recording(self, label_B, idx_BL, lr):
        read.append(idx_BL.clone())
        return real_call(self, label_B, idx_BL, lr)

    monkeypatch.setattr(train.TrainStep, "__call__", recording)
    reference, ref_history = train.train_model(VAR_CFG, cfg, vae, sets, tokens_test, "cpu", progress=False)
    monkeypatch.setattr(train.TrainStep, "__call__", real_call)
    idx_KNL, from_set = torch.stack([s["idx"] for s in sets]), []
    for step, idx_BL in enumerate(read):
        image_B = train.batch_indices(step, cfg.batch_size, len(tokens_train["labels"]), cfg.seed)
        set_B = train.token_set_indices(step, image_B, len(tokens_train["labels"]), 2, cfg.seed)
        assert torch.equal(idx_BL, idx_KNL[set_B, image_B])
        from_set.append(set_B[(idx_KNL[0, image_B] != idx_KNL[1, image_B]).any(1)])
    counts = torch.cat(from_set).bincount(minlength=2)
    assert counts.min() > 0.4 * counts.sum()  # both sets, about evenly

    state = TrainState("var", {"test": "resume with token sets"})
    real_evaluate, calls = train.evaluate, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate_then_crash)
    with pytest.raises(Interrupted):
        train.train_model(VAR_CFG, cfg, vae, sets, tokens_test, "cpu", progress=False, resume=state)
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    assert state.load()["step"] == 4
    resumed, history = train.train_model(VAR_CFG, cfg, vae, sets, tokens_test, "cpu", progress=False, resume=state)
    for (name, p_ref), p in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p_ref, p), name
    assert history[["step", "train_loss", "test_loss_all"]].equals(ref_history[["step", "train_loss", "test_loss_all"]])
    one_set, _ = train.train_model(VAR_CFG, dataclasses.replace(cfg, token_sets=1), vae, sets[0], tokens_test, "cpu",
                                   progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(one_set.parameters(), reference.parameters(), strict=True))


def test_token_sets_that_do_not_match_are_refused(tokens):
    vae, tokens_train, tokens_test = tokens
    two = dataclasses.replace(TRAIN, token_sets=2)
    with pytest.raises(ValueError, match="1 training token sets given, but TrainConfig.token_sets = 2"):
        train.train_model(VAR_CFG, two, vae, tokens_train, tokens_test, "cpu", progress=False)
    other = {"idx": tokens_train["idx"], "labels": tokens_train["labels"].roll(1)}
    with pytest.raises(ValueError, match="training token set 1 .* does not hold the images of set 0"):
        train.train_model(VAR_CFG, two, vae, [tokens_train, other], tokens_test, "cpu", progress=False)



# ----------------------------------------------------------------------------------------------- the captured step

GRAPH_TRAIN = TrainConfig(batch_size=32, lr_scale=30.0)
GRAPH_LR_FACTORS = (1.0, 0.0, 4.0, 2.0, 1.0, 0.5)  # x GRAPH_TRAIN.lr: a step at lr 0, and rates the capture never saw
CUDA_GRAPHS = pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="CUDA graphs need a GPU (run on the device machine)")


def graphed_case(dropout: bool, device: str, cfg: TrainConfig, scales: tuple[int, ...] = TOK.scales):
    """A depth-2 VAR over `scales` (one scale: the raster AR), without dropout or with drop-path 0.3 and class dropout
    0.5 (so that the masks change every gradient), and an untrained frozen tokenizer of those scales (its codebook
    builds the inputs), both seeded; and their TrainStep."""
    var_cfg = dataclasses.replace(VAR_CFG, depth=2, scales=scales, drop_path_rate=0.3 if dropout else 0.0,
                                  cond_drop_rate=0.5 if dropout else 0.0)
    torch.manual_seed(0)
    model = build_model(var_cfg).to(device).train()
    vae = frozen(VQVAE(dataclasses.replace(TOK, scales=scales))).to(device)
    return model, train.TrainStep(model, vae, cfg, torch.device(device))


def fixed_batches(batch_size: int, device: str, num_tokens: int = TOK.num_tokens):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randint(10, (batch_size,), generator=gen).to(device),
             torch.randint(TOK.vocab_size, (batch_size, num_tokens), generator=gen).to(torch.int16).to(device))
            for _ in GRAPH_LR_FACTORS]


def train_fixed_batches(dropout: bool, device: str, cfg: TrainConfig, first_seed: int = 100,
                        scales: tuple[int, ...] = TOK.scales):
    """(losses, final parameters, initial parameters) of six steps on fixed random batches at the rates
    GRAPH_LR_FACTORS x cfg.lr, each step seeded as `train_model` seeds them (`torch.manual_seed` before the step)."""
    model, step = graphed_case(dropout, device, cfg, scales)
    initial = [p.detach().cpu().clone() for p in model.parameters()]
    losses = []
    batches = fixed_batches(cfg.batch_size, device, model.L)
    for k, ((label_B, idx_BL), factor) in enumerate(zip(batches, GRAPH_LR_FACTORS, strict=True)):
        torch.manual_seed(first_seed + k)
        losses.append(step(label_B, idx_BL, cfg.lr * factor)[0])
    return torch.stack(losses).cpu(), [p.detach().cpu().clone() for p in model.parameters()], initial


def relative_distance(params_a, params_b, initial) -> float:
    """|params_a - params_b| / |params_a - initial| over all parameters: how far apart two runs end, as a share of how
    far training moved them."""
    apart = sum(float((a - b).double().square().sum()) for a, b in zip(params_a, params_b, strict=True))
    moved = sum(float((a - p).double().square().sum()) for a, p in zip(params_a, initial, strict=True))
    return (apart / moved) ** 0.5


def assert_same_training(a, b):
    """Two runs of `train_fixed_batches` trained alike.

    AdamW moves every parameter by about the learning rate whatever the size of its gradient, so a step that differs
    (another batch, another rate, other dropout masks) moves the parameters differently by a good share of the whole
    update: measured on the CPU, other dropout masks end 1.07 of it apart, one step of six at 1.5x the rate 0.29, all
    six at 1.03x the rate 0.04. Between equal steps on a GPU only rounding differs: bf16 autocast, and atomics in the
    attention backward, which leave gradients equal to ~1e-6 relative (a float32 learning rate in place of a double
    moved the CPU runs 1e-6 apart). Hence 1e-2 of the update. The losses, near log V = 3.47 from the near-identity
    init, move little (one step at 1.5x the rate: 7e-4): a sanity check at 1e-3."""
    (losses_a, params_a, initial), (losses_b, params_b, _) = a, b
    torch.testing.assert_close(losses_a, losses_b, rtol=1e-3, atol=0)
    assert relative_distance(params_a, params_b, initial) < 1e-2


def test_the_profiles_captured_step_is_dropped_where_it_cannot_run():
    cfg = TrainConfig(compile=True, cuda_graph=True)
    assert train.runnable_step(cfg, torch.device("cuda"), 1) is cfg
    for device, world in (("cpu", 1), ("cuda", 2)):
        assert train.runnable_step(cfg, torch.device(device), world) == dataclasses.replace(cfg, cuda_graph=False)
    full_cpu = Study.create("full", device="cpu")
    assert get_profile("full").train.cuda_graph and not full_cpu.train_config.cuda_graph
    graphed = dataclasses.replace(full_cpu.train_config, cuda_graph=True)
    assert full_cpu.transformer_key(full_cpu.var_config(), graphed) == full_cpu.transformer_key(full_cpu.var_config())
    with pytest.raises(ValueError, match="needs a CUDA device"):  # asked for explicitly, it is an error
        train.TrainStep(build_model(full_cpu.var_config(depth=1)), None, cfg, torch.device("cpu"))


@CUDA_GRAPHS
@pytest.mark.parametrize("dropout, scales", [(False, TOK.scales), (True, TOK.scales), (True, (8,))],
                         ids=["VAR", "VAR-dropout", "raster-AR-dropout"])
def test_graphed_step_equals_the_eager_step(dropout, scales):
    """The captured step (one CUDA graph, replayed) trains as the eager step: the same losses and parameters after six
    steps at changing learning rates. With dropout on as well: each replay draws from the default CUDA generator as
    seeded before it (the capture registers the generator), so it draws the eager step's masks; other seeds draw
    other masks, which the comparison sees."""
    graph_cfg = dataclasses.replace(GRAPH_TRAIN, cuda_graph=True)
    graphed = train_fixed_batches(dropout, "cuda", graph_cfg, scales=scales)
    assert_same_training(train_fixed_batches(dropout, "cuda", GRAPH_TRAIN, scales=scales), graphed)
    if dropout:
        reseeded = train_fixed_batches(dropout, "cuda", graph_cfg, first_seed=200, scales=scales)
        assert relative_distance(graphed[1], reseeded[1], graphed[2]) > 0.1


@CUDA_GRAPHS
@pytest.mark.parametrize("dropout", [False, True], ids=["VAR", "VAR-dropout"])
def test_compiled_graphed_step_equals_the_compiled_step(dropout):
    """compile and cuda_graph together (Inductor's kernels of the step, captured) train as the compiled step; with
    dropout too: Inductor draws its seeds from the default CUDA generator inside the graph."""
    compiled = dataclasses.replace(GRAPH_TRAIN, compile=True)
    assert_same_training(train_fixed_batches(dropout, "cuda", compiled),
                         train_fixed_batches(dropout, "cuda", dataclasses.replace(compiled, cuda_graph=True)))


@CUDA_GRAPHS
def test_graph_replays_follow_the_learning_rate_and_keep_their_shapes():
    """The rate is a device tensor filled before each replay: a replay at lr 0 leaves every parameter as it was, a
    replay at another rate than the capture's moves the parameters as the eager step at that rate does."""
    (model, step), (eager_model, eager_step) = (graphed_case(False, "cuda", cfg) for cfg in (
        dataclasses.replace(GRAPH_TRAIN, cuda_graph=True), GRAPH_TRAIN))
    initial = [p.detach().cpu().clone() for p in model.parameters()]
    for k, ((label_B, idx_BL), factor) in enumerate(zip(fixed_batches(32, "cuda"), (1.0, 0.0, 3.0), strict=False)):
        before = [p.detach().clone() for p in model.parameters()]
        for train_step in (step, eager_step):
            torch.manual_seed(k)
            train_step(label_B, idx_BL, GRAPH_TRAIN.lr * factor)
        unchanged = all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
        assert unchanged == (factor == 0.0), factor
    params, eager_params = ([p.detach().cpu() for p in m.parameters()] for m in (model, eager_model))
    assert relative_distance(params, eager_params, initial) < 1e-2
    with pytest.raises(ValueError, match="captured for labels"):
        step(label_B[:16], idx_BL[:16], GRAPH_TRAIN.lr)


@CUDA_GRAPHS
def test_train_model_with_the_captured_step_trains_as_the_eager_one(tokens):
    """End to end on the GPU: `train_model` with `cuda_graph` (evaluations between replays, the model switched to eval
    mode and back) gives the eager run's history and parameters, within `assert_same_training`'s bounds."""
    vae, tokens_train, tokens_test = tokens
    runs = []
    for cuda_graph in (False, True):
        cfg = dataclasses.replace(TRAIN, cuda_graph=cuda_graph)
        model, history = train.train_model(VAR_CFG, cfg, vae, tokens_train, tokens_test, "cuda", progress=False)
        runs.append((history, [p.detach().cpu() for p in model.parameters()]))
    torch.manual_seed(TRAIN.seed)
    initial = [p.detach().clone() for p in build_model(VAR_CFG).parameters()]
    (eager_history, eager_params), (graph_history, graph_params) = runs
    assert list(graph_history["step"]) == list(eager_history["step"])
    for column in ("train_loss", "test_loss_all"):
        torch.testing.assert_close(torch.tensor(graph_history[column].to_numpy()),
                                   torch.tensor(eager_history[column].to_numpy()), rtol=1e-3, atol=0)
    assert relative_distance(eager_params, graph_params, initial) < 1e-2


def test_the_captured_step_is_refused_where_it_cannot_run():
    """cuda_graph on the CPU, with the chunked head, or under DDP: a ValueError naming the setting (no fallback)."""
    graph_cfg = dataclasses.replace(GRAPH_TRAIN, cuda_graph=True)
    model = build_model(VAR_CFG)
    vae = frozen(VQVAE(TOK))
    for kwargs, message in [({}, "needs a CUDA device"), ({"chunk": 16}, "chunked head"),
                            ({"world": 2}, "DistributedDataParallel")]:
        with pytest.raises(ValueError, match=f"TrainConfig.cuda_graph = True.*{message}"):
            train.TrainStep(model, vae, graph_cfg, torch.device("cpu"), **kwargs)


def test_the_captured_step_shares_the_eager_steps_artifact():
    """cuda_graph changes how a model trains, not what: it is left out of the cache key, whole, so that models cached
    before the switch existed keep their keys."""
    study = tiny_study()
    assert study.transformer_key(VAR_CFG, dataclasses.replace(TRAIN, cuda_graph=True)) == study.transformer_key(
        VAR_CFG, TRAIN)
    assert "cuda_graph" not in study._transformer_spec(VAR_CFG, TRAIN, TOK)["train"]
