"""Training the transformers, VAR (next-scale prediction) and the raster-scan AR baseline, on cached tokens.

The frozen tokenizer encodes every image once (`Study.tokens`); training then draws batches of token indices already on
the device and builds the teacher-forcing input per batch from the codebook, without the encoder. The authors
re-encode every image at every step, which is why their small models trained no faster than their large ones
(their issue #154).

The recipe is the authors' (REFERENCE.md 4.5-4.6): AdamW (0.9, 0.95) with weight decay on matrices only, the 'lin0'
learning-rate shape, gradient clipping, bf16 autocast, and the loss averaged over all L tokens of every scale.

The step runs eager (the reference), compiled, or captured once in a CUDA graph and replayed (`TrainConfig.compile`,
`TrainConfig.cuda_graph`, see `TrainStep`): the smallest of the study's 32 px models are bound by launching kernels,
not by running them.

One process or several: `train_model` is the loop (`Study.transformer` caches what it trains); under `torchrun` it
wraps the model in DistributedDataParallel and each rank trains on a disjoint share of every global batch
(`torchrun --nproc_per_node=2 -m varlib.train`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from .artifacts import TrainState
from .config import TrainConfig, VARConfig, check_compatible
from .device import autocast
from .parallel import data_parallel, mean_over_ranks, rank_and_world, setup_distributed, share_of, sum_over_ranks
from .tokenizer import split_scales
from .tokenizer_train import batch_indices, seeded_generator
from .transformer import ARTransformer, build_model, teacher_forcing_input

log = logging.getLogger(__name__)

WARMUP_START = 0.005  # 'lin0': the warm-up starts at 0.5% of the peak rate...
PLATEAU = 0.05  # ...and the rate stays at the peak for 5% of the post-warm-up steps before decaying linearly
# Weight decay is for matrices: none on vectors, biases, learned positions, level embeddings or the attention
# temperature (the authors' no-WD list, REFERENCE.md 4.6; `lvl_embed` is an Embedding, hence matched by name).
NO_DECAY_NAMES = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss", "start_token", "pos_embed")


# ----------------------------------------------------------------------------------------------- token cache

def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type for cached token indices of this vocabulary."""
    return torch.int16 if vocab_size <= 2**15 else torch.int32


# ----------------------------------------------------------------------------------------------- optimisation

def lr_factor(step: int, steps: int, warmup_frac: float, final_lr_frac: float) -> float:
    """Multiplier of the peak rate at `step` (0-based): the authors' 'lin0' shape."""
    warmup = round(warmup_frac * steps)
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    done = (step - warmup) / max(1, steps - 1 - warmup)
    if done < PLATEAU:
        return 1.0
    return final_lr_frac + (1 - final_lr_frac) * (1 - done) / (1 - PLATEAU)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith("bias") or any(k in name for k in NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   capturable: bool = False) -> torch.optim.AdamW:
    """AdamW, fused on CUDA; `capturable` keeps its step counts on the device, for a step captured in a CUDA graph
    (whose learning rate must then be a device tensor in the parameter groups: `TrainStep`)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             fused=device.type == "cuda", capturable=capturable)


def loss_weights(scales: tuple[int, ...], mode: str, device: torch.device | str) -> torch.Tensor:
    """Per-token weights w_L summing to 1: "uniform" = mean over all L tokens (the authors' loss, where the last scale
    carries pn_K^2 / L of the weight); "per_scale" = every scale weighs 1/K, shared by its tokens."""
    sizes = torch.tensor([pn * pn for pn in scales], dtype=torch.float32)
    if mode == "uniform":
        per_token = torch.full((len(scales),), 1.0 / float(sizes.sum()))
    elif mode == "per_scale":
        per_token = 1.0 / (len(scales) * sizes)
    else:
        raise ValueError(f"TrainConfig.scale_weighting must be 'uniform' or 'per_scale', got {mode!r}")
    return per_token.repeat_interleave(sizes.long()).to(device)


class TokenLoss(nn.Module):
    """Per-token cross-entropy and argmax predictions of a transformer, one module so that DDP and torch.compile
    see the whole step.

    `chunk` > 0 runs the output head and the cross-entropy on `chunk` positions at a time under activation
    checkpointing, so the float32 B x L x V logits never exist at once (the head is recomputed in the backward pass:
    about 1% more FLOPs at d16). It needs the model's forward split as `features` (blocks) and `logits` (head).
    `chunk` = 0 is the plain reference path: model(label_B, x) -> logits_BLV.
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, chunk: int = 0):
        super().__init__()
        self.model, self.label_smoothing, self.chunk = model, label_smoothing, chunk

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, target_BL: torch.Tensor):
        if self.chunk <= 0:
            return self._head_ce(self.model(label_B, x_BLCv_wo_first_l), target_BL)
        h_BLC, cond_BD = self.model.features(label_B, x_BLCv_wo_first_l)
        ce_parts, pred_parts = [], []
        for start in range(0, h_BLC.shape[1], self.chunk):
            end = start + self.chunk
            ce_Bl, pred_Bl = checkpoint(self._chunk_head_ce, h_BLC[:, start:end], cond_BD, target_BL[:, start:end],
                                        use_reentrant=False)
            ce_parts.append(ce_Bl)
            pred_parts.append(pred_Bl)
        return torch.cat(ce_parts, 1), torch.cat(pred_parts, 1)

    def _chunk_head_ce(self, h_BlC: torch.Tensor, cond_BD: torch.Tensor, target_Bl: torch.Tensor):
        return self._head_ce(self.model.logits(h_BlC, cond_BD), target_Bl)

    def _head_ce(self, logits_BlV: torch.Tensor, target_Bl: torch.Tensor):
        B, l, V = logits_BlV.shape
        ce_Bl = F.cross_entropy(logits_BlV.float().reshape(-1, V), target_Bl.reshape(-1),
                                label_smoothing=self.label_smoothing, reduction="none").view(B, l)
        return ce_Bl, logits_BlV.detach().argmax(-1)


