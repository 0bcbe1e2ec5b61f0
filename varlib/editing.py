"""Zero-shot editing (paper Sec. 4.4, Fig. 8): in-painting, out-painting and class-conditional editing.

VAR edits by teacher forcing: at every scale the tokens of the known region are the image's own, substituted into
the plain sampling loop (`varlib.sampling.var_loop`, `forced`), and only the others are sampled. The raster AR
baseline can only keep the prefix before the first unknown token (`edit_ar`). `edit_many` runs either over a whole
set, batch by batch, each batch with its own generator stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import SampleConfig
from .sampling import (
    CachedSteps,
    ar_loop,
    batch_generator,
    both_branches,
    check_sampling_args,
    eval_mode,
    labels_on,
    var_loop,
)
from .transformer import VAR, ARTransformer


def box_mask(height: int, width: int, box: tuple[int, int, int, int], mode: str, batch_size: int = 1) -> torch.Tensor:
    """keep_mask_BHW (1 = known pixel) for a box (top, left, bottom, right), bottom/right exclusive:
    mode "inpaint" regenerates the box (known outside it), "outpaint" regenerates the border (known inside)."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"box {box} (top, left, bottom, right) must lie inside the {height}x{width} image")
    if mode not in ("inpaint", "outpaint"):
        raise ValueError(f"mode {mode!r}: choose 'inpaint' (unknown box) or 'outpaint' (unknown border)")
    inside_HW = torch.zeros(height, width)
    inside_HW[top:bottom, left:right] = 1.0
    keep_HW = 1.0 - inside_HW if mode == "inpaint" else inside_HW
    return keep_HW.expand(batch_size, height, width).clone()


def _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg) -> torch.Tensor:
    """Validated labels (None -> the null class); raises ValueError naming the bad argument."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (B, C, H, W), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    if tuple(keep_mask_BHW.shape) != (B, H, W):
        raise ValueError(f"keep_mask_BHW has shape {tuple(keep_mask_BHW.shape)}; it must be (B, H, W) = "
                         f"{(B, H, W)} like the images (1 = known pixel), e.g. from box_mask(...)")
    if labels is None:
        labels = torch.full((B,), model.num_classes)
    labels_B = labels_on(model, labels)
    if labels_B.shape != (B,):
        raise ValueError(f"labels has shape {tuple(labels_B.shape)}; give one class per image ({B}) or None")
    check_sampling_args(model, labels_B, sample_cfg)
    return labels_B


def _known_at(keep_mask_BHW: torch.Tensor, pn: int) -> torch.Tensor:
    """Which tokens of a pn x pn map are known: the mask's area fraction over each token's cell > 0.5."""
    mask_B1HW = keep_mask_BHW.float().unsqueeze(1)
    return F.interpolate(mask_B1HW, size=(pn, pn), mode="area").flatten(1) > 0.5


@torch.no_grad()
def edit(model: VAR, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig,
         generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Zero-shot in-/out-painting and class-conditional editing (paper Sec. 4.4, Fig. 8).

    At every scale the tokens of the known region are the image's own tokens (substituted in embedding space
    before the next scale's input is built) and only the others are sampled; scales with <= 3 tokens are taken
    whole from the image, as the authors' demo. labels None = unconditional (the null class)."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg)
    with eval_mode(model, vae):
        known_idx_Bl = vae.img_to_idxBl(images)
        forced = []
        for pn, known_Bl in zip(model.scales, known_idx_Bl, strict=True):
            keep_Bl = _known_at(keep_mask_BHW.to(known_Bl.device), pn)
            forced.append((known_Bl, keep_Bl | (pn * pn <= 3)))
        steps = CachedSteps(model, both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0),
                            model.scales[-1] ** 2)
        idx_Bl, f_hat = var_loop(model, vae, labels_B, sample_cfg, generator, steps, forced)
        return idx_Bl, vae.fhat_to_img(f_hat)


@torch.no_grad()
def edit_ar(model: ARTransformer, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig,
            generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The AR baseline's best effort at the same task: it can only condition on the raster prefix, so tokens before
    the first unknown one are kept and everything after it is sampled (known tokens further on are lost)."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg)
    with eval_mode(model, vae):
        (known_BL,) = vae.img_to_idxBl(images)
        keep_BL = _known_at(keep_mask_BHW.to(known_BL.device), model.scales[0])
        prefix_B = torch.where(keep_BL.all(dim=1), model.L, (~keep_BL).int().argmax(dim=1))
        idx_Bl, f_hat = ar_loop(model, vae, labels_B, sample_cfg, generator, (known_BL, prefix_B))
        return idx_Bl, vae.fhat_to_img(f_hat)

@torch.no_grad()
def edit_many(edit_fn, model: VAR | ARTransformer, vae, images: torch.Tensor, keep_mask_BHW: torch.Tensor,
              labels: torch.Tensor | None, sample_cfg: SampleConfig, seed: int, stream: int, batch_size: int = 256,
              device: torch.device | str | None = None) -> torch.Tensor:
    """`edit_fn` (`edit` or `edit_ar`) over all N images, `batch_size` at a time on `device` (None: the model's),
    batch i drawing from `batch_generator(seed + stream, i, device)`; `stream` separates the tasks of one run.
    Returns the edited images (N, C, H, W), float in [-1, 1], on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model.lvl_1L.device if device is None else torch.device(device)
    outs = []
    for i, rows in enumerate(tqdm(torch.arange(len(images)).split(batch_size), desc="editing", leave=False)):
        labels_B = None if labels is None else labels[rows].to(device)
        _, images_B = edit_fn(model, vae, images[rows].to(device), keep_mask_BHW[rows].to(device), labels_B,
                              sample_cfg, batch_generator(seed + stream, i, device))
        outs.append(images_B.cpu())
    return torch.cat(outs)
