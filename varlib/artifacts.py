"""The artifact cache: trained models stored under a key derived from their full configuration.

`get_or_build(kind, spec, build)` returns the cached artifact for `spec` (any JSON-able description: dataclass
configs, dataset ids, upstream artifact keys), building and storing it only when it is missing. `TrainState` saves
and restores training progress for resumable runs.

A cache file is a magic line, a one-line JSON header (format, key, spec, sha256 and length of the payload) and the
payload bytes from `torch.save`. Every read checks the length and the checksum, then unpickles with
`weights_only=True`: a flipped byte is refused instead of loaded, and no file, cached or passed in by a user
(`load_checkpoint`), can run code. Payloads therefore hold only tensors and plain values (dict, list, tuple, str,
int, float, bool, None); store configs as `jsonable(cfg)`. Writes are atomic (a temporary file, then a rename), so
an interrupted run or a full disk never leaves a half-written file that a later run would pick up.

Location: $VARLIB_CACHE, else ~/.cache/varlib. `make clean-cache` removes it. With VARLIB_CACHE_READONLY=1 (or a
cache directory that cannot be written) hits load as usual, nothing is written, and a miss fails before building.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: checksummed header + weights-only payload; part of every key, so format-1 files never match
MAGIC = b"varlib-artifact\n"
MAX_HEADER_BYTES = 1 << 20
PLAIN_TYPES = (str, int, float, bool, type(None))


class ArtifactError(RuntimeError):
    """A cached file that is missing, corrupt or incompatible; the message names the file."""


def cache_dir() -> Path:
    return Path(os.environ.get("VARLIB_CACHE", Path.home() / ".cache" / "varlib")).expanduser()


def cache_writable() -> bool:
    """False when $VARLIB_CACHE_READONLY is set (1/true/yes/on) or no file can be created in `cache_dir()`."""
    flag = os.environ.get("VARLIB_CACHE_READONLY", "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return False
    if flag not in ("", "0", "false", "no", "off"):
        raise ValueError(f"VARLIB_CACHE_READONLY={flag!r}: expected 1/true/yes/on or 0/false/no/off (or unset)")
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir()):
            return True
    except OSError:
        return False


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON values: dataclasses become dicts tagged with their type, paths strings, tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{k: jsonable(v) for k, v in dataclasses.asdict(obj).items()}}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def key_of(kind: str, spec: Any) -> str:
    """A short content hash of `spec` (configs, data description), prefixed by the artifact kind."""
    blob = json.dumps({"kind": kind, "format": FORMAT_VERSION, "spec": jsonable(spec)}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def key_path(key: str) -> Path:
    """The cache file of the artifact with key `key` (`key_of`: its kind, a dash, the hash): <cache>/<kind>/<key>.pt."""
    return cache_dir() / key.rsplit("-", 1)[0] / f"{key}.pt"


def artifact_path(kind: str, spec: Any) -> Path:
    return key_path(key_of(kind, spec))


# ----------------------------------------------------------------------------------------------- writing

def _check_weights_only(obj: Any, where: str, path: Path) -> None:
    """Raise TypeError naming the first value (by key path) that `torch.load(weights_only=True)` would refuse."""
    if type(obj) in (torch.Tensor, torch.nn.Parameter) or type(obj) in PLAIN_TYPES:
        return
    if type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if type(k) not in PLAIN_TYPES:
                raise TypeError(f"{path}: cannot store {where}: its key {k!r} is a {type(k).__name__}; "
                                "keys must be str, int, float, bool or None")
            _check_weights_only(v, f"{where}[{k!r}]", path)
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]", path)
        return
    raise TypeError(f"{path}: cannot store {where}, a {type(obj).__module__}.{type(obj).__qualname__}: cache files "
                    "load with weights_only=True, which takes only tensors, dict, list, tuple, str, int, float, "
                    "bool and None; store configs as varlib.artifacts.jsonable(cfg)")


def atomic_write(path: Path, *chunks: bytes | memoryview) -> None:
    """Write `chunks` to `path` through a temporary file and a rename: `path` is either the old file or the
    complete new one, and no temporary file is left behind. A full disk is an ArtifactError saying what to do."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            size = sum(memoryview(c).nbytes for c in chunks)
            raise ArtifactError(f"no space left on device writing {path} ({size / 1e6:.1f} MB); free space or "
                                "point VARLIB_CACHE at another disk") from e
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj: Any, path: Path, spec: Any = None) -> None:
    """Write `obj` atomically as a checksummed cache file whose key is the file name (less ".pt"); `spec` goes
    in its header."""
    _check_weights_only(obj, "payload", path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()
    header = {"format": FORMAT_VERSION, "key": path.name.removesuffix(".pt"), "spec": jsonable(spec),
              "sha256": hashlib.sha256(payload).hexdigest(), "bytes": payload.nbytes}
    atomic_write(path, MAGIC, json.dumps(header, sort_keys=True).encode() + b"\n", payload)


# ----------------------------------------------------------------------------------------------- reading

def _torch_reason(e: Exception) -> str:
    """The informative sentence of torch's (long, multi-paragraph) load error."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")
    reason = next((line for line in lines if line and not line.startswith(boilerplate)), "") or type(e).__name__
    reason = reason.removeprefix("WeightsUnpickler error: ").split(". ")[0]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _read(path: Path, map_location: str | torch.device) -> tuple[dict, Any]:
    """(header, payload) of one cache file, its length and checksum verified."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    redo = "delete it to rebuild it"
    with open(path, "rb") as f:
        if f.readline(len(MAGIC)) != MAGIC:
            raise ArtifactError(f"{path}: not a varlib cache file (no varlib header: written by an older varlib or "
                                f"another program); {redo}")
        try:
            header = json.loads(f.readline(MAX_HEADER_BYTES))
            fmt, sha, n = header["format"], header["sha256"], header["bytes"]
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: corrupt (unreadable header: {e}); {redo}") from e
        payload = f.read()
    if fmt != FORMAT_VERSION:
        raise ArtifactError(f"{path}: written in cache format {fmt}, this varlib reads format {FORMAT_VERSION}; "
                            f"{redo}")
    if len(payload) != n:
        raise ArtifactError(f"{path}: corrupt (truncated: {len(payload)} of {n} payload bytes); {redo}")
    if hashlib.sha256(payload).hexdigest() != sha:
        raise ArtifactError(f"{path}: corrupt (checksum mismatch: the content changed after it was written); {redo}")
    try:
        return header, torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for payloads it cannot read
        raise ArtifactError(f"{path}: corrupt or not loadable ({type(e).__name__}: {_torch_reason(e)}); "
                            f"{redo}") from e


def _read_keyed(path: Path, key: str, map_location: str | torch.device) -> Any:
    header, payload = _read(path, map_location)
    if header.get("key") != key:
        raise ArtifactError(f"{path}: incompatible artifact (its key {header.get('key')!r} does not match this "
                            "configuration); delete it to rebuild it")
    return payload


def read_artifact(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The payload of one cache file given only its path (what `build()` returned, or a `TrainState` snapshot),
    checksum verified."""
    return _read(Path(path), map_location)[1]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A checkpoint file from outside the cache (e.g. the authors' released `.pth` state dicts), loaded with
    `weights_only=True`: a file that needs pickled code to load is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or code-carrying files
        if "Weights only load failed" in str(e):
            raise ArtifactError(f"{path}: refused: not a plain state dict / tensor file, loading it would run "
                                f"pickled code ({_torch_reason(e)}); load only files of tensors and plain "
                                "values, e.g. a model.state_dict()") from e
        raise ArtifactError(f"{path}: corrupt or not a torch checkpoint ({type(e).__name__}: {_torch_reason(e)})") \
            from e


# ----------------------------------------------------------------------------------------------- the cache

def _read_only_error(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}: the cache {cache_dir()} is read-only (VARLIB_CACHE_READONLY or "
                         "permissions); unset VARLIB_CACHE_READONLY, or point VARLIB_CACHE at a writable copy")


def get_or_build(kind: str, spec: Any, build: Callable[[], dict], map_location: str | torch.device = "cpu") -> dict:
    """Load the artifact for `spec`, or call `build()` (which returns a dict) and store it."""
    path, key = artifact_path(kind, spec), key_of(kind, spec)
    if path.is_file():
        payload = _read_keyed(path, key, map_location)
        log.info("cache hit: %s", path)
        return payload
    if not cache_writable():
        raise _read_only_error(path, "not in the cache and cannot be built")
    log.info("cache miss: building %s", path)
    payload = build()
    atomic_save(payload, path, spec)
    return payload


class TrainState:
    """Periodic, atomic snapshots of a training run so that an interrupted run resumes where it stopped."""

    def __init__(self, kind: str, spec: Any):
        self.key = f"{key_of(kind, spec)}.resume"
        self.path = key_path(self.key)
        self.spec = spec

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = _read_keyed(self.path, self.key, "cpu")
        log.info("resuming from %s (step %s)", self.path, state.get("step"))
        return state

    def save(self, state: dict) -> None:
        if not cache_writable():
            raise _read_only_error(self.path, "cannot save training progress")
        atomic_save(state, self.path, self.spec)

    def clear(self) -> None:
        """Delete the snapshot (training finished); a read-only cache keeps it."""
        if self.path.is_file() and cache_writable():
            self.path.unlink(missing_ok=True)
