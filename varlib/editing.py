"""Zero-shot editing (paper Sec. 4.4, Fig. 8): in-painting, out-painting and class-conditional editing, and the
protocol that measures them.

VAR keeps the known region in one of two ways (`edit`, `procedure`):

  "requantize"  at scale k the known tokens are Alg. 1's residual-quantization step restricted to them: the codes
                nearest to the residual f - f_hat_{<k} between the image's features and everything generated so far
                (known and sampled tokens), pooled over the known part of each token's cell; only the unknown tokens
                are sampled. Known at every scale: a token whose cell holds any known pixel, so the coarse tokens
                around the known region reconstruct it too (and, pooled over its part only, carry nothing of the
                unknown cells).
  "authors"     the authors' demo (demo_zero_shot_edit.ipynb): the image's own tokens wherever the bilinearly shrunk
                mask exceeds 0.5, and every token of the scales of <= 3 tokens. The fine tokens copied there were
                computed for the image's coarse scales, not for the resampled ones around them, so they no longer
                add up to the image.

The raster AR baseline (`edit_ar`): "every_known" takes the image's token at every known position, so it conditions
on every known token before the one it samples (it cannot see those after it: the structural limit of raster order);
"prefix" keeps only the raster prefix before the first unknown token, reported separately.

The protocol (`make_protocol`, `evaluate`): seeded random boxes on the token grid (areas `BOX_AREA` of the image), the
same for every method, `SAMPLING_SEEDS` edits per image; FID of the whole output, PSNR of the known region against
the tokenizer's own reconstruction (a method more than `PRESERVATION_DB` below it does not preserve the condition),
and for class-conditional editing the classifier's success over box area against two controls. `zero_shot_claims`
applies the fixed verdict rules.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .claims import (
    ALPHA,
    FEW_SEEDS,
    INCONCLUSIVE,
    MIN_SEEDS,
    NOT_REPRODUCED,
    REPRODUCED,
    REVERSED,
    Claim,
    compare,
    mean_se,
    one_sided_p,
)
from .classifier import predict
from .config import SampleConfig
from .data import to_uint8
from .metrics import DATA_RANGE, generation_metrics, metric_name
from .sampling import (
    CachedSteps,
    ar_loop,
    batch_generator,
    both_branches,
    check_sampling_args,
    choose_tokens,
    eval_mode,
    guidance_ramp,
    guidance_scale,
    guide,
    labels_on,
    var_loop,
)
from .tokenizer import split_scales
from .transformer import VAR, ARTransformer

VAR_PROCEDURES = ("requantize", "authors")
AR_PROCEDURES = ("every_known", "prefix")

# ----------------------------------------------------------------------------------------------- the protocol's sizes
IMAGES_PER_TASK = {"smoke": 8, "quick": 200, "full": 2000}  # test images edited per task
SAMPLING_SEEDS = 3  # edits per image (each its own generator stream)
BOX_AREA = (0.15, 0.60)  # the boxes' area, as a fraction of the image
PRESERVATION_DB = 1.0  # the known region's PSNR may fall at most this far below the tokenizer's reconstruction
MEDIAN_BAND = (1 / 3, 2 / 3)  # "success at the median box area": the boxes between these quantiles of the areas
UNKNOWN_RGB = (1.0, -1.0, 1.0)  # magenta in [-1, 1]: a colour grayscale data never has


# ----------------------------------------------------------------------------------------------- masks and boxes

def box_mask(height: int, width: int, boxes, mode: str) -> torch.Tensor:
    """keep_mask_NHW (1 = known pixel) for N boxes (top, left, bottom, right), bottom/right exclusive: mode "inpaint"
    regenerates each box (known outside it), "outpaint" its border (known inside). `boxes`: (N, 4) or a list."""
    boxes_N4 = torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)
    if mode not in ("inpaint", "outpaint"):
        raise ValueError(f"mode {mode!r}: choose 'inpaint' (unknown box) or 'outpaint' (unknown border)")
    top, left, bottom, right = boxes_N4.unbind(1)
    bad = ~((0 <= top) & (top < bottom) & (bottom <= height) & (0 <= left) & (left < right) & (right <= width))
    if bad.any():
        raise ValueError(f"box {boxes_N4[bad][0].tolist()} (top, left, bottom, right) must lie inside the "
                         f"{height}x{width} image")
    rows_1H1, cols_11W = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    inside_NHW = ((rows_1H1 >= top.view(-1, 1, 1)) & (rows_1H1 < bottom.view(-1, 1, 1))
                  & (cols_11W >= left.view(-1, 1, 1)) & (cols_11W < right.view(-1, 1, 1)))
    return (~inside_NHW if mode == "inpaint" else inside_NHW).float()


def random_boxes(n: int, size: int, cell: int, seed: int, area: tuple[float, float] = BOX_AREA) -> torch.Tensor:
    """n boxes (top, left, bottom, right) in pixels of a size x size image, on its grid of cell x cell token cells:
    area fraction uniform in `area`, aspect ratio log-uniform in [1/2, 2], rounded to whole cells (redrawn until the
    rounded area lies in `area`), position uniform. Reproducible by `seed` (numpy's default_rng)."""
    if cell < 1 or size % cell:
        raise ValueError(f"cell = {cell}: must divide the image size {size} (the tokenizer's downsampling factor)")
    lo, hi = area
    grid = size // cell
    if not 0 < lo <= hi <= 1 or not any(lo <= h * w / grid**2 <= hi for h in range(1, grid + 1)
                                        for w in range(1, grid + 1)):
        raise ValueError(f"area = {area}: needs 0 < low <= high <= 1 and a box of whole cells of the {grid}x{grid} "
                         f"grid within it")
    rng = np.random.default_rng(seed)
    boxes = []
    while len(boxes) < n:
        a, ratio = rng.uniform(lo, hi), np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        h = int(np.clip(round(grid * np.sqrt(a * ratio)), 1, grid))
        w = int(np.clip(round(grid * np.sqrt(a / ratio)), 1, grid))
        if lo <= h * w / grid**2 <= hi:
            top, left = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
            boxes.append((top, left, top + h, left + w))
    return torch.tensor(boxes, dtype=torch.long).reshape(n, 4) * cell


def box_areas(boxes_N4: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each box's area as a fraction of the image, (N,) float."""
    return ((boxes_N4[:, 2] - boxes_N4[:, 0]) * (boxes_N4[:, 3] - boxes_N4[:, 1])).float() / (height * width)


def known_fraction(keep_mask_BHW: torch.Tensor, pn: int) -> torch.Tensor:
    """The known share of each cell of a pn x pn token map, (B, 1, pn, pn) (area average of the mask)."""
    return F.interpolate(keep_mask_BHW.float().unsqueeze(1), size=(pn, pn), mode="area")


def known_tokens(keep_mask_BHW: torch.Tensor, pn: int) -> torch.Tensor:
    """Which tokens of a pn x pn map are known, (B, pn * pn) bool: the cells holding any known pixel."""
    return known_fraction(keep_mask_BHW, pn).flatten(1) > 0


def authors_known_tokens(keep_mask_BHW: torch.Tensor, scales: tuple[int, ...], si: int) -> torch.Tensor:
    """The tokens the authors' demo copies at scale `si`, (B, pn * pn) bool: their edit mask lives on the last
    scale's grid (here: its cells more than half known) and is shrunk bilinearly to each scale, where it must
    exceed 0.5 (`replace_embedding` of demo_zero_shot_edit.ipynb); every token of a scale of <= 3 tokens."""
    pn = scales[si]
    mask_B1hw = (known_fraction(keep_mask_BHW, scales[-1]) > 0.5).float()
    shrunk_Bl = F.interpolate(mask_B1hw, size=(pn, pn), mode="bilinear", align_corners=False).flatten(1)
    return (shrunk_Bl > 0.5) | (pn * pn <= 3)


# ----------------------------------------------------------------------------------------------- VAR

def _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg, procedure, procedures) -> torch.Tensor:
    """Validated labels (None -> the null class); raises ValueError naming the bad argument."""
    if procedure not in procedures:
        raise ValueError(f"procedure {procedure!r}: choose one of {procedures}")
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


def requantized_known(quant, rest_BChw: torch.Tensor, known_B1hw: torch.Tensor,
                      si: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1, line 5, restricted to the known tokens of scale `si`: r_k = Q(interpolate(f - f_hat_{<k}, h_k, w_k)),
    the residual averaged over the known part of each cell only (`known_B1hw`: the known share of each cell of the
    last scale), so that the features of the unknown cells never enter a known token. Returns (tokens, keep)
    (B, pn * pn); keep marks the cells with any known share. (A majority rule at the coarse scales, as the authors',
    kept 1.1 dB less of the known region and gave FID 27.0 against 21.9 for in-painting at the quick profile.)"""
    pn, last = quant.scales[si], si == len(quant.scales) - 1
    if last:
        z_BChw, frac_B1hw = rest_BChw, known_B1hw
    else:
        frac_B1hw = F.interpolate(known_B1hw, size=(pn, pn), mode="area")
        z_BChw = F.interpolate(rest_BChw * known_B1hw, size=(pn, pn), mode="area") / frac_B1hw.clamp_min(1e-6)
    B, C = rest_BChw.shape[:2]
    idx_Bl = quant.nearest_code(z_BChw.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
    keep_Bl = (frac_B1hw > 0).flatten(1)
    return idx_Bl, keep_Bl


def requantize_loop(model: VAR, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig, generator: torch.Generator,
                    steps, f_BChw: torch.Tensor, known_B1hw: torch.Tensor):
    """`sampling.var_loop` whose forced tokens depend on what was generated so far: at every scale the known tokens
    are `requantized_known` of the residual f - f_hat_{<k}, the others are sampled. Returns (idx_Bl, f_hat)."""
    scales, B = model.scales, labels_B.shape[0]
    K, guided = len(scales), sample_cfg.cfg > 0
    quant = vae.quantize
    codebook_VC = quant.embedding.weight
    f_hat = torch.zeros_like(f_BChw)
    idx_Bl, x_RlCv = [], None
    for si, pn in enumerate(scales):
        logits_BlV = guide(steps(model.begin_ends[si][0], x_RlCv), B, guidance_scale(sample_cfg, si, K))
        r_Bl, h_BlC = choose_tokens(logits_BlV, sample_cfg, generator, codebook_VC, si / (K - 1))
        known_Bl, keep_Bl = requantized_known(quant, f_BChw - f_hat, known_B1hw, si)
        r_Bl = torch.where(keep_Bl, known_Bl, r_Bl)
        h_BlC = torch.where(keep_Bl.unsqueeze(-1), F.embedding(known_Bl, codebook_VC), h_BlC)
        idx_Bl.append(r_Bl)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, vae.Cvae, pn, pn)
        f_hat, next_BChw = quant.get_next_autoregressive_input(si, K, f_hat, h_BChw)
        if si < K - 1:
            x_BlCv = next_BChw.flatten(2).transpose(1, 2)
            x_RlCv = torch.cat((x_BlCv, x_BlCv)) if guided else x_BlCv
    return idx_Bl, f_hat


@torch.no_grad()
def edit(model: VAR, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig, generator: torch.Generator,
         procedure: str = "requantize") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Zero-shot in-/out-painting and class-conditional editing (paper Sec. 4.4, Fig. 8) of images in [-1, 1]:
    the known region (keep_mask_BHW = 1) is kept by `procedure` ("requantize" or "authors", see the module), the
    rest sampled. labels None = unconditional (the null class). Returns (idx_Bl, images in [-1, 1])."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg, procedure, VAR_PROCEDURES)
    keep_mask_BHW = keep_mask_BHW.to(images.device)
    with eval_mode(model, vae):
        steps = CachedSteps(model, both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0),
                            model.scales[-1] ** 2)
        if procedure == "authors":
            forced = [(known_Bl, authors_known_tokens(keep_mask_BHW, model.scales, si))
                      for si, known_Bl in enumerate(vae.img_to_idxBl(images))]
            idx_Bl, f_hat = var_loop(model, vae, labels_B, sample_cfg, generator, steps, forced)
        else:
            f_BChw = vae.img_to_f(images).float()
            known_B1hw = known_fraction(keep_mask_BHW, model.scales[-1])
            idx_Bl, f_hat = requantize_loop(model, vae, labels_B, sample_cfg, generator, steps, f_BChw, known_B1hw)
        return idx_Bl, vae.fhat_to_img(f_hat)


# ----------------------------------------------------------------------------------------------- raster AR

def every_known_loop(model: ARTransformer, vae, labels_B: torch.Tensor, sample_cfg: SampleConfig,
                     generator: torch.Generator, known_BL: torch.Tensor, keep_BL: torch.Tensor):
    """`sampling.ar_loop` with the given token wherever keep_BL is True, not only in a prefix: token t is sampled
    from the start token and tokens < t, known or sampled. Returns (idx_Bl, f_hat)."""
    B, L = labels_B.shape[0], model.L
    guided = sample_cfg.cfg > 0
    codebook_VC = vae.quantize.embedding.weight
    steps = CachedSteps(model, both_branches(labels_B, model.num_classes, guided), 1)
    ramp_L, ramp_steps = guidance_ramp(model.scales)
    tokens, x_R1Cv = [], None
    for t in range(L):
        logits_B1V = guide(steps(t, x_R1Cv), B, guidance_scale(sample_cfg, ramp_L[t], ramp_steps))
        idx_B1, h_B1C = choose_tokens(logits_B1V, sample_cfg, generator, codebook_VC,
                                      ramp_L[t] / max(ramp_steps - 1, 1))
        keep_B1, known_B1 = keep_BL[:, t:t + 1], known_BL[:, t:t + 1]
        idx_B1 = torch.where(keep_B1, known_B1, idx_B1)
        h_B1C = torch.where(keep_B1.unsqueeze(-1), F.embedding(known_B1, codebook_VC), h_B1C)
        tokens.append(idx_B1)
        x_R1Cv = torch.cat((h_B1C, h_B1C)) if guided else h_B1C
    idx_Bl = split_scales(torch.cat(tokens, dim=1), model.scales)
    return idx_Bl, vae.quantize.idxBl_to_fhat(idx_Bl)


@torch.no_grad()
def edit_ar(model: ARTransformer, vae, images, keep_mask_BHW, labels, sample_cfg: SampleConfig,
            generator: torch.Generator, procedure: str = "every_known") -> tuple[list[torch.Tensor], torch.Tensor]:
    """The raster AR baseline at the same task. Known tokens: cells holding a known pixel (the re-quantized VAR's rule).
    "every_known" takes the image's token at each of them; "prefix" only before the first unknown token in raster
    order (everything after it is sampled, known or not)."""
    labels_B = _check_edit_args(model, images, keep_mask_BHW, labels, sample_cfg, procedure, AR_PROCEDURES)
    if len(model.scales) != 1:
        raise ValueError(f"edit_ar edits with the raster AR (one token map), got an AR over the scales "
                         f"{model.scales}")
    with eval_mode(model, vae):
        (known_BL,) = vae.img_to_idxBl(images)
        keep_BL = known_tokens(keep_mask_BHW.to(known_BL.device), model.scales[0])
        if procedure == "prefix":
            prefix_B = torch.where(keep_BL.all(dim=1), model.L, (~keep_BL).int().argmax(dim=1))
            idx_Bl, f_hat = ar_loop(model, vae, labels_B, sample_cfg, generator, (known_BL, prefix_B))
        else:
            idx_Bl, f_hat = every_known_loop(model, vae, labels_B, sample_cfg, generator, known_BL, keep_BL)
        return idx_Bl, vae.fhat_to_img(f_hat)


@torch.no_grad()
def edit_many(model: VAR | ARTransformer, vae, images: torch.Tensor, keep_mask_BHW: torch.Tensor,
              labels: torch.Tensor | None, sample_cfg: SampleConfig, seed: int, stream: int, procedure: str,
              batch_size: int = 256, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`edit` (VAR) or `edit_ar` (AR) with `procedure` over all N images, `batch_size` at a time on `device` (None:
    the model's), batch i drawing from `batch_generator(seed + stream, i, device)`. Returns (tokens (N, L) int64,
    the edited images (N, C, H, W) float in [-1, 1]), both on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    edit_fn = edit_ar if isinstance(model, ARTransformer) else edit
    device = model.lvl_1L.device if device is None else torch.device(device)
    tokens, outs = [], []
    for i, rows in enumerate(tqdm(torch.arange(len(images)).split(batch_size), desc="editing", leave=False)):
        labels_B = None if labels is None else labels[rows].to(device)
        idx_Bl, images_B = edit_fn(model, vae, images[rows].to(device), keep_mask_BHW[rows].to(device), labels_B,
                                   sample_cfg, batch_generator(seed + stream, i, device), procedure)
        tokens.append(torch.cat(idx_Bl, dim=1).cpu())
        outs.append(images_B.cpu())
    return torch.cat(tokens), torch.cat(outs)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 256,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The tokenizer's own reconstruction (Alg. 1 then Alg. 2) of images in [-1, 1]: (f_hat (N, Cvae, h_K, w_K),
    images (N, C, H, W)), on the CPU."""
    f_hats = [vae.quantize.residual_quantize(vae.img_to_f(x.to(device)).float()).f_hats[-1]
              for x in images.split(batch_size)]
    return torch.cat(f_hats).cpu(), torch.cat([vae.fhat_to_img(f_hat).cpu() for f_hat in f_hats])


@torch.no_grad()
def with_known_latents(vae, tokens_NL: torch.Tensor, tokenizer_fhat: torch.Tensor, keep_mask_NHW: torch.Tensor,
                       batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """An edit decoded with the tokenizer's own latents (`reconstruct`'s f_hat) in every cell holding a known pixel
    and the edit's (from its tokens, sampled without `smooth`) elsewhere. What its known region loses against the
    tokenizer's reconstruction is lost even with exact known latents: the decoder's view of the generated cells (its
    convolutions and mid-block attention reach across the boundary). Images in [-1, 1] on the CPU."""
    quant, outs = vae.quantize, []
    for rows in torch.arange(len(tokens_NL)).split(batch_size):
        f_hat = quant.idxBl_to_fhat(split_scales(tokens_NL[rows].to(device), quant.scales))
        known = (known_fraction(keep_mask_NHW[rows].to(device), quant.scales[-1]) > 0).float()
        outs.append(vae.fhat_to_img(torch.lerp(f_hat, tokenizer_fhat[rows].to(device), known)).cpu())
    return torch.cat(outs)


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask_BHW: torch.Tensor) -> torch.Tensor:
    """PSNR per image over the pixels where mask_BHW is 1 (all channels), (B,), in dB for images in [-1, 1] (data
    range 2); nan for an image with no such pixel."""
    if x.shape != y.shape or x.ndim != 4 or tuple(mask_BHW.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"masked_psnr: x {tuple(x.shape)} and y {tuple(y.shape)} must be equal (B, C, H, W) and "
                         f"mask_BHW {tuple(mask_BHW.shape)} (B, H, W)")
    m_BCHW = mask_BHW.double().unsqueeze(1).expand(x.shape)
    mse_B = ((x.double() - y.double()).square() * m_BCHW).flatten(1).sum(1) / m_BCHW.flatten(1).sum(1)
    return (10 * torch.log10(DATA_RANGE**2 / mse_B)).float()


# ----------------------------------------------------------------------------------------------- the protocol

class Task(NamedTuple):
    name: str
    mode: str  # "inpaint" (the box is unknown) | "outpaint" (the border is unknown)
    condition: str  # "none" (the null class) | "target" (a class other than the image's) | "own" (the image's)


TASKS = (
    Task("in-painting", "inpaint", "none"),
    Task("out-painting", "outpaint", "none"),
    Task("class editing", "inpaint", "target"),
    Task("class editing, own class (control)", "inpaint", "own"),
)
FILL_TASKS = ("in-painting", "out-painting")
CLASS_TASK, OWN_CLASS_TASK = TASKS[2].name, TASKS[3].name
UNEDITED = "unedited reconstruction (control)"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The edits every method gets: one box per image, a target class other than the image's, `n_seeds` edits."""

    boxes: torch.Tensor  # (N, 4) long: top, left, bottom, right in pixels
    labels: torch.Tensor  # (N,) the images' own classes
    targets: torch.Tensor  # (N,) the target classes of class-conditional editing, != labels
    resolution: int
    cell: int  # pixels per token cell of the last scale: the boxes lie on this grid
    n_seeds: int

    @property
    def areas(self) -> torch.Tensor:
        return box_areas(self.boxes, self.resolution, self.resolution)

    def keep_mask(self, task: Task) -> torch.Tensor:
        return box_mask(self.resolution, self.resolution, self.boxes, task.mode)

    def interior_mask(self, task: Task) -> torch.Tensor:
        """The known pixels more than one token cell away from the unknown region (the seam's neighbourhood left
        out: there the decoder reads the generated cells)."""
        unknown_N1HW = 1 - self.keep_mask(task).unsqueeze(1)
        return 1 - F.max_pool2d(unknown_N1HW, 2 * self.cell + 1, stride=1, padding=self.cell).squeeze(1)

    def task_labels(self, task: Task) -> torch.Tensor | None:
        return {"none": None, "target": self.targets, "own": self.labels}[task.condition]


def make_protocol(labels: torch.Tensor, num_classes: int, resolution: int, cell: int, seed: int,
                  n_seeds: int = SAMPLING_SEEDS, area: tuple[float, float] = BOX_AREA) -> Protocol:
    """Boxes (`random_boxes` on the cell grid) and target classes (uniform over the other classes) for the images
    of `labels`, all from `seed`: independent of the training seed, so every model edits the same boxes."""
    if num_classes < 2:
        raise ValueError(f"num_classes = {num_classes}: class-conditional editing needs at least two classes")
    if n_seeds < 1:
        raise ValueError(f"n_seeds = {n_seeds}: at least one edit per image")
    labels = torch.as_tensor(labels).long().cpu()
    box_seed, class_seed = np.random.SeedSequence(seed).generate_state(2)
    boxes = random_boxes(len(labels), resolution, cell, int(box_seed), area)
    shift = torch.randint(1, num_classes, labels.shape, generator=torch.Generator().manual_seed(int(class_seed)))
    return Protocol(boxes, labels, (labels + shift) % num_classes, resolution, cell, n_seeds)


def median_band(areas) -> np.ndarray:
    """The boxes "at the median area": a bool array marking those between the `MEDIAN_BAND` quantiles of the areas
    (inclusive)."""
    areas = np.asarray(areas)
    lo, hi = np.quantile(areas, MEDIAN_BAND)
    return (areas >= lo) & (areas <= hi)


class Method(NamedTuple):
    name: str  # as the tables and figures show it
    model: VAR | ARTransformer | None  # None: the unedited reconstruction (a control)
    vae: object
    procedure: str  # one of VAR_PROCEDURES or AR_PROCEDURES

    @property
    def family(self) -> str:
        return "AR" if isinstance(self.model, ARTransformer) else "VAR"


class Results(NamedTuple):
    table: pd.DataFrame  # one row per (training seed, task, method): see `summarize`
    outputs: pd.DataFrame  # one row per edit: seed, task, method, image, sample, area, known_psnr, ..., success
    examples: dict  # (task name, method name) -> the first training seed's first edits (sample 0), (n_show, C, H, W)


@torch.no_grad()
def evaluate(runs, images: torch.Tensor, protocol: Protocol, sample_cfg: SampleConfig, classifier=None, real=None,
             batch_size: int = 256, n_show: int = 4) -> Results:
    """Every task of `TASKS` for every method of `runs` = [(study, methods)], one per training seed (the study gives
    the seed, the device and the sampling stream `study.sampling_seed(500)`): `protocol.n_seeds` edits of each image.
    A method edits the images of all tasks in one stream of batches (the raster AR's cost is per batch, one step
    per token). With a classifier (and `real`, the test split): the FID of the in- and out-painted outputs against
    `real` (nan with too few outputs for FID) and the class-editing outputs' predicted classes, beside the unedited
    reconstruction by VAR's tokenizer (the chance that a box does nothing)."""
    S, N = protocol.n_seeds, len(images)
    keeps = [protocol.keep_mask(task).repeat(S, 1, 1) for task in TASKS]
    frames, fids, examples, recons = [], {}, {}, {}
    for study, methods in runs:
        for method in methods:
            if id(method.vae) not in recons:
                recons[id(method.vae)] = reconstruct(method.vae, images, batch_size, study.device)
            null = torch.full((N,), method.model.num_classes)
            labels = torch.cat([(protocol.task_labels(task) if task.condition != "none" else null).repeat(S)
                                for task in TASKS])
            tokens, out = edit_many(method.model, method.vae, images.repeat(S * len(TASKS), 1, 1, 1), torch.cat(keeps),
                                    labels, sample_cfg, study.sampling_seed(500), 0, method.procedure, batch_size,
                                    study.device)
            tok_fhat, recon = recons[id(method.vae)]
            for task, keep, rows in zip(TASKS, keeps, torch.arange(len(out)).split(S * N), strict=True):
                frame = _edit_records(study.seed, task, method, out[rows], images, recon, protocol, classifier,
                                      study.device)
                if task.name in FILL_TASKS:
                    exact = with_known_latents(method.vae, tokens[rows], tok_fhat.repeat(S, 1, 1, 1), keep,
                                               batch_size, study.device)
                    frame["exact_latents_psnr"] = masked_psnr(exact, images.repeat(S, 1, 1, 1), keep).numpy()
                    if classifier is not None:
                        fids[(study.seed, task.name, method.name)] = _fid(out[rows], real, classifier, study.device)
                frames.append(frame)
                examples.setdefault((task.name, method.name), out[rows][:min(n_show, N)])  # the first seed's
        if classifier is not None:
            var_vae = next(m.vae for m in methods if m.family == "VAR")
            unedited = Method(UNEDITED, None, var_vae, "unedited")
            frames.append(_edit_records(study.seed, TASKS[2], unedited, recons[id(var_vae)][1], images,
                                        recons[id(var_vae)][1], protocol, classifier, study.device))
    outputs = pd.concat(frames, ignore_index=True)
    return Results(summarize(outputs, fids), outputs, examples)


def _fid(out: torch.Tensor, real, classifier, device) -> float:
    if min(len(out), len(real)) <= classifier.feature_dim:
        return float("nan")  # FID needs more images than feature dimensions (smoke runs)
    return generation_metrics(to_uint8(out), real, classifier, device, isc=False, kid=False,
                              prc=False)[metric_name("FID", len(out), classifier.label)]


def _edit_records(seed: int, task: Task, method: Method, out: torch.Tensor, images: torch.Tensor,
                  recon: torch.Tensor, protocol: Protocol, classifier, device) -> pd.DataFrame:
    """One row per edit in `out` ((S * N, ...), sample-major): the known region's PSNR against the image, the
    tokenizer's reconstruction's on the same image, and for class editing (with a classifier) the predicted class
    and whether it is the target."""
    S, N = len(out) // len(images), len(images)
    keep_NHW, interior_NHW = protocol.keep_mask(task), protocol.interior_mask(task)
    frame = pd.DataFrame({
        "seed": seed, "task": task.name, "method": method.name,
        "family": "control" if method.model is None else method.family,
        "image": np.tile(np.arange(N), S), "sample": np.repeat(np.arange(S), N),
        "area": protocol.areas.repeat(S).numpy(),
        "known_psnr": masked_psnr(out, images.repeat(S, 1, 1, 1), keep_NHW.repeat(S, 1, 1)).numpy(),
        "tokenizer_psnr": masked_psnr(recon, images, keep_NHW).repeat(S).numpy(),
        "interior_psnr": masked_psnr(out, images.repeat(S, 1, 1, 1), interior_NHW.repeat(S, 1, 1)).numpy(),
        "tokenizer_interior_psnr": masked_psnr(recon, images, interior_NHW).repeat(S).numpy(),
        "target": protocol.targets.repeat(S).numpy(),
    })
    if classifier is not None and task.condition != "none":
        frame["predicted"] = predict(classifier.model, to_uint8(out), device).numpy()
        frame["success"] = frame["predicted"] == frame["target"]
    return frame


def summarize(outputs: pd.DataFrame, fids: dict) -> pd.DataFrame:
    """One row per (training seed, task, method): known_psnr and tokenizer_psnr (means of per-image dB over every
    edit), psnr_gap = their difference, preserves = psnr_gap >= -PRESERVATION_DB, interior_psnr_gap the same
    difference more than a token cell from the unknown region (`Protocol.interior_mask`); for in- and out-painting
    FID and exact_latents_psnr (`with_known_latents`: the known-region PSNR left by the decoder's view of the
    generated cells with the tokenizer's exact latents in the known cells); for class editing (with a classifier)
    success, the share of edits classified as the target class, over all boxes and at the median area
    (`median_band`). Rows in the order of `TASKS`, then of the methods."""
    rows = []
    for (seed, task, method), g in outputs.groupby(["seed", "task", "method"], sort=False):
        known, tok = g["known_psnr"].mean(), g["tokenizer_psnr"].mean()
        row = {"seed": seed, "task": task, "method": method, "family": g["family"].iloc[0], "edits": len(g),
               "known_psnr": known, "tokenizer_psnr": tok, "psnr_gap": known - tok,
               "preserves": bool(known - tok >= -PRESERVATION_DB),
               "interior_psnr_gap": _finite_gap(g["interior_psnr"], g["tokenizer_interior_psnr"]),
               "exact_latents_psnr": g["exact_latents_psnr"].mean() if "exact_latents_psnr" in g else float("nan"),
               "FID": fids.get((seed, task, method), float("nan"))}
        if "success" in g and g["success"].notna().all():
            success = g["success"].to_numpy(dtype=float)
            row["success"] = success.mean()
            row["success_at_median_area"] = success[median_band(g["area"])].mean()
        rows.append(row)
    order = {task.name: i for i, task in enumerate(TASKS)}
    table = pd.DataFrame(rows)
    return table.sort_values(["seed", "task"], key=lambda c: c.map(order) if c.name == "task" else c,
                             kind="stable").reset_index(drop=True)


def _finite_gap(psnr: pd.Series, reference: pd.Series) -> float:
    """Mean dB of `psnr` minus that of `reference` over the edits where both are finite: an interior of black
    background that both reproduce exactly has an infinite PSNR (seen at the quick profile), which says nothing
    about the gap."""
    finite = np.isfinite(psnr) & np.isfinite(reference)
    return float(psnr[finite].mean() - reference[finite].mean())


def success_curve(outputs: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    """Class-conditional editing's success over box area: the share of edits classified as the target class in
    `bins` equal-width area bins, per task and method (all training seeds pooled); columns task, method, area (bin
    centre), success, edits."""
    edits = outputs[outputs["task"].isin([CLASS_TASK, OWN_CLASS_TASK])]
    edits = edits.assign(success=edits["success"].astype(float))
    edges = np.linspace(edits["area"].min(), edits["area"].max() + 1e-9, bins + 1)
    which = np.clip(np.digitize(edits["area"], edges) - 1, 0, bins - 1)
    grouped = edits.assign(area=(edges[which] + edges[which + 1]) / 2).groupby(["task", "method", "area"], sort=False)
    curve = grouped["success"].agg(success="mean", edits="size").reset_index()
    order = {key: i for i, key in enumerate(dict.fromkeys(zip(edits["task"], edits["method"], strict=True)))}
    rank = [order[key] for key in zip(curve["task"], curve["method"], strict=True)]
    return curve.assign(rank=rank).sort_values(["rank", "area"]).drop(columns="rank").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- the verdicts

PAPER = "qualitative (Sec. 4.4, Fig. 8)"
FILL_RULE = (f"{REPRODUCED} when VAR's FID is below the fair AR's (every known token) by the one-sided Welch t-test "
             f"over {MIN_SEEDS}+ training seeds (p < {ALPHA}) and VAR preserves the known region (its known-region "
             f"PSNR no more than {PRESERVATION_DB:g} dB below its tokenizer's reconstruction, in every seed); "
             f"{NOT_REPRODUCED} when VAR does not preserve it, whatever its FID; {REVERSED} when VAR's FID is above "
             f"the fair AR's (p < {ALPHA}); else {INCONCLUSIVE}; {FEW_SEEDS} with fewer than {MIN_SEEDS}")
CLASS_RULE = (f"{REPRODUCED} when VAR's success rate (edits classified as the target class) at the median box area "
              f"exceeds the unedited reconstruction's, the same box re-sampled with the image's own class and the "
              f"fair AR's, each by a one-sided Welch t-test over {MIN_SEEDS}+ training seeds (p < {ALPHA}); "
              f"{REVERSED} when it is below the fair AR's (p < {ALPHA}); else {INCONCLUSIVE}; {FEW_SEEDS} with fewer "
              f"than {MIN_SEEDS}")


def fill_claim(claim: str, var_fid: list[float], ar_fid: list[float], var_psnr_gap: list[float]) -> Claim:
    """In- or out-painting (`FILL_RULE`): ours is VAR's FID minus the fair AR's, one value per training seed."""
    c = compare(claim, PAPER, ar_fid, var_fid, better="lower", rule=FILL_RULE)
    worst = float(np.min(var_psnr_gap))
    preserved = worst >= -PRESERVATION_DB
    test = f"{c.test}; VAR's known-region PSNR gap {worst:+.2f} dB at worst (bound -{PRESERVATION_DB:g} dB)"
    return dataclasses.replace(c, test=test, verdict=c.verdict if preserved else NOT_REPRODUCED)


def class_edit_claim(claim: str, var: list[float], unedited: list[float], own_class: list[float],
                     ar: list[float]) -> Claim:
    """Class-conditional editing (`CLASS_RULE`): ours is VAR's success rate at the median area, one value per
    training seed of each: VAR, the unedited reconstruction, own-class re-sampling, the fair AR."""
    controls = {"unedited reconstruction": unedited, "own class": own_class, "fair AR": ar}
    p = {name: one_sided_p(values, var, "greater") for name, values in controls.items()}
    seeds = min(len(v) for v in (var, *controls.values()))
    if seeds < MIN_SEEDS:
        verdict = FEW_SEEDS
    elif all(pv < ALPHA for pv in p.values()):
        verdict = REPRODUCED
    elif one_sided_p(ar, var, "less") < ALPHA:
        verdict = REVERSED
    else:
        verdict = INCONCLUSIVE
    mean, se = mean_se(var)
    test = "one-sided Welch t-tests, VAR above each: " + ", ".join(
        f"{name} {np.mean(controls[name]):.3g} (p = {pv:.3g})" for name, pv in p.items())
    return Claim(claim, PAPER, mean, se, seeds, test, float(np.max(list(p.values()))), verdict, CLASS_RULE)


def zero_shot_claims(table: pd.DataFrame, ar_method: str, var_methods: list[str]) -> list[Claim]:
    """The claims of notebook 05 from `summarize`'s table: per VAR method (procedure), in- and out-painting
    (`fill_claim`) and class-conditional editing (`class_edit_claim`), against the fair AR `ar_method`."""
    def per_seed(task: str, method: str, column: str) -> list[float]:
        rows = table[(table["task"] == task) & (table["method"] == method)].sort_values("seed")
        return rows[column].tolist()

    claims = []
    for var in var_methods:
        for task in FILL_TASKS:
            claims.append(fill_claim(f"{task} ({var})", per_seed(task, var, "FID"), per_seed(task, ar_method, "FID"),
                                     per_seed(task, var, "psnr_gap")))
        if "success_at_median_area" in table:
            claims.append(class_edit_claim(f"class-conditional editing ({var})",
                                           per_seed(CLASS_TASK, var, "success_at_median_area"),
                                           per_seed(CLASS_TASK, UNEDITED, "success_at_median_area"),
                                           per_seed(OWN_CLASS_TASK, var, "success_at_median_area"),
                                           per_seed(CLASS_TASK, ar_method, "success_at_median_area")))
    return claims


# ----------------------------------------------------------------------------------------------- figures

def paint_unknown(images: torch.Tensor, keep_mask_BHW: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as RGB with the unknown pixels (keep 0) in `UNKNOWN_RGB`, a colour grayscale never has."""
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    colour = torch.tensor(UNKNOWN_RGB, dtype=rgb.dtype).view(1, 3, 1, 1)
    return torch.where(keep_mask_BHW.unsqueeze(1).bool(), rgb, colour)


def edits_figure(rows: list[tuple[str, torch.Tensor]], boxes_N4: torch.Tensor, title: str | None = None):
    """One row of images per (label, images (n, C, H, W) in [-1, 1]), one column per image, every box outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .report import image_grid

    n, (_, _, H, W) = len(boxes_N4), rows[0][1].shape
    grid = torch.cat([x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x for _, x in rows])
    fig, ax = plt.subplots(figsize=(1.0 * n + 2.2, 1.0 * len(rows) + 0.5))
    image_grid(ax, grid, nrow=n, title=title, row_labels=[label for label, _ in rows])
    for r in range(len(rows)):
        for c, (top, left, bottom, right) in enumerate(boxes_N4.tolist()):
            x0, y0 = 1 + c * (W + 1), 1 + r * (H + 1)  # make_grid's padding of 1 around each image
            ax.add_patch(Rectangle((x0 + left - 0.5, y0 + top - 0.5), right - left, bottom - top, fill=False,
                                   edgecolor="#00d0ff", linewidth=0.8))
    return fig


def fidelity_figure(table: pd.DataFrame):
    """Known-region PSNR (against the tokenizer's, and the bound 1 dB below it) and, where measured, FID per method,
    for in- and out-painting; means over training seeds."""
    import matplotlib.pyplot as plt

    fills = table[table["task"].isin(FILL_TASKS)].groupby(["task", "method"], sort=False).mean(numeric_only=True)
    has_fid = fills["FID"].notna().any()
    fig, axes = plt.subplots(1 + has_fid, len(FILL_TASKS), figsize=(4.2 * len(FILL_TASKS), 3.0 * (1 + has_fid)),
                             squeeze=False)
    for col, task in enumerate(FILL_TASKS):
        t = fills.loc[task]
        y = np.arange(len(t))
        ax = axes[0, col]
        ax.barh(y, t["known_psnr"], color="tab:blue")
        ax.scatter(t["tokenizer_psnr"], y, marker="|", s=300, color="k", label="tokenizer's reconstruction")
        ax.scatter(t["tokenizer_psnr"] - PRESERVATION_DB, y, marker="|", s=300, color="tab:red",
                   label=f"{PRESERVATION_DB:g} dB below (bound)")
        ax.set_yticks(y, t.index, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("known-region PSNR (dB)")
        ax.set_xlim(min(t["known_psnr"].min(), t["tokenizer_psnr"].min()) - 3, t["tokenizer_psnr"].max() + 1)
        ax.set_title(task)
        if has_fid:
            axes[1, col].barh(y, t["FID"], color="tab:orange")
            axes[1, col].set_yticks(y, t.index, fontsize=7)
            axes[1, col].invert_yaxis()
            axes[1, col].set_xlabel("FID of the whole output (lower is better)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2,
               bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return fig


def success_figure(curve: pd.DataFrame):
    """Class-conditional editing's success over box area: one colour per method, solid for the target class,
    dashed for the own-class control, the unedited reconstruction dotted black."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    colours = {}
    for (task, method), g in curve.groupby(["task", "method"], sort=False):
        if method == UNEDITED:
            ax.plot(g["area"], g["success"], ":", color="k", label=method)
            continue
        colour = colours.setdefault(method, f"C{len(colours)}")
        own = task == OWN_CLASS_TASK
        ax.plot(g["area"], g["success"], "--" if own else "-o", ms=3, color=colour,
                label=f"{method}, own class (control)" if own else method)
    ax.set_xlabel("box area (fraction of the image)")
    ax.set_ylabel("classified as the target class")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig
