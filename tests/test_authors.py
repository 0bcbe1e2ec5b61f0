"""The authors' checkpoints and code (varlib.authors): configurations read off state dicts, strict loading, errors that
name the file and say where to get it, refusal of files that need pickled code, and (with a checkout of
FoundationVision/VAR in .authors/VAR) their VAR built at a varlib config."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TOKENIZER, random_images, tiny_vae

from varlib.artifacts import ArtifactError
from varlib.authors import (
    AUTHORS_VAE_FILE,
    authors_var,
    config_from_state_dict,
    import_authors_models,
    load_authors_models,
    load_authors_tokenizer,
    load_authors_var,
)
from varlib.config import PAPER_SCALES_256, TokenizerConfig, VARConfig
from varlib.tokenizer import VQVAE
from varlib.transformer import VAR

ROOT = Path(__file__).resolve().parents[1]
VAR_FIXTURE = ROOT / "tests" / "fixtures" / "var_compat.pt"
AUTHORS_DIR = ROOT / ".authors" / "VAR"
TINY = TINY_TOKENIZER


class NotWeights:
    """A pickled object: loading it would run code, so a weights-only load refuses it."""


# ----------------------------------------------------------------------------------------------- the tokenizer

def test_tokenizer_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=f"{AUTHORS_VAE_FILE}: no such file; download"):
        load_authors_tokenizer(tmp_path / AUTHORS_VAE_FILE)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ArtifactError, match=r"corrupt\.pth: (corrupt|refused)"):
        load_authors_tokenizer(corrupt)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(1)}, foreign)
    with pytest.raises(ArtifactError, match="foreign.pth: not a VQVAE state dict"):
        load_authors_tokenizer(foreign)
    pickled = tmp_path / "pickled.pth"
    torch.save({"quantize.embedding.weight": torch.zeros(1), "extra": NotWeights()}, pickled)
    with pytest.raises(ArtifactError, match="pickled.pth: refused"):
        load_authors_tokenizer(pickled)


@pytest.mark.parametrize("cfg", [
    TokenizerConfig.paper(),
    dataclasses.replace(TINY, share_phi=0, using_sa=False),
    dataclasses.replace(TINY, share_phi=1, using_mid_sa=False, in_channels=3, num_res_blocks=2),
])
def test_tokenizer_config_is_read_off_the_state_dict(cfg):
    with torch.device("meta"):
        state = VQVAE(cfg).state_dict()
    assert config_from_state_dict(state, cfg.scales) == cfg


def test_tokenizer_checkpoint_of_any_width_loads_frozen(tmp_path):
    torch.save(tiny_vae().state_dict(), tmp_path / "vae.pth")
    vae = load_authors_tokenizer(tmp_path / "vae.pth", scales=TINY.scales)
    assert vae.cfg == TINY and not vae.training
    assert not any(p.requires_grad for p in vae.parameters())
    x = random_images(TINY)
    torch.testing.assert_close(vae.img_to_idxBl(x)[-1], tiny_vae().img_to_idxBl(x)[-1])


# ----------------------------------------------------------------------------------------------- the transformer

def test_var_checkpoint_reads_the_config_off_the_state_dict(tmp_path):
    fixture = torch.load(VAR_FIXTURE, weights_only=True)["cases"]["anorm"]
    path = tmp_path / "var_tiny.pth"
    torch.save(fixture["state_dict"], path)
    cfg = VARConfig(**fixture["config"])
    model = load_authors_var(path, scales=cfg.scales)
    assert (model.cfg.depth, model.cfg.width, model.cfg.num_classes, model.cfg.vocab_size, model.cfg.z_channels,
            model.cfg.attn_l2_norm, model.cfg.shared_aln) == (cfg.depth, cfg.width, cfg.num_classes, cfg.vocab_size,
                                                              cfg.z_channels, cfg.attn_l2_norm, cfg.shared_aln)
    assert not model.training
    with torch.no_grad():
        logits = model(fixture["label_B"], fixture["x_BLCv_wo_first_l"])
    torch.testing.assert_close(logits, fixture["logits_BLV"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ArtifactError, match="match no paper schedule"):
        load_authors_var(path)  # 30 tokens: neither of the paper's schedules
    with pytest.raises(ArtifactError, match="missing.pth: no such file; download var_d16.pth"):
        load_authors_var(tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(ArtifactError, match="foreign.pth: not a VAR state dict"):
        load_authors_var(tmp_path / "foreign.pth")


def test_var_checkpoint_of_the_paper_schedule_needs_no_scales(tmp_path):
    shared = VAR(VARConfig(depth=1, head_dim=16, num_classes=3, vocab_size=64, scales=PAPER_SCALES_256,
                           shared_aln=True, attn_l2_norm=False))
    torch.save(shared.state_dict(), tmp_path / "var_d1.pth")
    model = load_authors_var(tmp_path / "var_d1.pth")
    assert model.scales == PAPER_SCALES_256 and model.cfg.shared_aln and not model.cfg.attn_l2_norm


def test_models_pair_from_one_folder_shares_the_schedule(tmp_path):
    tok = TokenizerConfig(in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64,
                          scales=PAPER_SCALES_256)
    torch.save(VQVAE(tok).state_dict(), tmp_path / AUTHORS_VAE_FILE)
    torch.save(VAR(VARConfig(depth=1, head_dim=16, num_classes=5, vocab_size=64, scales=PAPER_SCALES_256))
               .state_dict(), tmp_path / "var_d1.pth")
    model, vae = load_authors_models(tmp_path, depth=1)
    assert model.scales == vae.cfg.scales == PAPER_SCALES_256 and vae.vocab_size == model.cfg.vocab_size == 64
    torch.save(VAR(VARConfig(depth=2, head_dim=16, num_classes=5, vocab_size=32, scales=PAPER_SCALES_256))
               .state_dict(), tmp_path / "var_d2.pth")
    with pytest.raises(ArtifactError, match="does not match var_d2.pth"):
        load_authors_models(tmp_path, depth=2)
    with pytest.raises(ArtifactError, match="var_d3.pth: no such file"):
        load_authors_models(tmp_path, depth=3)


# ----------------------------------------------------------------------------------------------- their code

def test_import_of_their_code_names_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no models/var.py"):
        import_authors_models(tmp_path)


@pytest.fixture
def restored_imports(monkeypatch):
    """Their `models`, the `dist` and huggingface_hub stand-ins leave sys.modules and sys.path after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("models", "dist", "huggingface_hub"):
            del sys.modules[name]


@pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast.*:FutureWarning")  # their code's old autocast call
@pytest.mark.skipif(not (AUTHORS_DIR / "models" / "var.py").is_file(),
                    reason="needs a FoundationVision/VAR checkout in .authors/VAR (see scripts/make_var_fixture.py)")
def test_their_var_at_a_varlib_config_loads_into_varlib_and_agrees(restored_imports):
    models = import_authors_models(AUTHORS_DIR, "cpu")
    cfg = VARConfig(depth=2, head_dim=16, num_classes=4, vocab_size=32, z_channels=8, scales=(1, 2, 4, 8))
    torch.manual_seed(0)
    theirs = authors_var(models, cfg, cond_drop_rate=0.0).eval()
    ours = VAR(cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())
    label_B, x = torch.tensor([0, 3, 4]), torch.randn(3, cfg.num_tokens - 1, cfg.z_channels)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(label_B, x), theirs(label_B, x), rtol=1e-5, atol=1e-5)