# ----------------------------------------------------------------------------------------------- evaluation

def _batch_inputs(vae: nn.Module, idx_BL: torch.Tensor, model: nn.Module):
    """Targets (B, L) int64 and `model`'s teacher-forcing input (B, L-1, Cvae) of one batch of cached tokens."""
    target_BL = idx_BL.long()
    with torch.no_grad():
        x_BLCv_wo_first_l = teacher_forcing_input(vae, split_scales(target_BL, model.cfg.scales),
                                                  next_token=isinstance(model, ARTransformer))
    return target_BL, x_BLCv_wo_first_l


@torch.no_grad()
def evaluate(model: nn.Module, vae: nn.Module, tokens: dict, device: torch.device | str,
             batch_size: int = 256) -> dict:
    """Cross-entropy and token error rate on `tokens`, on the last scale and over all scales (the paper's
    scaling-law quantities, Sec. 5), plus per-scale lists, and `nll_per_image`: the negative log-likelihood of a
    whole sequence in nats (the sum of its L tokens' cross-entropies, = L x loss_all) averaged over the images,
    comparable between models that predict the same tokens (VAR and the AR over its tokens). Class dropout off
    (eval mode). Under torchrun the sequences are shared out between ranks and the sums all-reduced."""
    device = torch.device(device)
    scales = model.cfg.scales
    sizes = [pn * pn for pn in scales]
    scale_L = torch.arange(len(scales)).repeat_interleave(torch.tensor(sizes)).to(device)
    rank, world = rank_and_world()
    idx_NL = tokens["idx"][rank::world].to(device)
    labels_N = tokens["labels"][rank::world].to(device)
    loss_fn = TokenLoss(model)
    ce_K, wrong_K = (torch.zeros(len(scales), device=device, dtype=torch.float64) for _ in range(2))
    training = model.training
    model.eval()
    for i in range(0, len(labels_N), batch_size):
        target_BL, x_BLCv = _batch_inputs(vae, idx_NL[i:i + batch_size], model)
        with autocast(device):
            ce_BL, pred_BL = loss_fn(labels_N[i:i + batch_size], x_BLCv, target_BL)
        ce_K.index_add_(0, scale_L, ce_BL.double().sum(0))
        wrong_K.index_add_(0, scale_L, (pred_BL != target_BL).double().sum(0))
    model.train(training)
    count_K = len(labels_N) * torch.tensor(sizes, device=device, dtype=torch.float64)
    sums_3K = torch.stack([ce_K, wrong_K, count_K])
    sum_over_ranks(sums_3K)
    ce_K, wrong_K, count_K = sums_3K.cpu()
    if count_K.sum() == 0:
        raise ValueError("evaluate: no token sequences to evaluate (empty token split)")
    return dict(
        loss_all=float(ce_K.sum() / count_K.sum()), loss_last=float(ce_K[-1] / count_K[-1]),
        err_all=float(wrong_K.sum() / count_K.sum()), err_last=float(wrong_K[-1] / count_K[-1]),
        loss_per_scale=(ce_K / count_K).tolist(), err_per_scale=(wrong_K / count_K).tolist(),
        nll_per_image=float(ce_K.sum() / (count_K.sum() / sum(sizes))),
    )


