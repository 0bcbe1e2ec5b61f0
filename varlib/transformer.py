"""The VAR transformer (next-scale prediction) and the raster-scan AR baseline.

VAR (paper Sec. 3.2, Fig. 4) is a GPT-2-style decoder over the concatenated token maps r_1..r_K of all scales: the
class embedding is the start token (and, with AdaLN, the condition of every block), the input at scale k is the
VQVAE's cumulative feature map f_hat_{<k} area-resized to h_k x w_k (built by the tokenizer), and a block-causal mask
lets every token of scale k see all tokens of scales <= k, so all h_k*w_k tokens of a scale are predicted in parallel.

`ARTransformer` is next-token prediction with the same blocks and a plain causal mask: over one token map in raster
order it is the paper's raster-scan baseline (Table 3, row 1); over VAR's own token maps r_1..r_K (a
`MultiScaleARConfig`) it is the claims protocol's control, which changes only next-scale into next-token prediction
with the tokenizer held fixed.

State-dict names and persistent buffers follow the authors' `VAR` (models/var.py, basic_var.py), so their released
`var_d*.pth` checkpoints load with `strict=True` into `VAR(VARConfig(depth=d, num_classes=1000, vocab_size=4096,
scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))`. The VQVAE is not part of the module.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MultiScaleARConfig, VARConfig

LOG_MAX_ATTN_SCALE = math.log(100.0)  # clamp of the learnable attention temperature (authors' value)


class KVCache:
    """Keys and values of one attention layer, preallocated on first use and written in place.

    Holds `capacity` tokens. The tokens of the final step are never read by a later step, so the final step (and only
    it) may go past `capacity`: its keys are concatenated for that one call and not stored. With capacity
    L - h_K * w_K this saves the last scale's 256 of 680 tokens (38%) at 256 px, which is what lets B=256 fit at d30.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.k_BHLc: torch.Tensor | None = None
        self.v_BHLc: torch.Tensor | None = None

    def seek(self, position: int) -> None:
        """The next update writes at `position`: the tokens before it are kept, those after it forgotten (a run
        of the same steps again, or CUDA-graph capture of one step out of order)."""
        if not 0 <= position <= self.length:
            raise RuntimeError(f"KVCache: cannot seek to {position}, the cache holds tokens [0, {self.length})")
        self.length = position

    def update(self, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends this step's keys/values; returns all keys/values so far (B, H, length, c)."""
        start, end = self.length, self.length + k_BHlc.shape[2]
        if end > self.capacity and start != self.capacity:
            raise RuntimeError(f"KVCache: a step of {k_BHlc.shape[2]} tokens at position {start} overflows the "
                               f"capacity {self.capacity}; only the final step may go past it: size the cache to "
                               f"the sequence length minus the last step")
        self.length = end
        if end > self.capacity:
            if start == 0:
                return k_BHlc, v_BHlc
            return (torch.cat((self.k_BHLc[:, :, :start], k_BHlc), dim=2),
                    torch.cat((self.v_BHLc[:, :, :start], v_BHlc), dim=2))
        if self.k_BHLc is None:
            B, H, _, c = k_BHlc.shape
            self.k_BHLc = k_BHlc.new_empty(B, H, self.capacity, c)
            self.v_BHLc = v_BHlc.new_empty(B, H, self.capacity, c)
        self.k_BHLc[:, :, start:end] = k_BHlc
        self.v_BHLc[:, :, start:end] = v_BHlc
        return self.k_BHLc[:, :, :end], self.v_BHLc[:, :, :end]


def block_causal_bias(group_L: torch.Tensor) -> torch.Tensor:
    """Additive mask (1, 1, L, L): query i sees key j iff group[j] <= group[i] (0 there, -inf elsewhere).

    With group = scale index this is VAR's mask (paper Sec. 3.2: full attention within a scale, causal across
    scales); with group = position it is the ordinary causal mask.
    """
    g = group_L.view(-1, 1)
    return torch.where(g >= g.T, 0.0, -torch.inf).view(1, 1, len(group_L), len(group_L))


SPLIT_MIN_TOKENS = 64  # a trailing scale of at least this many tokens gets its own unmasked attention call


class AttnMask(NamedTuple):
    """The teacher-forcing mask of a forward over L tokens: its definition and how the fused path computes it.

    `bias_11LL` is the additive mask (0: visible, -inf: hidden); the reference path adds it to the scores. The fused
    path never applies it to all L x L: with `causal` (the AR baseline) it is flash attention's causal mask;
    otherwise the first `dense` tokens attend under the bias, and the queries of each later group (begin, end) -- a
    whole scale of >= SPLIT_MIN_TOKENS tokens -- see exactly the keys [0, end), which is an unmasked call. At 256 px
    that computes 289k of the 462k query-key pairs, in flash kernels that read no bias.
    """

    bias_11LL: torch.Tensor
    causal: bool
    dense: int
    groups: tuple[tuple[int, int], ...]

    def prefix(self, length: int) -> AttnMask:
        """The same mask over the first `length` tokens (a teacher-forcing forward over a prefix)."""
        groups = tuple((b, min(e, length)) for b, e in self.groups if b < length)
        return AttnMask(self.bias_11LL[:, :, :length, :length], self.causal, min(self.dense, length), groups)


def mask_groups(sizes: list[int]) -> torch.Tensor:
    """group_L for consecutive groups of these sizes: 0 for the first sizes[0] tokens, 1 for the next, ..."""
    return torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])


