"""Tables, figures and the provenance record written beside them.

Every number a notebook publishes goes through `Report`: tables to results/<notebook>/ (CSV and Markdown),
figures to figures/<notebook>/ (PNG) -- one level deeper, in <profile>/, for every profile but `full` -- and
provenance.json in both folders (varlib's git SHA, parameters, device, torch version, seed, wall time), rewritten
after each write so that it is never missing beside a result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .artifacts import jsonable

PACKAGE_DIR = Path(__file__).resolve().parent


def git_sha(tree: Path = PACKAGE_DIR) -> str:
    """The commit of the checkout holding `tree` (by default varlib's own package, whatever the current directory),
    with "-dirty" for uncommitted changes to tracked files; $VARLIB_GIT_SHA where the tree is a copy without .git
    (a remote GPU machine); "unknown" for an installed copy outside any checkout."""
    if os.environ.get("VARLIB_GIT_SHA"):
        return os.environ["VARLIB_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_info(device: torch.device | str) -> dict:
    device = torch.device(device)
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "host_cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def default_out_dir() -> Path:
    """Where results/ and figures/ go when a run names no out_dir: the checkout varlib was imported from (where
    pyproject.toml is), else the current directory."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def output_folders(out_dir: str | Path, name: str, profile: str) -> tuple[Path, Path]:
    """(results, figures) folders of one notebook at one profile: <out_dir>/results/<name>/ for the full profile (the
    study's published results), <out_dir>/results/<name>/<profile>/ for the others, likewise under figures/, so that
    a quick or smoke run never overwrites the full one."""
    sub = () if profile == "full" else (profile,)
    return Path(out_dir, "results", name, *sub), Path(out_dir, "figures", name, *sub)


class Report:
    """Writes one notebook's outputs with provenance, into `output_folders(out_dir, name, profile)`."""

    def __init__(self, name: str, params: dict, out_dir: str | Path | None = None,
                 device: torch.device | str = "cpu", seed: int | None = None, profile: str = "full"):
        self.name, self.params, self.seed = name, dict(params), seed
        self.results, self.figures = output_folders(out_dir or default_out_dir(), name, profile)
        self.device = torch.device(device)
        self.t0 = time.perf_counter()
        self.sha = git_sha()  # the code that ran: taken at the start, not when a file is written
        self.written: list[str] = []
        self.extra: dict[str, Any] = {}

    def table(self, df: pd.DataFrame, name: str, floatfmt: str = ".4g") -> Path:
        self.results.mkdir(parents=True, exist_ok=True)
        csv = self.results / f"{name}.csv"
        df.to_csv(csv, index=False)
        (self.results / f"{name}.md").write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        self.written += [str(csv), str(self.results / f"{name}.md")]
        self._provenance()
        return csv

    def figure(self, fig, name: str, dpi: int = 130) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        path = self.figures / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        self.written.append(str(path))
        self._provenance()
        return path

    def note(self, **kv: Any) -> None:
        """Extra facts for the provenance record (artifact keys, sample counts, sampling preset)."""
        self.extra.update(kv)
        self._provenance()

    def _provenance(self) -> None:
        rec = provenance(self.name, self.params, self.device, self.seed, time.perf_counter() - self.t0,
                         self.written, self.extra, sha=self.sha)
        for folder in (self.results, self.figures):
            if folder.exists():
                write_provenance(folder, rec)


def provenance(name: str, params: dict, device: torch.device | str, seed: int | None, wall_time_s: float,
               files: list[str], extra: dict | None = None, sha: str | None = None) -> dict:
    """The record kept beside every result: what ran (git SHA, parameters, seed), where (device, GPU, torch), how
    long, and which files it wrote."""
    return {
        "notebook": name,
        "git_sha": sha or git_sha(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 2),
        "seed": seed,
        "parameters": jsonable(params),
        **device_info(device),
        "files": sorted(set(map(str, files))),
        **jsonable(extra or {}),
    }


def write_provenance(folder: Path, record: dict) -> Path:
    path = Path(folder) / "provenance.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def image_grid(ax, images: torch.Tensor, nrow: int, title: str | None = None,
               row_labels: list[str] | None = None) -> None:
    """Draw a batch (N, C, H, W) — uint8, or floats in [-1, 1] — as one image with `nrow` images per row;
    `row_labels` names each row at its left (e.g. the class names of a one-row-per-class grid)."""
    from torchvision.utils import make_grid

    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float() + 1) / 2
    grid = make_grid(x.clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    ax.imshow(grid[..., 0] if images.shape[1] == 1 else grid, cmap="gray" if images.shape[1] == 1 else None,
              vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_frame_on(False)
    if row_labels:
        cell = images.shape[-2] + 1  # make_grid's padding of 1
        ax.set_yticks([1 + cell * (i + 0.5) for i in range(len(row_labels))], row_labels, fontsize=8)
        ax.tick_params(left=False)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