# ----------------------------------------------------------------------------------------------- training

GRAPH_WARMUP_STEPS = 3  # steps run before the capture (the PyTorch docs' whole-network example warms up 3)


def check_step_mode(cfg: TrainConfig, device: torch.device, chunk: int, world: int) -> None:
    """ValueError naming the setting when `TrainConfig.cuda_graph` is asked for where the captured step cannot run."""
    if not cfg.cuda_graph:
        return
    if chunk > 0:
        raise ValueError(f"TrainConfig.cuda_graph = True with the chunked head (chunk = {chunk}): its activation "
                         f"checkpointing reads the RNG state, which a CUDA graph capture forbids; use chunk = 0 (the "
                         f"captured step is for small, host-bound models, whose logits fit at once)")
    if world > 1:
        raise ValueError(f"TrainConfig.cuda_graph = True under DistributedDataParallel ({world} processes): the "
                         f"captured step is single-process; use cuda_graph = False (or compile) with torchrun")
    if device.type != "cuda":
        raise ValueError(f"TrainConfig.cuda_graph = True captures the training step in a CUDA graph, which needs a "
                         f"CUDA device, but the model is on {device}: use cuda_graph = False (the eager step) there")


def runnable_step(cfg: TrainConfig, device: torch.device, world: int) -> TrainConfig:
    """`cfg` without its captured step where that cannot run (not CUDA, or `world` > 1 processes under torchrun), so
    that a profile's default trains the same model there with the compiled or eager step; a TrainConfig passed
    explicitly still meets `check_step_mode`'s error."""
    if cfg.cuda_graph and (device.type != "cuda" or world > 1):
        return dataclasses.replace(cfg, cuda_graph=False)
    return cfg