def mask_plan(sizes: list[int]) -> tuple[bool, int, tuple[tuple[int, int], ...]]:
    """AttnMask's (causal, dense, groups) for `block_causal_bias(mask_groups(sizes))`: groups are scales, or
    single positions (then the mask is causal)."""
    if max(sizes) == 1:
        return True, 0, ()
    bounds = list(itertools.accumulate(sizes, initial=0))
    first = len(sizes)
    while first > 0 and sizes[first - 1] >= SPLIT_MIN_TOKENS:
        first -= 1
    return False, bounds[first], tuple(itertools.pairwise(bounds[first:]))


def reference_attention(q_BHLc, k_BHLc, v_BHLc, attn_bias, scale: float) -> torch.Tensor:
    """Plain softmax(q k^T * scale + bias) v, the definition the fused SDPA path is tested against."""
    scores = (q_BHLc.float() * scale) @ k_BHLc.float().transpose(-2, -1)
    if attn_bias is not None:
        scores = scores + attn_bias.float()
    return (scores.softmax(dim=-1) @ v_BHLc.float()).to(v_BHLc.dtype)


def masked_sdpa(q_BHLc, k_BHLc, v_BHLc, mask: AttnMask, scale: float) -> torch.Tensor:
    """Fused attention under `mask` (see AttnMask), equal to `reference_attention` with its bias."""
    sdpa = F.scaled_dot_product_attention
    if mask.causal:
        return sdpa(q_BHLc, k_BHLc, v_BHLc, is_causal=True, scale=scale)
    d = mask.dense
    out = [sdpa(q_BHLc[:, :, :d], k_BHLc[:, :, :d], v_BHLc[:, :, :d],
                attn_mask=mask.bias_11LL[:, :, :d, :d].to(q_BHLc.dtype), scale=scale)] if d else []
    out += [sdpa(q_BHLc[:, :, b:e], k_BHLc[:, :, :e], v_BHLc[:, :, :e], scale=scale) for b, e in mask.groups]
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


