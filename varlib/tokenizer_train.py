"""Training and evaluation of the multi-scale VQVAE tokenizer.

The authors released no tokenizer training code (their issues #5, #22, #28, #105 ask for it); this is a documented
recipe in the VQGAN family: loss = L2 reconstruction + the multi-scale VQ loss (`MultiScaleQuantizer.forward`)
+ lpips_weight * a perceptual term + gan_weight * hinge GAN with a small PatchGAN discriminator switched on after
gan_start * steps. The perceptual term (`TokenizerTrainConfig.perceptual`, built by `perceptual_loss`) is LPIPS when
the user gives its AlexNet backbone's weights, else the distance on the study's classifier features
(`classifier.PerceptualDistance`); it is never dropped silently, and the history's `perceptual` column records it.
Codes unused over a window of steps are restarted from recent quantizer inputs, against the codebook collapse at the
coarse scales that users report (Infinity#80, VAR#54).

`train_tokenizer` is the loop; `Study.tokenizer` caches what it trains.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import TrainState
from .classifier import Classifier, PerceptualDistance
from .config import TokenizerConfig, TokenizerTrainConfig
from .data import ImageDataset, to_float, to_uint8
from .device import autocast
from .metrics import load_lpips, lpips_distance, psnr, rfid, ssim
from .parallel import data_parallel, gather_batch, mean_over_ranks, setup_distributed, share_of, sum_over_ranks
from .tokenizer import VQVAE, cat_scales, code_hits

log = logging.getLogger(__name__)

USAGE_IMAGES = 1000  # held-out images whose tokens measure the stored codebook usage


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator determined by `parts` alone (seed, step, purpose), so that a resumed run draws what an
    uninterrupted one draws without carrying generator state."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The image indices of `step`: consecutive slices of one seeded permutation per epoch (wrapping over epochs)."""
    first = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(first + len(out), n)
        out += epoch_permutation(n, seed, epoch)[offset:offset + batch_size - len(out)]
    return torch.tensor(out)


@functools.lru_cache(maxsize=2)
def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=seeded_generator(seed, 0, epoch)).tolist()


# ----------------------------------------------------------------------------------------------- auxiliary losses