class TrainStep:
    """One optimisation step on a batch of cached tokens: teacher-forcing input (no grad), forward and loss under
    autocast, backward, gradient clipping, AdamW. Returns the loss and the token error rate as device tensors (no
    host sync). `chunk` > 0 selects the chunked head + cross-entropy (`TokenLoss`); benchmarks/bench_train.py
    measures whether it pays.

    The same step runs three ways, which give one artifact (`Study` leaves both switches out of the cache key):
    - eager (the reference): `step`, one PyTorch op after another;
    - `TrainConfig.compile`: `TokenLoss` (forward and backward) through torch.compile, in fused kernels;
    - `TrainConfig.cuda_graph` (CUDA only, with or without compile): `step` -- input build, forward, backward, clip,
      AdamW, zeroing the gradients -- captured once in a CUDA graph on the first call and replayed, so that a step
      costs the host one launch instead of thousands. The smallest of the study's 32 px models are host-bound: on an
      H200, VAR-d2 (B=512) trained at 71 steps/s eager, 90 graphed, 94 compiled and 240 compiled + graphed, while
      d6 and up were GPU-bound (results/bench_train/study_profile_h200/).

    Why one captured step rather than torch.compile(mode="reduce-overhead"): its CUDA graphs cover the compiled
    forward and backward only, leaving the input build, the clip and the optimizer as eager launches; it skips
    graphs silently where it cannot capture (a benchmark would then time something else than it says); and it needs
    a compilation (tens of seconds per depth) that the eager kernels captured here do not. A manual capture fails
    loudly instead, at the first call.

    How the graph mode keeps the eager step's results:
    - Static inputs: each call copies its labels and tokens into the graph's own tensors (the shapes of the first
      call hold for every call: a ValueError otherwise), fills the learning rate into a device tensor that the
      optimizer (fused AdamW, capturable) reads, and replays. The per-step batch and token-set choice stay outside,
      in the caller. The loss and error returned are copies: the next replay overwrites the graph's.
    - Warm-up: `GRAPH_WARMUP_STEPS` steps on a side stream before the capture (allocator, cuBLAS, optimizer state,
      compilation), then the capture of one step; the parameters, the optimizer state and the CPU and CUDA RNG
      states are then put back as they were, so the first replay is the first step.
    - Randomness (class dropout, drop-path, `VARConfig.drop_path` = 0.1 depth / 24 by default): the captured kernels
      draw from the default CUDA generator, which the capture registers: each replay reads the generator's seed and
      offset at replay time and advances the offset by what the step consumes, as an eager step does. So
      `torch.manual_seed(s)` before a replay gives the random numbers of an eager step after the same seed
      (`train_model` reseeds every step, so a resumed run repeats them); tests/test_train.py holds graph and eager
      steps equal with dropout on.
    - The graph reads the parameters and optimizer state where they lie: in-place changes are seen
      (`model.load_state_dict`), replaced tensors are not (an `opt.load_state_dict` after the first call: a
      RuntimeError). The model's train/eval mode at the capture holds for every replay.
    """

    def __init__(self, model: nn.Module, vae: nn.Module, cfg: TrainConfig, device: torch.device, chunk: int = 0,
                 world: int = 1):
        device = torch.device(device)
        check_step_mode(cfg, device, chunk, world)
        self.model, self.vae, self.cfg, self.device = model, vae, cfg, device
        self.scales = model.cfg.scales
        self.opt = make_optimizer(model, cfg, device, capturable=cfg.cuda_graph)
        # cuda_graph: the learning rate the graph reads, filled before each replay
        self.lr = torch.tensor(cfg.lr, device=device) if cfg.cuda_graph else None
        self.weight_L = loss_weights(self.scales, cfg.scale_weighting, device)
        net = TokenLoss(model, cfg.label_smoothing, chunk)
        if cfg.compile:
            net = torch.compile(net)
        self.net = data_parallel(net, device, world)
        self.graph: torch.cuda.CUDAGraph | None = None  # cuda_graph: captured on the first call

    def __call__(self, label_B: torch.Tensor, idx_BL: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.cuda_graph:
            for group in self.opt.param_groups:
                group["lr"] = lr
            return self.step(label_B, idx_BL)
        if self.graph is None:
            self.capture(label_B, idx_BL)
        if label_B.shape != self.label_B.shape or idx_BL.shape != self.idx_BL.shape:
            raise ValueError(f"TrainStep (cuda_graph): the graph was captured for labels {tuple(self.label_B.shape)} "
                             f"and tokens {tuple(self.idx_BL.shape)}, got {tuple(label_B.shape)} and "
                             f"{tuple(idx_BL.shape)}: every batch must have the first one's size")
        if any(group["lr"] is not self.lr for group in self.opt.param_groups):
            raise RuntimeError("TrainStep (cuda_graph): the optimizer's parameter groups were replaced after the "
                               "capture (optimizer.load_state_dict?), but the graph still reads the old state: load "
                               "the optimizer state before the first step")
        self.label_B.copy_(label_B)
        self.idx_BL.copy_(idx_BL)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.loss.clone(), self.err.clone()

    def step(self, label_B: torch.Tensor, idx_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step itself, at the optimizer's current learning rate: what the eager mode runs and the graph holds."""
        target_BL, x_BLCv_wo_first_l = _batch_inputs(self.vae, idx_BL, self.model)
        with autocast(self.device):
            ce_BL, pred_BL = self.net(label_B, x_BLCv_wo_first_l, target_BL)
        loss = (ce_BL * self.weight_L).sum(-1).mean()
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)  # foreach: no host sync
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # inside the graph: the gradients live in its memory pool
        return loss.detach(), (pred_BL != target_BL).float().mean()

    def capture(self, label_B: torch.Tensor, idx_BL: torch.Tensor) -> None:
        """Warm up, capture `step` into `self.graph`, and put the parameters, optimizer state and RNG back."""
        self.label_B, self.idx_BL = label_B.clone(), idx_BL.clone()
        for group in self.opt.param_groups:  # after any optimizer.load_state_dict (a resumed run, maybe an eager one's)
            group["lr"], group["capturable"] = self.lr, True
        params = list(self.model.parameters())
        with torch.no_grad():
            saved_params = [p.detach().clone() for p in params]
            saved_state = {p: {k: v.clone() for k, v in s.items()} for p, s in self.opt.state.items()}
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index), torch.random.fork_rng(devices=[index]):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), warnings.catch_warnings():
                # a capturable optimizer warns when it steps outside a capture, as the warm-up does on purpose
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                for _ in range(GRAPH_WARMUP_STEPS):
                    self.step(self.label_B, self.idx_BL)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.err = self.step(self.label_B, self.idx_BL)
        with torch.no_grad():
            for p, saved in zip(params, saved_params, strict=True):
                p.copy_(saved)
            for p, state in self.opt.state.items():
                for k, v in state.items():
                    if p in saved_state:
                        v.copy_(saved_state[p][k])
                    else:  # a state the warm-up created: zero, as a fresh optimizer's first step finds it
                        v.zero_()


