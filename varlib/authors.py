"""The authors' code and checkpoints (FoundationVision/VAR), in one place.

Their released files load into varlib's modules: `load_authors_tokenizer` (vae_ch160v4096z32.pth -> `VQVAE`),
`load_authors_var` (var_d16.pth ... var_d30.pth -> `VAR`) and `load_authors_models` (the pair from one folder), each
with its configuration read off the state dict. Files are read with `weights_only=True`: a state dict needs no
pickled code.

For side-by-side runs (the compatibility fixture, the training benchmark) `import_authors_models` imports their own
`models` package from a checkout and `authors_var` builds their VAR at a varlib `VARConfig`. Their code is only run,
never copied into varlib.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

import torch

from .artifacts import ArtifactError, load_checkpoint
from .config import PAPER_SCALES_256, PAPER_SCALES_512, TokenizerConfig, VARConfig
from .tokenizer import VQVAE, frozen
from .transformer import VAR

log = logging.getLogger(__name__)

AUTHORS_VAE_FILE = "vae_ch160v4096z32.pth"  # the names of their Hugging Face files (FoundationVision/var)
AUTHORS_VAR_FILE = "var_d{depth}.pth"


# ------------------------------------------------------------------------------------------ released checkpoints
def config_from_state_dict(state: dict, scales: tuple[int, ...]) -> TokenizerConfig:
    """The TokenizerConfig of a VQVAE state dict in the authors' key layout (widths, levels, blocks, attention,
    latent channels, codebook size, phi sharing), for the given scale schedule; the paper's checkpoint gives
    TokenizerConfig.paper(scales). phi_ratio and beta are not stored and keep their (the paper's) defaults."""
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    ch = state["encoder.conv_in.weight"].shape[0]
    last = levels[-1]
    if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in state):
        share_phi = len({k.split(".")[3] for k in state if k.startswith("quantize.quant_resi.qresi_ls.")})
    else:
        share_phi = 1 if "quantize.quant_resi.qresi.weight" in state else 0
    return TokenizerConfig(
        in_channels=state["encoder.conv_in.weight"].shape[1], ch=ch,
        ch_mult=tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels),
        num_res_blocks=len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")}),
        using_sa=any(k.startswith(f"encoder.down.{last}.attn.") for k in state),
        using_mid_sa="encoder.mid.attn_1.qkv.weight" in state,
        z_channels=state["quant_conv.weight"].shape[0], vocab_size=state["quantize.embedding.weight"].shape[0],
        scales=tuple(scales), share_phi=share_phi)


