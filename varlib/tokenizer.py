"""Multi-scale VQVAE: the tokenizer of VAR (paper Sec. 3.2, Alg. 1 encoding and Alg. 2 decoding).

A VQGAN-style convolutional encoder maps an image to a feature map f (B, Cvae, h_K, w_K). The multi-scale residual
quantizer turns f into K token maps r_1..r_K of growing size (`scales`, h_k = w_k), all drawn from one codebook of V
entries: each scale quantizes what the coarser scales left unexplained. The decoder maps the accumulated f_hat back to
an image in [-1, 1].

Module and parameter names follow the authors' state dict (`encoder.*`, `decoder.*`, `quantize.embedding.weight`,
`quantize.quant_resi.qresi_ls.N.*`, `quantize.ema_vocab_hit_SV`, `quant_conv`, `post_quant_conv`), so their released
`vae_ch160v4096z32.pth` loads with strict=True into `VQVAE(TokenizerConfig.paper())` (`authors.load_authors_tokenizer`).

Token maps are lists `idx_Bl` of LongTensors (B, h_k * w_k), row-major within a scale; `cat_scales` / `split_scales`
convert to and from one (B, L) tensor.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TokenizerConfig
from .parallel import sum_over_ranks

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- building blocks

def Normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (VQGAN/LDM); fewer only when `channels` is not a multiple of 32 (tiny configs)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with one fused 1x1 `qkv` conv (the authors' key names)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        q_BLC, k_BLC, v_BLC = self.qkv(self.norm(x_BCHW)).view(B, 3, C, H * W).transpose(2, 3).unbind(1)
        h_BLC = F.scaled_dot_product_attention(q_BLC, k_BLC, v_BLC)  # softmax(q k^T / sqrt(C)) v
        return x_BCHW + self.proj_out(h_BLC.transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))  # asymmetric padding, as VQGAN


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResNet blocks, each followed by attention at the lowest level."""

    def __init__(self, channels: list[int], attn: bool, dropout: float):
        super().__init__()
        pairs = zip(channels[:-1], channels[1:], strict=True)
        self.block = nn.ModuleList(ResnetBlock(c_in, c_out, dropout) for c_in, c_out in pairs)
        self.attn = nn.ModuleList(AttnBlock(c) for c in channels[1:]) if attn else nn.ModuleList()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h