def to_device(t_N: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without waiting for the GPU: a copy from pageable memory synchronises the host
    with the GPU's queue, which would leave the GPU idle while the host prepares the next step (the cost a
    host-bound step, and above all a replayed CUDA graph, can least afford)."""
    if device.type != "cuda":
        return t_N
    return t_N.pin_memory().to(device, non_blocking=True)


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout, drop-path and class dropout are reseeded every step, so a resumed run repeats them exactly and the
    ranks draw different masks. (Hashes of int tuples do not depend on PYTHONHASHSEED.)"""
    return hash((seed, step, rank)) % 2**63


def train_model(var_cfg: VARConfig, train_cfg: TrainConfig, vae: nn.Module, tokens_train: dict | list[dict],
                tokens_test: dict, device: torch.device | str, progress: bool = True,
                resume: TrainState | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """Train a transformer on cached tokens; returns the model (eval mode) and one history row per evaluation.

    `tokens_train`: one token set, or `train_cfg.token_sets` sets of the same images varied differently
    (`Study.training_tokens`), among which each image is drawn anew every epoch (`token_set_indices`).
    `resume`: snapshots are written there after every evaluation and picked up on the next call, which ends with
    the same parameters as an uninterrupted run. Under torchrun the model runs under DDP; rank 0 logs and saves.
    """
    rank, world, device = setup_distributed(torch.device(device))
    sets = [tokens_train] if isinstance(tokens_train, dict) else list(tokens_train)
    if len(sets) != train_cfg.token_sets:
        raise ValueError(f"{len(sets)} training token sets given, but TrainConfig.token_sets = {train_cfg.token_sets}: "
                         f"pass as many (Study.training_tokens does)")
    tokens_train = sets[0]
    for k, other in enumerate(sets[1:], 1):
        if other["idx"].shape != tokens_train["idx"].shape or not torch.equal(other["labels"], tokens_train["labels"]):
            raise ValueError(f"training token set {k} ({tuple(other['idx'].shape)}) does not hold the images of set 0 "
                             f"({tuple(tokens_train['idx'].shape)}) with the same labels in the same order: the sets "
                             f"must be versions of one split")
    L, steps = var_cfg.num_tokens, train_cfg.steps
    check_compatible(var_cfg, vae.cfg)
    if tokens_train["idx"].shape[1] != L:
        raise ValueError(f"tokens have {tokens_train['idx'].shape[1]} positions but VARConfig.scales={var_cfg.scales} "
                         f"needs {L}: encode them with a tokenizer whose scales match the transformer's")
    for name, tokens in (("training", tokens_train), ("test", tokens_test)):
        labels = tokens["labels"]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= var_cfg.num_classes):
            raise ValueError(f"the {name} tokens hold class ids in [{int(labels.min())}, {int(labels.max())}], but "
                             f"VARConfig.num_classes = {var_cfg.num_classes} (ids 0..{var_cfg.num_classes - 1}; "
                             f"{var_cfg.num_classes} is the null class): build the config from the data "
                             f"(Study.var_config)")
    n_train = len(tokens_train["labels"])
    torch.manual_seed(train_cfg.seed)
    model = build_model(var_cfg).to(device)
    vae = vae.to(device).eval()
    train_step = TrainStep(model, vae, train_cfg, device, world=world)
    idx_KNL, labels_N = torch.stack([t["idx"] for t in sets]).to(device), tokens_train["labels"].to(device)

    start, rows, wall_before = 0, [], 0.0
    snapshot = resume.load() if resume is not None else None
    if snapshot is not None:
        model.load_state_dict(snapshot["model"])
        train_step.opt.load_state_dict(snapshot["optimizer"])
        start, rows, wall_before = snapshot["step"], snapshot["history"], snapshot["wall_time_s"]

    model.train()
    loss_sum, err_sum, n_sum = (torch.zeros((), device=device) for _ in range(3))
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress or rank != 0,
               desc=f"train d{var_cfg.depth} ({len(var_cfg.scales)} scales)")
    for step in bar:
        torch.manual_seed(_step_seed(train_cfg.seed, step, rank))
        # every rank draws the same global batch and token sets (seeded by step) and trains on its own slice of it
        image_B = batch_indices(step, train_cfg.batch_size, n_train, train_cfg.seed)
        set_B = token_set_indices(step, image_B, n_train, train_cfg.token_sets, train_cfg.seed)
        batch, in_set = (to_device(share_of(t, rank, world), device) for t in (image_B, set_B))
        lr = train_cfg.lr * lr_factor(step, steps, train_cfg.warmup_frac, train_cfg.final_lr_frac)
        loss, err = train_step(labels_N[batch], idx_KNL[in_set, batch], lr)
        loss_sum += loss
        err_sum += err
        n_sum += 1
        done = step + 1
        if progress and rank == 0 and (done % 10 == 0 or done == steps):
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{1 - err.item():.3f}")
        if done % train_cfg.eval_every == 0 or done == steps:
            train_stats = torch.stack([loss_sum, err_sum]) / n_sum
            mean_over_ranks(train_stats)
            test = evaluate(model, vae, tokens_test, device)
            wall = wall_before + time.perf_counter() - t0
            tokens_seen = done * train_cfg.batch_size * L
            rows.append(dict(step=done, lr=lr, train_loss=float(train_stats[0]), train_err=float(train_stats[1]),
                             test_loss_all=test["loss_all"], test_loss_last=test["loss_last"],
                             test_err_all=test["err_all"], test_err_last=test["err_last"],
                             test_loss_per_scale=test["loss_per_scale"], test_err_per_scale=test["err_per_scale"],
                             wall_time_s=wall, tokens_seen=tokens_seen,
                             flops_seen=float(model.flops_per_token()) * tokens_seen))
            for acc in (loss_sum, err_sum, n_sum):
                acc.zero_()
            if rank == 0:
                log.info("d%d step %d/%d: train loss %.4f, test loss %.4f (last scale %.4f), test err %.4f",
                         var_cfg.depth, done, steps, rows[-1]["train_loss"], test["loss_all"], test["loss_last"],
                         test["err_all"])
                if resume is not None:
                    resume.save(dict(step=done, model=model.state_dict(), optimizer=train_step.opt.state_dict(),
                                     history=rows, wall_time_s=wall))
    bar.close()
    return model.eval(), pd.DataFrame(rows)


