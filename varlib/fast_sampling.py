"""The fast path beside the plain sampling loop: `sample_var`'s transformer steps replayed from CUDA graphs.

`VARSampler` runs `varlib.sampling.var_loop` (the same loop, the same token choice, the same generator use) with
`GraphedSteps` in place of `CachedSteps`, and decodes with the compiled decoder; tests/test_sampling.py holds its
tokens and images equal to `sample_var(compile=True)` on a GPU.
"""

from __future__ import annotations

import torch

from .config import SampleConfig
from .sampling import CachedSteps, both_branches, check_sampling_args, eval_mode, labels_on, var_loop
from .transformer import VAR, compute_dtype


class GraphedSteps:
    """`CachedSteps` (compiled blocks) replayed from CUDA graphs: one graph per scale for a fixed number of rows.

    A step launches about 20 kernels per block; replaying its graph launches them with one host call, so the GPU no
    longer waits on Python between kernels (at d16, B=64 the eager loop left the GPU idle for a fifth of the call).
    Warm-up runs compile the blocks and allocate the KV caches and the condition outside any graph; the graphs
    are then captured from one memory pool, the largest step first, so that every smaller step reuses its memory
    (in scale order each larger step would add its own: 18 GB more at d30, B=256). Each call writes its labels and
    each step's input into the graphs' own tensors and replays. The graphs read the model's parameters where they
    lie: in-place updates (an optimiser step, load_state_dict) are seen, a model moved to another device or dtype
    needs a new instance. They run under the autocast state of the capture (its dtype is part of `VARSampler`'s
    key), with autocast's weight cache off so that no cast is taken from outside the graph."""

    def __init__(self, model, rows: int):
        device = model.lvl_1L.device
        self.labels_R = torch.full((rows,), model.num_classes, device=device)
        self.inputs = {begin: torch.zeros(rows, end - begin, model.cfg.z_channels, device=device)
                       for begin, end in model.begin_ends[1:]}
        widest = max(end - begin for begin, end in model.begin_ends)
        # every step writes its logits into one buffer sized for the largest step (one per step: 5.7 GB at d30,
        # B=256 with guidance, instead of 2.1 GB)
        logits_RlV = torch.empty(rows, widest, model.cfg.vocab_size, device=device)
        dtype = compute_dtype(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False):
            self.steps = CachedSteps(model, self.labels_R, model.scales[-1] ** 2, compile=True)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            # the warm-up, twice: the second run takes the path of the captures (caches allocated, then seek), so
            # that nothing compiles or autotunes (which synchronises) while a graph is being captured
            with torch.cuda.stream(side):
                for _ in range(2):
                    for begin, _ in model.begin_ends:
                        self.steps(begin, self.inputs.get(begin))
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.empty_cache()  # the warm-up's intermediates go back to the device, for the graphs' pool
            pool = torch.cuda.graph_pool_handle()
            self.graphs, self.logits = {}, {}
            for begin, end in reversed(model.begin_ends):
                self.graphs[begin] = torch.cuda.CUDAGraph()
                self.logits[begin] = logits_RlV[:, :end - begin]
                with torch.cuda.graph(self.graphs[begin], pool=pool):
                    self.logits[begin].copy_(self.steps(begin, self.inputs.get(begin)))

    def set_labels(self, labels_R: torch.Tensor) -> None:
        self.labels_R.copy_(labels_R)

    def __call__(self, begin: int, x_RlCv: torch.Tensor | None) -> torch.Tensor:
        """The step's logits (R, l, V): a view of the graphs' buffer, overwritten by the next replay."""
        if x_RlCv is not None:
            self.inputs[begin].copy_(x_RlCv)
        self.graphs[begin].replay()
        return self.logits[begin]


class VARSampler:
    """`sample_var` for repeated calls on a GPU: the transformer steps replayed from CUDA graphs (`GraphedSteps`,
    captured on the first call for each number of rows and autocast dtype), the decoder compiled. It draws the tokens
    `sample_var` draws under the same generator (token choice runs outside the graphs, as there).

        sampler = VARSampler(model, vae)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            idx_Bl, images = sampler(labels_B, README_SAMPLING, generator)

    The graphs keep their KV caches (and the pool they were captured in) between calls: at d30 with B=256 and
    guidance that is 50 GB; `release()` gives it back."""

    def __init__(self, model: VAR, vae):
        if model.lvl_1L.device.type != "cuda":
            raise ValueError(f"VARSampler replays CUDA graphs: the model is on {model.lvl_1L.device}; use sample_var "
                             f"on the CPU")
        self.model, self.vae = model, vae
        self.graphs: dict[tuple[int, torch.dtype], GraphedSteps] = {}

    @torch.no_grad()
    def __call__(self, labels_B, sample_cfg: SampleConfig, generator: torch.Generator,
                 decode: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        model, vae = self.model, self.vae
        labels_B = labels_on(model, labels_B)
        check_sampling_args(model, labels_B, sample_cfg)
        labels_R = both_branches(labels_B, model.num_classes, sample_cfg.cfg > 0)
        with eval_mode(model, vae):
            key = (len(labels_R), compute_dtype(labels_R.device))
            if key not in self.graphs:
                self.graphs[key] = GraphedSteps(model, len(labels_R))
            steps = self.graphs[key]
            steps.set_labels(labels_R)
            idx_Bl, f_hat = var_loop(model, vae, labels_B, sample_cfg, generator, steps)
            return idx_Bl, vae.fhat_to_img(f_hat, compile=True) if decode else None

    def release(self) -> None:
        """Drop the captured graphs and their memory (the next call captures again)."""
        self.graphs.clear()
        torch.cuda.empty_cache()

