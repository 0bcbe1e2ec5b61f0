"""Tables, figures and the provenance record written beside them.

Every number a notebook publishes goes through `Report`: tables to results/<notebook>/ (CSV and Markdown),
figures to figures/<notebook>/ (PNG), and provenance.json in both folders (git SHA, parameters, device, torch
version, seed, wall time), rewritten after each write so that it is never missing beside a result.
"""

from __future__ import annotations

import json
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
        rec = {
            "notebook": self.name,
            "git_sha": git_sha(),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
            "seed": self.seed,
            "parameters": _jsonable(self.params),
            **device_info(self.device),
            "files": sorted(set(self.written)),
            **_jsonable(self.extra),
        }
        for folder in (self.results, self.figures):
            if folder.exists():
                (folder / "provenance.json").write_text(json.dumps(rec, indent=2) + "\n")