def load_authors_tokenizer(path: str | Path, scales: tuple[int, ...] | None = None) -> VQVAE:
    """The authors' released tokenizer (`vae_ch160v4096z32.pth`) as a frozen VQVAE, its configuration read off the
    state dict (`config_from_state_dict`; the released file gives `TokenizerConfig.paper()`), for `scales` (default:
    the paper's 256 px schedule)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; download {AUTHORS_VAE_FILE} from the authors' Hugging Face "
                            "page (FoundationVision/var) and pass its path")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "quantize.embedding.weight" not in state:
        raise ArtifactError(f"{path}: not a VQVAE state dict (no 'quantize.embedding.weight' key); pass the authors' "
                            f"{AUTHORS_VAE_FILE}")
    try:
        cfg = config_from_state_dict(state, scales or TokenizerConfig.paper().scales)
        vae = VQVAE(cfg)
        vae.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ArtifactError(f"{path}: not a VQVAE state dict in the authors' layout ({e})") from e
    log.info("loaded the authors' tokenizer from %s (%s)", path, cfg)
    return frozen(vae)


def load_authors_var(path: str | Path, scales: tuple[int, ...] | None = None) -> VAR:
    """The authors' released `var_d16.pth` ... `var_d30.pth` (or `var_d36.pth` at 512 px) as a varlib `VAR` in eval
    mode, its configuration read off the state dict (depth, classes, vocabulary, attention normalisation, shared
    AdaLN); `scales` defaults to the paper's schedule for the checkpoint's token count."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; download var_d16.pth (or d20/d24/d30) from the authors' Hugging "
                            "Face page (FoundationVision/var) and pass its path")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "class_emb.weight" not in state or "pos_1LC" not in state:
        raise ArtifactError(f"{path}: not a VAR state dict (no 'class_emb.weight' / 'pos_1LC'); pass the authors' "
                            "var_d*.pth")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    L = state["pos_1LC"].shape[1]
    if scales is None:
        scales = next((s for s in (PAPER_SCALES_256, PAPER_SCALES_512) if sum(p * p for p in s) == L), None)
        if scales is None:
            raise ArtifactError(f"{path}: {L} tokens match no paper schedule; pass `scales` explicitly")
    width = state["class_emb.weight"].shape[1]
    cfg = VARConfig(depth=depth, head_dim=width // depth, num_classes=state["class_emb.weight"].shape[0] - 1,
                    vocab_size=state["head.weight"].shape[0], z_channels=state["word_embed.weight"].shape[1],
                    scales=tuple(scales), attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state,
                    shared_aln="shared_ada_lin.1.weight" in state, drop_path_rate=0.0)
    model = VAR(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: does not load into VAR({cfg}) ({e})") from e
    log.info("loaded the authors' transformer from %s (%s)", path, cfg)
    return model.eval()


def load_authors_models(folder: str | Path, depth: int = 16) -> tuple[VAR, VQVAE]:
    """The authors' released pair from one folder: `var_d{depth}.pth` and `vae_ch160v4096z32.pth` (the names of
    their Hugging Face files), the tokenizer built for the transformer's scale schedule; both in eval mode on the
    CPU."""
    folder = Path(folder)
    var_file = AUTHORS_VAR_FILE.format(depth=depth)
    model = load_authors_var(folder / var_file)
    vae = load_authors_tokenizer(folder / AUTHORS_VAE_FILE, scales=model.scales)
    if vae.vocab_size != model.cfg.vocab_size or vae.Cvae != model.cfg.z_channels:
        raise ArtifactError(f"{folder}: the tokenizer (V={vae.vocab_size}, Cvae={vae.Cvae}) does not match "
                            f"{var_file} (V={model.cfg.vocab_size}, Cvae={model.cfg.z_channels})")
    return model, vae


# ------------------------------------------------------------------------------------------ their code, side by side
def import_authors_models(authors_dir: str | Path, device: str | torch.device = "cpu") -> types.ModuleType:
    """The authors' `models` package (var, vqvae, quant) from a FoundationVision/VAR checkout, imported with
    stand-ins for the two modules it needs only at import time: their `dist` helper (queried for the device, here
    `device`, and whether torch.distributed is up) and huggingface_hub's mixin (Hub upload, unused here). The stand-ins
    live in this process's sys.modules only. Their `build_vae_var` turns torch classes' reset_parameters into no-ops
    for the whole process; `authors_var` builds their VAR without it."""
    authors_dir = Path(authors_dir).resolve()
    if not (authors_dir / "models" / "var.py").is_file():
        raise FileNotFoundError(f"{authors_dir}: no models/var.py; pass the folder of a FoundationVision/VAR checkout "
                                "(git clone https://github.com/FoundationVision/VAR)")
    dist = sys.modules.get("dist")
    if getattr(dist, "__varlib_standin__", False) is not True:  # their checkout has a dist.py: never import it
        dist = types.ModuleType("dist")
        dist.__varlib_standin__ = True
        dist.initialized = torch.distributed.is_initialized
        sys.modules["dist"] = dist
    dist.device = torch.device(device)
    dist.get_device = lambda: dist.device
    if "huggingface_hub" not in sys.modules:
        hub = types.ModuleType("huggingface_hub")
        hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
        sys.modules["huggingface_hub"] = hub
    if str(authors_dir) not in sys.path:
        sys.path.insert(0, str(authors_dir))
    models = importlib.import_module("models")
    if Path(models.__file__).resolve().parent != authors_dir / "models":
        raise ImportError(f"`models` is already imported from {models.__file__}, not from {authors_dir}: import the "
                          "authors' code in a fresh process")
    return models


def authors_var(models: types.ModuleType, var_cfg: VARConfig, cond_drop_rate: float,
                device: str | torch.device = "cpu", fused_kernels: bool = False) -> torch.nn.Module:
    """The authors' VAR at a varlib VARConfig on `device`, initialised by their `init_weights` with their builder's
    defaults (init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, automatic init_std), without the builder. The
    tokenizer is a stand-in carrying only Cvae and V: their VAR needs the VQVAE only to decode images.
    `fused_kernels` lets it use flash-attn / xformers / fused MLP where installed (their builder's default, for
    speed comparisons); off, it runs their plain PyTorch path."""
    sys.modules["dist"].device = torch.device(device)  # their VAR puts its sampling generator on dist.get_device()
    vae_stub = types.SimpleNamespace(Cvae=var_cfg.z_channels, vocab_size=var_cfg.vocab_size, quantize=None)
    var = models.VAR(vae_stub, num_classes=var_cfg.num_classes, depth=var_cfg.depth, embed_dim=var_cfg.width,
                     num_heads=var_cfg.num_heads, mlp_ratio=var_cfg.mlp_ratio, drop_path_rate=var_cfg.drop_path,
                     norm_eps=var_cfg.norm_eps, shared_aln=var_cfg.shared_aln, cond_drop_rate=cond_drop_rate,
                     attn_l2_norm=var_cfg.attn_l2_norm, patch_nums=var_cfg.scales,
                     flash_if_available=fused_kernels, fused_if_available=fused_kernels).to(device)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    return var