def token_set_indices(step: int, image_B: torch.Tensor, n: int, sets: int, seed: int) -> torch.Tensor:
    """The token set each image of `step`'s global batch (`image_B`, from `batch_indices`) is read from. Over every
    `sets` consecutive epochs each image visits each of its sets once, in an order of its own (seeded, so a resumed
    run reads what an uninterrupted one reads): no version of an image comes back before all of them have been seen,
    as the authors draw a fresh random crop of every image in every epoch."""
    if sets == 1:
        return torch.zeros_like(image_B)
    epoch_B = (step * len(image_B) + torch.arange(len(image_B))) // n  # the positions `batch_indices` walks
    set_B = torch.empty_like(image_B)
    for epoch in epoch_B.unique().tolist():
        in_epoch = epoch_B == epoch
        set_B[in_epoch] = _set_order(n, sets, seed, epoch // sets)[image_B[in_epoch], epoch % sets]
    return set_B


@functools.lru_cache(maxsize=2)
def _set_order(n: int, sets: int, seed: int, block: int) -> torch.Tensor:
    """(n, sets): row i is the order in which image i visits its sets in the epochs of `block` (`sets` of them)."""
    return torch.rand(n, sets, generator=seeded_generator(seed, 1, block)).argsort(1)


if __name__ == "__main__":  # python -m varlib.train: the command line lives in varlib.cli
    from .cli import train_main

    train_main()
