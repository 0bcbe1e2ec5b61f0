"""Tables, figures and the provenance record written beside them.

Every number a notebook publishes goes through `Report`: tables to results/<notebook>/ (CSV and Markdown),
figures to figures/<notebook>/ (PNG), and provenance.json in both folders (git SHA, parameters, device, torch
version, seed, wall time), rewritten after each write so that it is never missing beside a result.
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

from .artifacts import _jsonable


def git_sha(cwd: Path | None = None) -> str:
    """HEAD's SHA (with "-dirty" for uncommitted changes); $VARLIB_GIT_SHA where the tree is a copy without .git
    (a remote GPU machine)."""
    if os.environ.get("VARLIB_GIT_SHA"):
        return os.environ["VARLIB_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, check=True).stdout.strip()
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


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Report:
    """Writes one notebook's outputs: `results/<name>/`, `figures/<name>/` under `out_dir`, with provenance."""

    def __init__(self, name: str, params: dict, out_dir: str | Path = ".", device: torch.device | str = "cpu",
                 seed: int | None = None):
        self.name, self.params, self.seed = name, dict(params), seed
        self.results = Path(out_dir) / "results" / name
        self.figures = Path(out_dir) / "figures" / name
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
        "parameters": _jsonable(params),
        **device_info(device),
        "files": sorted(set(map(str, files))),
        **_jsonable(extra or {}),
    }


def write_provenance(folder: Path, record: dict) -> Path:
    path = Path(folder) / "provenance.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def repo_root(start: Path | None = None) -> Path:
    """The checkout's top folder (where pyproject.toml is), so notebooks write to results/ from any working dir."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "varlib").is_dir():
            return d
    return here


def start_study(name: str, profile: str = "quick", dataset: str = "fashion-mnist", resolution: int | None = None,
                device: str = "auto", seed: int = 0, out_dir: str | None = None, **params: Any):
    """Everything a notebook's first cell needs: the profile adapted to the data, the device, a seeded RNG, logging,
    and the Report that writes its tables and figures. Returns (profile, device, report)."""
    import logging

    from .config import get_profile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    prof = get_profile(profile, dataset=dataset, resolution=resolution)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    all_params = dict(profile=profile, dataset=dataset, resolution=prof.data.resolution, device=str(dev), seed=seed,
                      **params)
    report = Report(name, all_params, out_dir=out_dir or repo_root(), device=dev, seed=seed)
    return prof, dev, report


def image_grid(ax, images: torch.Tensor, nrow: int, title: str | None = None) -> None:
    """Draw a batch (N, C, H, W) — uint8, or floats in [-1, 1] — as one image with `nrow` images per row."""
    from torchvision.utils import make_grid

    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float() + 1) / 2
    grid = make_grid(x.clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    ax.imshow(grid[..., 0] if images.shape[1] == 1 else grid, cmap="gray" if images.shape[1] == 1 else None,
              vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