class MidBlock(nn.Module):
    def __init__(self, channels: int, attn: bool, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, Cvae, H / 2^(n-1), W / 2^(n-1)) for n = len(ch_mult)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        widths = [cfg.ch * m for m in (1, *cfg.ch_mult)]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i in range(n):
            level = Level([widths[i]] + [widths[i + 1]] * cfg.num_res_blocks, cfg.using_sa and i == n - 1, cfg.dropout)
            level.downsample = Downsample2x(widths[i + 1]) if i != n - 1 else nn.Identity()
            self.down.append(level)
        self.mid = MidBlock(widths[-1], cfg.using_mid_sa, cfg.dropout)
        self.norm_out = Normalize(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for level in self.down:
            h = level.downsample(level(h))
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Features (B, Cvae, h, w) -> image (B, in_channels, h * 2^(n-1), w * 2^(n-1)), unclamped.

    `up[i]` is the level at resolution i (0 = full), stored in that order and run from the lowest resolution up;
    each has num_res_blocks + 1 ResNet blocks."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], cfg.using_mid_sa, cfg.dropout)
        levels = []
        for i in range(n):
            c_in = widths[min(i + 1, n - 1)]
            level = Level([c_in] + [widths[i]] * (cfg.num_res_blocks + 1), cfg.using_sa and i == n - 1, cfg.dropout)
            level.upsample = Upsample2x(widths[i]) if i != 0 else nn.Identity()
            levels.append(level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.trunk(z_BChw))

    def trunk(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """Everything before `conv_out`: SiLU(norm_out(h)) of the last level."""
        h = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h = level.upsample(level(h))
        return F.silu(self.norm_out(h))


# ----------------------------------------------------------------------------------------------- phi_k (Sec. 3.2)

class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): the convolution applied to each upsampled code map before summation."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.ratio) + super().forward(h_BChw) * self.ratio


def phi_index(num_phis: int, at: float) -> int:
    """Which of `num_phis` shared phis serves the scale at relative depth `at` = k / (K - 1) in [0, 1].

    The authors' rule: the phi whose tick is nearest, ticks = linspace(1/(3n), 1 - 1/(3n), n) for n = 4, else
    linspace(1/(2n), 1 - 1/(2n), n). The same numpy expression is evaluated so that float ties break as theirs
    (K = 10, n = 4 gives [0, 0, 1, 1, 1, 2, 2, 3, 3, 3])."""
    n = num_phis
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return int(np.argmin(np.abs(ticks - at)).item())


class PhiShared(nn.Module):
    """share_phi = 1: one phi for every scale (keys `quant_resi.qresi.*`)."""

    def __init__(self, phi: Phi):
        super().__init__()
        self.qresi = phi

    def phi_at(self, at: float) -> Phi:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """share_phi = n > 1: n phis spread over the scales (keys `quant_resi.qresi_ls.{i}.*`)."""

    def __init__(self, phis: list[Phi]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)

    def phi_at(self, at: float) -> Phi:
        return self.qresi_ls[phi_index(len(self.qresi_ls), at)]


class PhiNonShared(nn.ModuleList):
    """share_phi = 0: one phi per scale (keys `quant_resi.{k}.*`)."""

    def phi_at(self, at: float) -> Phi:
        return self[phi_index(len(self), at)]


def build_phis(cfg: TokenizerConfig) -> nn.Module:
    if cfg.share_phi < 0:
        raise ValueError(f"TokenizerConfig.share_phi must be >= 0 (0: one phi per scale, 1: one shared, n: n shared), "
                         f"got {cfg.share_phi}")
    if cfg.share_phi == 0:
        return PhiNonShared(Phi(cfg.z_channels, cfg.phi_ratio) for _ in cfg.scales)
    if cfg.share_phi == 1:
        return PhiShared(Phi(cfg.z_channels, cfg.phi_ratio))
    return PhiPartiallyShared([Phi(cfg.z_channels, cfg.phi_ratio) for _ in range(cfg.share_phi)])


# ----------------------------------------------------------------------------------------------- the quantizer

@functools.cache
def bicubic_matrix(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (size_out, size_in) matrix of 1-D bicubic interpolation as F.interpolate computes it (align_corners
    False, a = -0.75, clamped borders), read off by interpolating the unit vectors; cached per device and dtype."""
    eye_N1n1 = torch.eye(size_in, dtype=torch.float64).view(size_in, 1, size_in, 1)
    A = F.interpolate(eye_N1n1, size=(size_out, 1), mode="bicubic")[:, 0, :, 0].T
    return A.to(device, dtype).contiguous()


def bicubic_upsample(x_BChw: torch.Tensor, size: int) -> torch.Tensor:
    """F.interpolate(x, (size, size), mode="bicubic") as two small matmuls A x A^T, in x's dtype outside autocast
    (as F.interpolate, which autocast leaves alone); equal to it up to float rounding.

    PyTorch's CUDA bicubic kernel runs one thread per output pixel and loops over batch and channels; for the
    quantizer's 8x8 or 16x16 outputs that is 64-256 threads, and forward + backward took 54% of a tokenizer training
    step on an H100 (benchmarks/bench_tokenizer.py). The matmul form is separable bicubic exactly."""
    h, w = x_BChw.shape[-2:]
    with torch.autocast(x_BChw.device.type, enabled=False):
        A_Hh = bicubic_matrix(h, size, x_BChw.device, x_BChw.dtype)
        A_Ww = bicubic_matrix(w, size, x_BChw.device, x_BChw.dtype)
        return A_Hh @ x_BChw @ A_Ww.T

class ScaleCodes(NamedTuple):
    """Alg. 1 for one batch: per scale k, the tokens, the running sum f_hat_k, and the residual that was quantized."""

    idx_Bl: list[torch.Tensor]  # (B, h_k * w_k) each
    f_hats: list[torch.Tensor]  # (B, Cvae, h_K, w_K) each, f_hat after scales 1..k
    z_NCs: list[torch.Tensor]  # (B * h_k * w_k, Cvae) each: interpolate(f - f_hat_{k-1}, h_k, w_k)


class MultiScaleQuantizer(nn.Module):
    """Multi-scale residual quantization with one codebook shared by all scales (Alg. 1 and 2)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.scales = tuple(cfg.scales)
        self.vocab_size, self.Cvae, self.beta = cfg.vocab_size, cfg.z_channels, cfg.beta
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = build_phis(cfg)
        # EMA of per-scale code hits (the authors' usage monitor; part of their checkpoint)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.scales), cfg.vocab_size))
        self.record_hit = 0

    def phi(self, si: int) -> nn.Module:
        SN = len(self.scales)
        return self.quant_resi.phi_at(si / (SN - 1) if SN > 1 else 1.0)

    def embed_scale(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """Tokens (B, pn * pn) of scale `si` -> code map (B, Cvae, pn, pn)."""
        pn = self.scales[si]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.Cvae, pn, pn)

    def upsample_phi(self, h_BChw: torch.Tensor, si: int) -> torch.Tensor:
        """Alg. 1 line 7 / Alg. 2 line 5: phi_k(interpolate(z_k, h_K, w_K)), bicubic; no interpolation at the last
        scale."""
        HW = self.scales[-1]
        if si != len(self.scales) - 1:
            h_BChw = bicubic_upsample(h_BChw, HW)
        return self.phi(si)(h_BChw)

    @torch.no_grad()
    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """argmin_v ||z - e_v||^2, expanded as ||z||^2 + ||e_v||^2 - 2 z.e_v (the authors' order of operations)."""
        e_VC = self.embedding.weight
        d_NV = z_NC.square().sum(1, keepdim=True) + e_VC.square().sum(1)
        d_NV.addmm_(z_NC, e_VC.T, alpha=-2, beta=1)
        return d_NV.argmin(1)

    def residual_quantize(self, f_BChw: torch.Tensor) -> ScaleCodes:
        """Alg. 1 (multi-scale VQ encoding) on features f (B, Cvae, h_K, w_K), float32.

        Tokens are found without gradient; f_hat carries gradient into the codebook and the phis."""
        B, C, H, W = f_BChw.shape
        if H != self.scales[-1] or W != self.scales[-1]:
            raise ValueError(f"features are {H}x{W} but the last scale is {self.scales[-1]}: the image resolution must "
                             f"be {self.scales[-1]} times the tokenizer's downsampling factor")
        SN = len(self.scales)
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = ScaleCodes([], [], [])
        for si, pn in enumerate(self.scales):
            # Alg. 1 line 5: r_k = Q(interpolate(f, h_k, w_k)) -- area downsampling, none at the last scale
            z_BChw = f_rest if si == SN - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
            idx_Bl = self.nearest_code(z_NC).view(B, pn * pn)
            h_BChw = self.upsample_phi(self.embed_scale(idx_Bl, si), si)  # lines 6-7: z_k = phi_k(upsample(Z(r_k)))
            f_hat = f_hat + h_BChw  # line 8: f_hat accumulates; f = f - z_k
            f_rest = f_rest - h_BChw.detach()
            out.idx_Bl.append(idx_Bl)
            out.f_hats.append(f_hat)
            out.z_NCs.append(z_NC)
        return out

    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: (straight-through f_hat (B, Cvae, h, w), VQ loss, idx_Bl).

        VQ loss = mean over scales of beta * ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2 (the authors' per-scale
        loss on the cumulative f_hat_k); computed in float32 outside any autocast."""
        with torch.autocast(f_BChw.device.type, enabled=False):
            f_BChw = f_BChw.float()
            codes = self.residual_quantize(f_BChw)
            f_sg = f_BChw.detach()
            vq_loss = sum(self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_sg)
                          for f_hat in codes.f_hats) / len(self.scales)
            if self.training:
                self.record_hits(codes.idx_Bl)
            f_hat_st = codes.f_hats[-1].detach() - f_sg + f_BChw  # straight-through: gradient of f_hat flows into f
        return f_hat_st, vq_loss, codes.idx_Bl

    @torch.no_grad()
    def record_hits(self, idx_Bl: list[torch.Tensor]) -> None:
        """EMA of per-scale code hits: copied on the first record, 0.9/0.1 for the next 99, then 0.99/0.01. Under
        torchrun the hits are summed over the ranks: the EMA counts the global batch, and is equal on every rank."""
        hit_SV = sum_over_ranks(torch.stack([code_hits(idx, self.vocab_size) for idx in idx_Bl]))  # global batch
        if self.record_hit == 0:
            self.ema_vocab_hit_SV.copy_(hit_SV)
        else:
            keep = 0.9 if self.record_hit < 100 else 0.99
            self.ema_vocab_hit_SV.mul_(keep).add_(hit_SV, alpha=1 - keep)
        self.record_hit += 1

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor,
                                      h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's incremental update (Alg. 2 one step): add scale `si`'s code map h (B, Cvae, pn, pn) to f_hat
        (B, Cvae, h_K, w_K); return (f_hat, the next scale's input area-downsampled from f_hat), or (f_hat, f_hat)
        after the last scale. f_hat is not modified in place."""
        if SN != len(self.scales):
            raise ValueError(f"SN={SN} but this tokenizer has {len(self.scales)} scales {self.scales}")
        f_hat = f_hat + self.upsample_phi(h_BChw, si)
        if si == SN - 1:
            return f_hat, f_hat
        pn = self.scales[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of the transformer: for k = 1..K-1, the cumulative f_hat_k area-downsampled to scale
        k+1 and flattened row-major; concatenated to (B, L - pn_1^2, Cvae) float32 ((B, 0, Cvae) when K = 1)."""
        B, SN = idx_Bl[0].shape[0], len(self.scales)
        f_hat = torch.zeros(B, self.Cvae, self.scales[-1], self.scales[-1], device=idx_Bl[0].device)
        next_BlC = [f_hat.new_zeros(B, 0, self.Cvae)]
        for si in range(SN - 1):
            f_hat, next_BChw = self.get_next_autoregressive_input(si, SN, f_hat, self.embed_scale(idx_Bl[si], si))
            next_BlC.append(next_BChw.flatten(2).transpose(1, 2))
        return torch.cat(next_BlC, dim=1)

    def idxBl_to_fhat(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Alg. 2 (decoding to features): f_hat = sum_k phi_k(upsample(Z(r_k))) over the given first k' <= K scales."""
        if not 1 <= len(idx_Bl) <= len(self.scales):
            raise ValueError(f"got token maps for {len(idx_Bl)} scales; expected 1..{len(self.scales)}")
        return sum(self.upsample_phi(self.embed_scale(idx, si), si) for si, idx in enumerate(idx_Bl))


# ----------------------------------------------------------------------------------------------- the VQVAE

class VQVAE(nn.Module):
    """Encoder, multi-scale residual quantizer, decoder. Images are float32 (B, in_channels, R, R) in [-1, 1] with
    R = scales[-1] * downsample."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.scales, self.vocab_size, self.Cvae = tuple(cfg.scales), cfg.vocab_size, cfg.z_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    def img_to_f(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Image -> continuous features f (B, Cvae, h_K, w_K)."""
        if x_BCHW.shape[-1] != self.cfg.resolution or x_BCHW.shape[-2] != self.cfg.resolution:
            raise ValueError(f"images are {tuple(x_BCHW.shape[-2:])}, the tokenizer expects {self.cfg.resolution}x"
                             f"{self.cfg.resolution} (scales {self.scales}, downsampling {self.cfg.downsample})")
        return self.quant_conv(self.encoder(x_BCHW))

    def forward(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: (reconstruction (B, C, H, W), unclamped; VQ loss; idx_Bl)."""
        f_hat, vq_loss, idx_Bl = self.quantize(self.img_to_f(x_BCHW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, idx_Bl

    DECODE_CHUNK = 32  # images per decoder call: at 256 px a decoder activation is 0.7 GB per 32 images (bf16)

    def fhat_to_img(self, f_hat: torch.Tensor, compile: bool = False) -> torch.Tensor:
        """f_hat (B, Cvae, h_K, w_K) -> float32 images (B, C, H, W) clamped to [-1, 1], `DECODE_CHUNK` images per
        decoder call (the same images as one call, in a bounded footprint); the decoder may run in bf16 under
        autocast.

        compile=True compiles the decoder up to its last convolution (post_quant_conv, then `Decoder.trunk`) and
        runs the last convolution eagerly: inductor hands convolutions channels-last inputs, and for 3 output
        channels cuDNN has only a generic kernel there (12 ms against 2 ms per 32 images at 256 px on an H100; the
        whole decode of 64 images 0.107 s against 0.124 s)."""
        def trunk(f_hat_chunk: torch.Tensor) -> torch.Tensor:
            return self.decoder.trunk(self.post_quant_conv(f_hat_chunk))

        run_trunk = torch.compile(trunk) if compile else trunk
        return torch.cat([self.decoder.conv_out(run_trunk(chunk)).clamp(-1, 1).float()
                          for chunk in f_hat.split(self.DECODE_CHUNK)])

    def img_to_idxBl(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """Alg. 1: image -> tokens, a list of K LongTensors (B, h_k * w_k)."""
        return self.quantize.residual_quantize(self.img_to_f(x_BCHW)).idx_Bl

    def idxBl_to_img(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Alg. 2: tokens of the first 1..K scales -> image (B, C, H, W) in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idxBl_to_fhat(idx_Bl))

    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input (B, L - pn_1^2, Cvae); see `MultiScaleQuantizer.idxBl_to_var_input`."""
        return self.quantize.idxBl_to_var_input(idx_Bl)

    def img_to_reconstructed_img(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """The coarse-to-fine picture: K images (B, C, H, W), the k-th decoded from f_hat after scales 1..k."""
        return [self.fhat_to_img(f_hat) for f_hat in self.quantize.residual_quantize(self.img_to_f(x_BCHW)).f_hats]

    def codebook_usage(self, idx_Bl: list[torch.Tensor] | torch.Tensor) -> float:
        """Fraction of the V codes that occur at least once in the given tokens."""
        idx = torch.cat([t.flatten() for t in idx_Bl]) if isinstance(idx_Bl, list) else idx_Bl.flatten()
        return idx.unique().numel() / self.vocab_size

    @torch.no_grad()
    def restart_dead_codes(self, dead_V: torch.Tensor, z_NC: torch.Tensor, generator: torch.Generator) -> int:
        """Re-seed the codes flagged in `dead_V` (bool, (V,)) with randomly chosen quantizer inputs z (N, Cvae) of
        recent batches, so that they are used again (codebook collapse is the known failure of multi-scale VQ
        training at the coarse scales). Returns how many codes were restarted."""
        dead = dead_V.nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(len(z_NC), (dead.numel(),), generator=generator, device="cpu").to(z_NC.device)
        self.quantize.embedding.weight[dead] = z_NC[pick].to(self.quantize.embedding.weight.dtype)
        return dead.numel()

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, except that an `ema_vocab_hit_SV` recorded for another number of scales is replaced by
        ours (a usage monitor, not a weight), so a 10-scale checkpoint loads for any scale schedule."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = {**state_dict, key: self.quantize.ema_vocab_hit_SV.clone()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def code_hits(idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each of the V codes occurs in `idx` (float32 (V,)); unlike bincount, no wait on the device."""
    flat = idx.flatten()
    return torch.zeros(vocab_size, device=idx.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def frozen(vae: VQVAE) -> VQVAE:
    """`vae` in eval mode with requires_grad False (a pretrained tokenizer used by the transformers)."""
    vae.eval()
    vae.requires_grad_(False)
    return vae


def cat_scales(idx_Bl: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale tokens -> one (B, L) tensor, scales in order."""
    return torch.cat(idx_Bl, dim=1)


def split_scales(idx_BL: torch.Tensor, scales: tuple[int, ...]) -> list[torch.Tensor]:
    """(B, L) tokens -> a list of (B, pn * pn) per scale; the inverse of `cat_scales`."""
    lengths = [pn * pn for pn in scales]
    if idx_BL.shape[1] != sum(lengths):
        raise ValueError(f"tokens have length {idx_BL.shape[1]}, the scales {scales} need {sum(lengths)}")
    return list(idx_BL.split(lengths, dim=1))
