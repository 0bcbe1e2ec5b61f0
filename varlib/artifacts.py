"""The artifact cache: trained models stored under a key derived from their full configuration.

`get_or_build(kind, spec, build)` returns the cached artifact for `spec` (any JSON-able description: dataclass
configs, dataset names, upstream artifact keys), building and storing it only when it is missing. Writes are atomic
(written to a temporary file, then renamed), so an interrupted run never leaves a half-written checkpoint that a later
run would pick up. `TrainState` saves and restores training progress for resumable runs.

Location: $VARLIB_CACHE, else ~/.cache/varlib. `make clean-cache` removes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A cached file that is missing, corrupt or incompatible; the message names the file."""


def cache_dir() -> Path:
    return Path(os.environ.get("VARLIB_CACHE", Path.home() / ".cache" / "varlib")).expanduser()


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def key_of(kind: str, spec: Any) -> str:
    """A short content hash of `spec` (configs, data description), prefixed by the artifact kind."""
    blob = json.dumps({"kind": kind, "format": FORMAT_VERSION, "spec": _jsonable(spec)}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ArtifactError(f"{path}: corrupt or not a torch checkpoint ({type(e).__name__}: {e}); "
                            "delete it to rebuild it") from e


def artifact_path(kind: str, spec: Any) -> Path:
    return cache_dir() / kind / f"{key_of(kind, spec)}.pt"


def get_or_build(kind: str, spec: Any, build: Callable[[], dict], map_location: str | torch.device = "cpu") -> dict:
    """Load the artifact for `spec`, or call `build()` (which returns a dict) and store it."""
    path = artifact_path(kind, spec)
    if path.is_file():
        blob = load_file(path, map_location)
        if not isinstance(blob, dict) or blob.get("key") != key_of(kind, spec):
            raise ArtifactError(f"{path}: incompatible artifact (its key does not match this configuration); "
                                "delete it to rebuild it")
        log.info("cache hit: %s", path)
        return blob["payload"]
    log.info("cache miss: building %s", path)
    payload = build()
    atomic_save({"key": key_of(kind, spec), "spec": _jsonable(spec), "payload": payload}, path)
    return payload


class TrainState:
    """Periodic, atomic snapshots of a training run so that an interrupted run resumes where it stopped."""

    def __init__(self, kind: str, spec: Any):
        self.path = cache_dir() / kind / f"{key_of(kind, spec)}.resume.pt"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = load_file(self.path)
        log.info("resuming from %s (step %s)", self.path, state.get("step"))
        return state

    def save(self, state: dict) -> None:
        atomic_save(state, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