class SelfAttention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias) and optional L2-normalised q, k (VAR's "attn-norm").

    `sdpa` selects F.scaled_dot_product_attention (fast; `masked_sdpa` under a mask) or `reference_attention`
    (plain softmax); they agree.
    """

    def __init__(self, width: int, num_heads: int, attn_l2_norm: bool, sdpa: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.attn_l2_norm, self.sdpa = attn_l2_norm, sdpa
        if attn_l2_norm:
            # cosine attention with a learnable per-head temperature, init 4, at most 100 (Table 3, "attn-norm")
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)  # the authors' value, not 1/sqrt(c)
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))  # persistent: it is in the authors' checkpoints
        self.proj = nn.Linear(width, width)

    def forward(self, x_BLC: torch.Tensor, mask: AttnMask | None, cache: KVCache | None = None) -> torch.Tensor:
        """`mask` None: every token sees every key (a cached inference step over one whole scale)."""
        B, L, C = x_BLC.shape
        qkv_bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, qkv_bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(LOG_MAX_ATTN_SCALE).exp()
            # F.normalize returns float32 under autocast; SDPA would cast back to v's dtype anyway, so casting here
            # changes no value and halves the KV cache (float32 keys made d30 at B=256 run out of 80 GB)
            q_BHLc = (F.normalize(q_BHLc, dim=-1) * temperature).to(v_BHLc.dtype)
            k_BHLc = F.normalize(k_BHLc, dim=-1).to(v_BHLc.dtype)
        if cache is not None:
            k_BHLc, v_BHLc = cache.update(k_BHLc, v_BHLc)
        if not self.sdpa:
            bias = None if mask is None else mask.bias_11LL.to(q_BHLc.dtype)
            out_BHLc = reference_attention(q_BHLc, k_BHLc, v_BHLc, bias, self.scale)
        elif mask is None:
            out_BHLc = F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, scale=self.scale)
        else:
            out_BHLc = masked_sdpa(q_BHLc, k_BHLc, v_BHLc, mask, self.scale)
        return self.proj(out_BHLc.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x_BLC)))


def drop_path(x_BLC: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample, rescale the kept ones."""
    if not training or p == 0.0:
        return x_BLC
    keep_B11 = x_BLC.new_empty(x_BLC.shape[0], 1, 1).bernoulli_(1.0 - p)
    return x_BLC * keep_B11 / (1.0 - p)


class Block(nn.Module):
    """Pre-LN transformer block. With AdaLN (paper Sec. 4, DiT-style) the class condition gives per-block
    gamma1, gamma2, scale1, scale2, shift1, shift2 (that order, as the authors):
        x += gamma1 * attn(LN(x) * (1 + scale1) + shift1);  x += gamma2 * ffn(LN(x) * (1 + scale2) + shift2).
    Without AdaLN it is a plain GPT-2 block with affine LayerNorms (Table 3's "w/o AdaLN" row).
    """

    def __init__(self, cfg: VARConfig, drop_path_p: float, sdpa: bool):
        super().__init__()
        C = cfg.width
        self.adaln, self.shared_aln, self.drop_path_p = cfg.adaln, cfg.shared_aln, drop_path_p
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_l2_norm, sdpa)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        if not cfg.adaln:
            self.norm1 = nn.LayerNorm(C, eps=cfg.norm_eps)
            self.norm2 = nn.LayerNorm(C, eps=cfg.norm_eps)
            return
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BLC: torch.Tensor, cond: torch.Tensor | None, mask: AttnMask | None,
                cache: KVCache | None = None) -> torch.Tensor:
        """`cond`: the class embedding (B, C); with shared AdaLN the shared projection (B, 1, 6, C); unused
        without AdaLN."""
        if not self.adaln:
            x_BLC = x_BLC + drop_path(self.attn(self.norm1(x_BLC), mask, cache), self.drop_path_p, self.training)
            return x_BLC + drop_path(self.ffn(self.norm2(x_BLC)), self.drop_path_p, self.training)
        if self.shared_aln:
            ada_B16C = self.ada_gss + cond
        else:
            ada_B16C = self.ada_lin(cond).view(-1, 1, 6, x_BLC.shape[-1])
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.to(x_BLC.dtype).unbind(2)
        attn_out = self.attn(self.ln_wo_grad(x_BLC) * (1 + scale1) + shift1, mask, cache)
        x_BLC = x_BLC + drop_path(attn_out * gamma1, self.drop_path_p, self.training)
        ffn_out = self.ffn(self.ln_wo_grad(x_BLC) * (1 + scale2) + shift2)
        return x_BLC + drop_path(ffn_out * gamma2, self.drop_path_p, self.training)