class PatchDiscriminator(nn.Module):
    """A small PatchGAN (Isola et al. 2017): strided 4x4 convs with LeakyReLU, one real/fake logit per patch."""

    def __init__(self, in_channels: int, ch: int = 64, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(n_layers - 1):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.GroupNorm(32, 2 * ch), nn.LeakyReLU(0.2)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.net(x_BCHW)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def perceptual_loss(train_cfg: TokenizerTrainConfig, device: torch.device | str,
                    classifier: Classifier | None = None) -> nn.Module | None:
    """The perceptual term's network for `train_cfg.perceptual_term`, frozen on `device`: LPIPS on the AlexNet
    weights at `train_cfg.lpips_backbone` (FileNotFoundError naming the path when they are not there),
    `PerceptualDistance` on `classifier`'s features (ValueError without one: `Study.classifier()`), or None."""
    term = train_cfg.perceptual_term
    if term == "lpips":
        return load_lpips("alex", device, weights=train_cfg.lpips_backbone)
    if term == "classifier":
        if classifier is None:
            raise ValueError("TokenizerTrainConfig.perceptual = 'classifier' needs the feature classifier: pass "
                             "classifier=Study.classifier() (Study.tokenizer does)")
        return PerceptualDistance(classifier.model).to(device)
    return None


def check_perceptual(train_cfg: TokenizerTrainConfig, perceptual: nn.Module | None) -> None:
    """ValueError unless `perceptual` is the network of the config's perceptual term (None for "none")."""
    term = train_cfg.perceptual_term
    if term == "none":
        if perceptual is not None:
            raise ValueError(f"a perceptual network was passed, but the loss has no perceptual term (perceptual = "
                             f"{train_cfg.perceptual!r}, lpips_weight = {train_cfg.lpips_weight}): it would be unused")
        return
    if perceptual is None:
        raise ValueError(f"TokenizerTrainConfig.perceptual = {term!r} needs its network: pass "
                         f"perceptual=perceptual_loss(train_cfg, device, classifier) (Study.tokenizer does), or train "
                         f"with perceptual='none'")
    if isinstance(perceptual, PerceptualDistance) != (term == "classifier"):
        raise ValueError(f"TokenizerTrainConfig.perceptual = {term!r}, but the network passed is a "
                         f"{type(perceptual).__name__}; build it with perceptual_loss(train_cfg, device, classifier)")


# ----------------------------------------------------------------------------------------------- training

class TokenizerStep:
    """One optimisation step of the tokenizer (and, once the GAN is on, of the discriminator) on an image batch.

    `perceptual` is the network of the config's perceptual term (`perceptual_loss`; None only for "none").
    Returns the step's losses as device tensors (no host sync) and the tokens. With `train_cfg.compile` the encoder,
    decoder and discriminator run through torch.compile (in place: state-dict names are unchanged); the quantizer
    and the perceptual network stay eager. benchmarks/bench_tokenizer.py measures both."""

    def __init__(self, vae: VQVAE, disc: PatchDiscriminator, train_cfg: TokenizerTrainConfig,
                 device: torch.device, world: int = 1, perceptual: nn.Module | None = None):
        check_perceptual(train_cfg, perceptual)
        self.vae, self.disc, self.cfg = vae, disc, train_cfg
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(vae.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                                     weight_decay=train_cfg.weight_decay, fused=fused)
        self.opt_d = torch.optim.AdamW(disc.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                                       weight_decay=train_cfg.weight_decay, fused=fused)
        self.device = device
        if train_cfg.compile:
            for module in (vae.encoder, vae.decoder, disc):
                module.compile()
        # under torchrun: gradients averaged over the ranks; the quantizer reduces its code hits itself, so its
        # buffer is equal on every rank and need not be broadcast
        self.vae_net = data_parallel(vae, device, world, broadcast_buffers=False)
        self.disc_net = data_parallel(disc, device, world)

    def __call__(self, x: torch.Tensor, use_gan: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        vae, disc, cfg = self.vae, self.disc, self.cfg
        with autocast(self.device):
            rec, vq_loss, idx_Bl = self.vae_net(x)
        rec = rec.float()
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + vq_loss
        losses = {"rec": rec_loss, "vq": vq_loss}
        if self.perceptual is not None:  # the classifier reads the data's channels; LPIPS wants RGB
            pair = (rec, x) if cfg.perceptual == "classifier" else [t.expand(-1, 3, -1, -1) for t in (rec, x)]
            losses["perceptual"] = self.perceptual(*pair).mean()
            loss = loss + cfg.lpips_weight * losses["perceptual"]
        if use_gan:
            with autocast(self.device):
                losses["gan_g"] = -disc(rec).float().mean()
            loss = loss + cfg.gan_weight * losses["gan_g"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        self.opt.step()
        if use_gan:
            with autocast(self.device):  # real and fake in one call: one forward per backward, as DDP expects
                real, fake = self.disc_net(torch.cat((x, rec.detach()))).float().chunk(2)
                losses["gan_d"] = hinge_d_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            losses["gan_d"].backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            self.opt_d.step()
        losses["loss"] = loss
        return {k: v.detach() for k, v in losses.items()}, idx_Bl


def train_tokenizer(images_u8: torch.Tensor, tok_cfg: TokenizerConfig, train_cfg: TokenizerTrainConfig,
                    device: torch.device | str, progress: bool = True, *, perceptual: nn.Module | None = None,
                    resume: TrainState | None = None, snapshot_every: int = 250,
                    stop_at: int | None = None) -> tuple[VQVAE, pd.DataFrame]:
    """Train a tokenizer from scratch on uint8 images (N, C, H, W), or resume an interrupted run from `resume`.
    `perceptual` is the network of `train_cfg.perceptual_term` (`perceptual_loss`); ValueError, before any step,
    when it does not fit the config.

    Returns the model (train mode) and a per-step history (step, rec, vq, perceptual, gan_g, gan_d, loss, usage,
    restarted) whose `attrs["perceptual"]` names the perceptual term ("classifier" | "lpips" | "none"). With
    `resume`, a snapshot is written every `snapshot_every` steps and picked up by the next call; `stop_at` ends the
    run early after that many steps, leaving a snapshot to resume from (time-limited sessions)."""
    rank, world, device = setup_distributed(torch.device(device))
    if tuple(images_u8.shape[1:]) != (tok_cfg.in_channels, tok_cfg.resolution, tok_cfg.resolution):
        raise ValueError(f"images of shape {tuple(images_u8.shape[1:])} do not fit the tokenizer "
                         f"({tok_cfg.in_channels} channels, {tok_cfg.resolution} px); Study adapts the tokenizer "
                         "to the data")
    torch.manual_seed(train_cfg.seed)
    vae = VQVAE(tok_cfg).to(device).train()
    disc = PatchDiscriminator(tok_cfg.in_channels).to(device).train()
    images_u8 = images_u8.to(device)
    hits_V = torch.zeros(tok_cfg.vocab_size, device=device)
    history: list[dict] = []
    start = 0

    snap = resume.load() if resume is not None else None
    train_step = TokenizerStep(vae, disc, train_cfg, device, world, perceptual)
    if snap is not None:
        vae.load_state_dict(snap["vae"])
        disc.load_state_dict(snap["disc"])
        train_step.opt.load_state_dict(snap["opt"])
        train_step.opt_d.load_state_dict(snap["opt_d"])
        hits_V.copy_(snap["hits_V"])
        vae.quantize.record_hit = snap["record_hit"]
        torch.set_rng_state(snap["rng"])
        history, start = snap["history"], snap["step"]

    end = train_cfg.steps if stop_at is None else min(stop_at, train_cfg.steps)
    stopping_early = end < train_cfg.steps
    gan_from = int(train_cfg.gan_start * train_cfg.steps) if train_cfg.gan_weight > 0 else math.inf
    bar = tqdm(range(start, end), initial=start, total=train_cfg.steps, desc="tokenizer",
               disable=not progress or rank != 0)
    pending: list[tuple[int, dict, int]] = []  # (step, its losses as device tensors, restarted): read every 10 steps

    def flush() -> None:
        if pending:
            values = mean_over_ranks(torch.stack([v for _, row, _ in pending for v in row.values()])).tolist()
            for step_, row, restarted_ in pending:
                vals, values = values[:len(row)], values[len(row):]
                history.append({"step": step_, **dict(zip(row, vals, strict=True)), "restarted": restarted_})
            pending.clear()

    for step in bar:
        # every rank draws the same global batch (seeded by step) and trains on its own slice of it
        idx = share_of(batch_indices(step, train_cfg.batch_size, len(images_u8), train_cfg.seed), rank, world)
        idx = idx.to(device, non_blocking=True)
        x = to_float(images_u8[idx])
        if step == 0:  # data-dependent codebook init: every code starts as a residual that the quantizer sees
            restart_from_batch(vae, gather_batch(x), torch.ones_like(hits_V, dtype=torch.bool),
                               seeded_generator(train_cfg.seed, 2))
        losses, idx_Bl = train_step(x, step >= gan_from)
        step_hits_V = sum_over_ranks(code_hits(cat_scales(idx_Bl), tok_cfg.vocab_size))  # over the global batch
        hits_V += step_hits_V
        restarted = 0
        if train_cfg.restart_dead_codes_every and (step + 1) % train_cfg.restart_dead_codes_every == 0:
            # from the residuals of the whole global batch, the same draw on every rank: codebooks stay equal
            restarted = restart_from_batch(vae, gather_batch(x), hits_V == 0,
                                           seeded_generator(train_cfg.seed, 1, step))
            hits_V.zero_()
        pending.append((step, {**losses, "usage": (step_hits_V > 0).float().mean()}, restarted))
        if step % 10 == 0:
            flush()
            last = history[-1]
            bar.set_postfix(loss=f"{last['loss']:.4f}", rec=f"{last['rec']:.4f}", vq=f"{last['vq']:.4f}",
                            usage=f"{last['usage']:.2f}")
        if resume is not None and ((step + 1) % snapshot_every == 0 or (stopping_early and step + 1 == end)):
            flush()
            if rank == 0:
                resume.save({"step": step + 1, "vae": vae.state_dict(), "disc": disc.state_dict(),
                                "opt": train_step.opt.state_dict(), "opt_d": train_step.opt_d.state_dict(),
                                "hits_V": hits_V.clone(), "record_hit": vae.quantize.record_hit,
                                "rng": torch.get_rng_state(), "history": history})
    flush()
    bar.close()
    history = pd.DataFrame(history)
    history.attrs["perceptual"] = train_cfg.perceptual_term
    return vae, history


@torch.no_grad()
def restart_from_batch(vae: VQVAE, x_BCHW: torch.Tensor, dead_V: torch.Tensor, generator: torch.Generator) -> int:
    """Restart the dead codes from the residuals that the quantizer saw on this batch (all scales pooled)."""
    codes = vae.quantize.residual_quantize(vae.img_to_f(x_BCHW).float())
    n = vae.restart_dead_codes(dead_V, torch.cat(codes.z_NCs), generator)
    if n:
        log.debug("restarted %d dead codes", n)
    return n


# ----------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_tokenizer(vae: VQVAE, dataset: ImageDataset, device: torch.device | str, n: int | None = None,
                       batch_size: int = 256, classifier: Classifier | None = None) -> pd.DataFrame:
    """Reconstruction quality and codebook usage on (the first `n` images of) `dataset`, one row per number of
    scales used k = 1..K: scales_used, last_scale, tokens (sum of h_j * w_j for j <= k), psnr, ssim (means over
    images, reconstructions decoded from f_hat_k), usage_scale (fraction of the V codes used at scale k) and
    usage_cumulative (at scales 1..k). With a `classifier` (`Study.classifier()`) also rfid, the FID of
    the reconstructions against the originals on its features, and lpips when the LPIPS backbone weights exist."""
    device = torch.device(device)
    vae = vae.to(device).eval()
    n = len(dataset) if n is None else min(n, len(dataset))
    K = len(vae.scales)
    psnr_K, ssim_K, idx_K, rec_K, lpips_K = ([[] for _ in range(K)] for _ in range(5))
    lpips_net = load_lpips("alex", device) if classifier is not None else None
    for i in range(0, n, batch_size):
        x = dataset.float_images(slice(i, min(i + batch_size, n))).to(device)
        codes = vae.quantize.residual_quantize(vae.img_to_f(x))
        for k, f_hat in enumerate(codes.f_hats):
            rec = vae.fhat_to_img(f_hat)
            psnr_K[k].append(psnr(rec, x).cpu())
            ssim_K[k].append(ssim(rec, x).cpu())
            idx_K[k].append(codes.idx_Bl[k].flatten().cpu())
            if classifier is not None:
                rec_K[k].append(to_uint8(rec).cpu())
                if lpips_net is not None:
                    lpips_K[k].append(lpips_distance(rec, x, device=device, model=lpips_net))
    rows = []
    for k in range(K):
        rows.append({"scales_used": k + 1, "last_scale": vae.scales[k],
                     "tokens": sum(pn * pn for pn in vae.scales[:k + 1]),
                     "psnr": torch.cat(psnr_K[k]).mean().item(), "ssim": torch.cat(ssim_K[k]).mean().item(),
                     "usage_scale": vae.codebook_usage(torch.cat(idx_K[k])),
                     "usage_cumulative": vae.codebook_usage(torch.cat([t for ts in idx_K[:k + 1] for t in ts]))})
        if classifier is not None:
            rows[-1]["rfid"] = rfid(dataset.images_u8[:n], torch.cat(rec_K[k]), classifier, device)
            if lpips_net is not None:
                rows[-1]["lpips"] = torch.cat(lpips_K[k]).mean().item()
    return pd.DataFrame(rows)


@torch.no_grad()
def encode_images(vae: VQVAE, images_u8: torch.Tensor, device: torch.device | str,
                  batch_size: int = 256) -> torch.Tensor:
    """Alg. 1 on uint8 images (N, C, H, W): their tokens as one LongTensor (N, L) on the CPU, scales concatenated
    (`tokenizer.split_scales` recovers them)."""
    vae = vae.to(device).eval()
    return torch.cat([cat_scales(vae.img_to_idxBl(to_float(images_u8[i:i + batch_size].to(device)))).cpu()
                      for i in tqdm(range(0, len(images_u8), batch_size), desc="encoding", leave=False)])


@torch.no_grad()
def coarse_to_fine(vae: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Originals and their reconstructions from the first 1..K scales: (K + 1, n, C, H, W) on the CPU, in [-1, 1]."""
    device = next(vae.parameters()).device
    x = images.to(device)
    return torch.stack([x, *vae.img_to_reconstructed_img(x)]).cpu()


if __name__ == "__main__":  # python -m varlib.tokenizer_train: the command line lives in varlib.cli
    from .cli import tokenizer_main

    tokenizer_main()