class AdaLNBeforeHead(nn.Module):
    """LN(h) * (1 + scale) + shift from the class condition (scale first, as the authors)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.ln_wo_grad = nn.LayerNorm(width, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, h_BLC.shape[-1]).unbind(2)
        return self.ln_wo_grad(h_BLC) * (1 + scale) + shift


def cached_block(block: Block, x_BlC: torch.Tensor, cond: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
    """One block of a cached inference step. Compiled once (torch.compile of this function), it serves every block
    of a model, since they differ only in their weights (regional compilation: depth times less compile work)."""
    return block(x_BlC, cond, None, cache)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The residual stream's dtype: the autocast dtype when autocast is on (as the authors), else float32."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32


class _TokenTransformer(nn.Module):
    """What VAR and the AR baseline share: embeddings, blocks, head, teacher-forcing forward and the cached step.

    Token t belongs to group `lvl_1L[t]` (its scale: selects the level embedding). The first `first_l` tokens are
    the start token(s): class embedding + pos_start. `attn_bias_for_masking` is the additive attention mask.
    """

    def __init__(self, cfg: VARConfig, lvl_L: torch.Tensor, mask_sizes: list[int], first_l: int, sdpa: bool):
        super().__init__()
        C, L = cfg.width, len(lvl_L)
        self.cfg, self.L, self.first_l, self.C = cfg, L, first_l, C
        self.num_classes, self.cond_drop_rate = cfg.num_classes, cfg.cond_drop_rate
        init_std = math.sqrt(1 / (3 * C))

        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # row num_classes = the null class (CFG, Sec. 4)
        self.pos_start = nn.Parameter(torch.empty(1, first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))  # absolute position embeddings, concatenated per scale
        self.lvl_embed = nn.Embedding(len(cfg.scales), C)  # "level" (scale) embedding, like GPT's segments
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        nn.init.trunc_normal_(self.pos_1LC, std=init_std)

        if cfg.shared_aln and cfg.adaln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        else:
            self.shared_ada_lin = nn.Identity()
        rates = torch.linspace(0, cfg.drop_path, cfg.depth, device="cpu").tolist()  # stochastic depth, increasing
        self.blocks = nn.ModuleList(Block(cfg, p, sdpa) for p in rates)
        self.register_buffer("lvl_1L", lvl_L.view(1, L).long())
        self.register_buffer("attn_bias_for_masking", block_causal_bias(mask_groups(mask_sizes)).contiguous())
        self.mask_plan = mask_plan(mask_sizes)
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps) if cfg.adaln else nn.LayerNorm(C, eps=cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.init_weights()

    # ------------------------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        """The authors' initialisation: trunc-normal std sqrt(1/3C) everywhere, a small head, residual projections
        scaled by 1/sqrt(2 depth) (GPT-2), AdaLN scale/shift rows x0.5 and gamma rows x`init_adaln_gamma` (so every
        block starts close to the identity, as adaLN-Zero in DiT)."""
        init_std = math.sqrt(1 / (3 * self.C)) if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        if isinstance(self.head_nm, AdaLNBeforeHead):
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            self.head_nm.ada_lin[-1].bias.zero_()
        depth, C = len(self.blocks), self.C
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if hasattr(block, "ada_lin"):
                block.ada_lin[-1].weight[2 * C:].mul_(init_adaln)
                block.ada_lin[-1].weight[:2 * C].mul_(init_adaln_gamma)
            elif hasattr(block, "ada_gss"):
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)

    # -------------------------------------------------------------------------------------------------- pieces
    def block_condition(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What every block receives: the class embedding, or with shared AdaLN its shared projection."""
        if self.cfg.shared_aln and self.cfg.adaln:
            return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.C)
        return cond_BD

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """float32 logits (B, L, V); the head norm runs in float32, the head matmul under autocast if enabled."""
        h_BLC = self.head_nm(h_BLC.float(), cond_BD) if self.cfg.adaln else self.head_nm(h_BLC.float())
        return self.head(h_BLC.float()).float()

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """The first `first_l` inputs (B, first_l, C): class embedding + pos_start + level/position embeddings."""
        with torch.autocast(cond_BD.device.type, enabled=False):
            pos_1lC = self.lvl_embed(self.lvl_1L[:, :self.first_l]) + self.pos_1LC[:, :self.first_l]
            return cond_BD.float().unsqueeze(1) + self.pos_start + pos_1lC

    def embed_inputs(self, x_BlCv: torch.Tensor, begin: int) -> torch.Tensor:
        """Inputs at positions [begin, begin + l): word_embed(VQVAE features) + level/position embeddings."""
        end = begin + x_BlCv.shape[1]
        with torch.autocast(x_BlCv.device.type, enabled=False):
            pos_1lC = self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]
            return self.word_embed(x_BlCv.float()) + pos_1lC

    def drop_classes(self, label_B: torch.Tensor) -> torch.Tensor:
        """Class dropout for classifier-free guidance: in training, replace a label by the null class with
        probability cond_drop_rate. (The authors also drop classes in eval mode; varlib does not.)"""
        if not self.training or self.cond_drop_rate == 0:
            return label_B
        drop_B = torch.rand(label_B.shape[0], device=label_B.device) < self.cond_drop_rate
        return torch.where(drop_B, self.num_classes, label_B)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits_BLV (float32) for all L tokens given the class and the inputs of tokens
        first_l..L-1 (B, L - first_l, Cvae), see `teacher_forcing_input`. A prefix (fewer tokens) is allowed."""
        return self.logits(*self.features(label_B, x_BLCv_wo_first_l))

    def features(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' output h_BLC and the class condition cond_BD, before the head (training applies the head in
        chunks so that the float32 B x L x V logits are never materialised at once)."""
        L_in = self.first_l + x_BLCv_wo_first_l.shape[1]
        if L_in > self.L:
            raise ValueError(f"x_BLCv_wo_first_l has {x_BLCv_wo_first_l.shape[1]} tokens; at most "
                             f"{self.L - self.first_l} fit this model's scales {self.cfg.scales}")
        cond_BD = self.class_emb(self.drop_classes(label_B))
        x_BLC = torch.cat((self.start_tokens(cond_BD), self.embed_inputs(x_BLCv_wo_first_l, self.first_l)), dim=1)
        x_BLC = x_BLC.to(compute_dtype(x_BLC.device))
        cond = self.block_condition(cond_BD)
        mask = AttnMask(self.attn_bias_for_masking, *self.mask_plan).prefix(L_in)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, mask)
        return x_BLC, cond_BD

    def step(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor, caches: list[KVCache],
             run_block=cached_block) -> torch.Tensor:
        """One cached inference step over the next l tokens (already embedded): logits (B, l, V). The tokens see
        the cached earlier steps and each other, so a step must be a whole scale (VAR) or one token (AR).
        `run_block` runs one block: `cached_block`, or the same function through torch.compile."""
        x_BlC = x_BlC.to(compute_dtype(x_BlC.device))
        cond = self.block_condition(cond_BD)
        for block, cache in zip(self.blocks, caches, strict=True):
            x_BlC = run_block(block, x_BlC, cond, cache)
        return self.logits(x_BlC, cond_BD)

    def new_caches(self, last_step_tokens: int) -> list[KVCache]:
        """Empty per-layer caches for one sampling run whose final step has `last_step_tokens` tokens."""
        return [KVCache(self.L - last_step_tokens) for _ in self.blocks]

    # ------------------------------------------------------------------------------------------------ costing
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 x (weights of the per-token matmuls) + 12 x depth x L x width (attention),
        the nanoGPT/PaLM convention used in REFERENCE.md section 8. AdaLN projections run once per sequence and
        embeddings are lookups, so neither is counted."""
        per_token = [self.word_embed, self.head]
        for block in self.blocks:
            per_token += [block.attn.mat_qkv, block.attn.proj, block.ffn.fc1, block.ffn.fc2]
        matmul_params = sum(m.weight.numel() for m in per_token)
        return 6 * matmul_params + 12 * len(self.blocks) * self.L * self.C


class VAR(_TokenTransformer):
    """Next-scale prediction over the token maps of `cfg.scales` (paper Sec. 3.2). `sdpa=False` selects the plain
    reference attention."""

    def __init__(self, cfg: VARConfig, sdpa: bool = True):
        if len(cfg.scales) < 2:
            raise ValueError(f"VAR needs at least two scales, got scales={cfg.scales}; use ARTransformer (or "
                             f"build_model) for a single token map")
        if isinstance(cfg, MultiScaleARConfig):
            raise ValueError("a MultiScaleARConfig describes next-token prediction over VAR's tokens: build it with "
                             "ARTransformer (or build_model), not VAR")
        sizes = [pn * pn for pn in cfg.scales]
        super().__init__(cfg, mask_groups(sizes), sizes, sizes[0], sdpa)
        self.scales = cfg.scales
        bounds = list(itertools.accumulate((pn * pn for pn in cfg.scales), initial=0))
        self.begin_ends = list(itertools.pairwise(bounds))  # token range of each scale


class ARTransformer(_TokenTransformer):
    """Next-token prediction: token t is predicted from the class start token and tokens < t (plain causal mask), and
    its input is the codebook embedding of token t - 1 (GPT's right shift, `teacher_forcing_input`).

    One h x w token map in raster order: the raster-scan AR baseline (paper Table 3, row 1). A `MultiScaleARConfig`:
    VAR's token maps r_1..r_K concatenated in order, raster within a scale, with VAR's level and position
    embeddings; its parameters are VAR's to the element (the same shapes everywhere)."""

    def __init__(self, cfg: VARConfig, sdpa: bool = True):
        if len(cfg.scales) != 1 and not isinstance(cfg, MultiScaleARConfig):
            raise ValueError(f"ARTransformer over scales={cfg.scales}: one token map (scales=(h,)) is the raster AR; "
                             f"for next-token prediction over VAR's multi-scale tokens pass a MultiScaleARConfig")
        sizes = [pn * pn for pn in cfg.scales]
        super().__init__(cfg, mask_groups(sizes), [1] * sum(sizes), 1, sdpa)
        self.scales = cfg.scales


def build_model(cfg: VARConfig, sdpa: bool = True) -> VAR | ARTransformer:
    """VAR for a multi-scale VARConfig; ARTransformer for one scale (raster AR) or a MultiScaleARConfig."""
    if len(cfg.scales) == 1 or isinstance(cfg, MultiScaleARConfig):
        return ARTransformer(cfg, sdpa)
    return VAR(cfg, sdpa)


def teacher_forcing_input(vae, idx_Bl: list[torch.Tensor], next_token: bool = False) -> torch.Tensor:
    """The transformer's input for tokens 1..L-1, (B, L-1, Cvae) float32, from the token maps idx_Bl of all scales.

    VAR (several scales): the cumulative f_hat after scales < k area-resized to scale k (vae.idxBl_to_var_input).
    Next-token prediction (one scale, or `next_token`): the codebook embedding of every token but the last of the
    concatenated maps (GPT's right shift).
    """
    if next_token or len(idx_Bl) == 1:
        return vae.quantize.embedding(torch.cat(idx_Bl, dim=1)[:, :-1]).float()
    return vae.idxBl_to_var_input(idx_Bl)


# ----------------------------------------------------------------------------------------------- training compute

def training_flops(model: _TokenTransformer, steps: int, batch_size: int) -> float:
    """FLOPs of a training run: flops_per_token x L tokens per sequence (VAR and the AR over its tokens: 155 at
    32 px; the raster AR: 64) x batch x steps, as `train_model`'s `flops_seen`."""
    return float(model.flops_per_token()) * model.L * batch_size * steps


def steps_for_flops(model: _TokenTransformer, flops: float, batch_size: int) -> int:
    """The training steps at `batch_size` whose `training_flops` come nearest to `flops` (at least 1): the claims
    protocol's comparison at equal training compute, e.g. the raster AR against `training_flops(var, ...)`."""
    return max(1, round(flops / training_flops(model, 1, batch_size)))
