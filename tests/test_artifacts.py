import errno
import json
import os
from unittest import mock

import numpy as np
import pytest
import torch

from varlib.artifacts import (
    MAGIC,
    ArtifactError,
    TrainState,
    artifact_path,
    atomic_save,
    cache_writable,
    get_or_build,
    jsonable,
    key_of,
    load_checkpoint,
    read_artifact,
)
from varlib.config import DataConfig, TokenizerConfig


def test_key_depends_on_every_field():
    a, b = TokenizerConfig(), TokenizerConfig(vocab_size=512)
    assert key_of("tokenizer", a) == key_of("tokenizer", TokenizerConfig())
    assert key_of("tokenizer", a) != key_of("tokenizer", b)
    assert key_of("tokenizer", a) != key_of("var", a)


def test_cache_miss_then_hit(fresh_cache):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(3)}

    spec = {"cfg": TokenizerConfig(), "data": "x"}
    first = get_or_build("demo", spec, build)
    second = get_or_build("demo", spec, build)
    assert calls == [1] and torch.equal(first["w"], second["w"])
    path = artifact_path("demo", spec)
    assert path.is_relative_to(fresh_cache)
    assert not list(fresh_cache.rglob("*.tmp"))  # atomic write leaves no temporary file
    with open(path, "rb") as f:  # readable header: what the file is, without unpickling it
        assert f.readline() == MAGIC
        header = json.loads(f.readline())
    assert header["key"] == key_of("demo", spec) and header["spec"] == jsonable(spec)
    assert header["bytes"] == path.stat().st_size - len(MAGIC) - len(json.dumps(header, sort_keys=True)) - 1
    assert torch.equal(read_artifact(path)["w"], torch.arange(3))


def _flip_tensor_byte(path):
    """Flip one bit inside the stored ones (float32 1.0): torch.load alone would load 0.25 without complaint."""
    raw = bytearray(path.read_bytes())
    i = raw.find(b"\x00\x00\x80\x3f" * 4)
    assert i > 0
    raw[i + 3] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_byte_is_refused(fresh_cache):
    spec = {"a": 1}
    get_or_build("demo", spec, lambda: {"w": torch.ones(100)})
    path = artifact_path("demo", spec)
    _flip_tensor_byte(path)
    for load in (lambda: get_or_build("demo", spec, lambda: {}), lambda: read_artifact(path)):
        with pytest.raises(ArtifactError, match=f"{path}: corrupt \\(checksum mismatch.*delete it"):
            load()
    st = TrainState("demo", spec)
    st.save({"step": 3, "x": torch.ones(10)})
    _flip_tensor_byte(st.path)
    with pytest.raises(ArtifactError, match=f"{st.path}: corrupt \\(checksum mismatch"):
        st.load()


def test_corrupt_truncated_and_incompatible_files(fresh_cache):
    spec = {"a": 1}
    path = artifact_path("demo", spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match=str(path) + ": not a varlib cache file.*delete it"):
        get_or_build("demo", spec, lambda: {})
    path.write_bytes(MAGIC + b"{not json\n" + b"payload")
    with pytest.raises(ArtifactError, match=str(path) + ": corrupt \\(unreadable header"):
        get_or_build("demo", spec, lambda: {})
    other = artifact_path("demo", {"a": 2})
    get_or_build("demo", {"a": 2}, lambda: {"w": torch.ones(3)})
    path.write_bytes(other.read_bytes()[:-5])
    with pytest.raises(ArtifactError, match=str(path) + ": corrupt \\(truncated"):
        get_or_build("demo", spec, lambda: {})
    path.write_bytes(other.read_bytes())  # a valid file under the wrong key
    with pytest.raises(ArtifactError, match="incompatible"):
        get_or_build("demo", spec, lambda: {})


def test_failed_build_leaves_nothing(fresh_cache):
    def build():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_or_build("demo", {"a": 2}, build)
    assert not artifact_path("demo", {"a": 2}).exists()


def test_train_state_roundtrip(fresh_cache):
    st = TrainState("demo", {"a": 3})
    assert st.load() is None
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    st.save({"step": 7, "x": torch.ones(2), "opt": opt.state_dict(), "rng": torch.get_rng_state()})
    state = st.load()
    assert state["step"] == 7 and state["opt"]["param_groups"][0]["betas"] == opt.param_groups[0]["betas"]
    st.clear()
    assert st.load() is None


def test_only_weights_only_types_are_stored(fresh_cache):
    spec = {"a": 4}
    with pytest.raises(TypeError, match=r"payload\['configs'\]\['data'\], a varlib.config.DataConfig.*jsonable"):
        get_or_build("demo", spec, lambda: {"w": torch.ones(1), "configs": {"data": DataConfig()}})
    assert not artifact_path("demo", spec).exists()
    with pytest.raises(TypeError, match=r"payload\['h'\]\[1\], a numpy.float64"):
        TrainState("demo", spec).save({"h": [1.0, np.float64(2.0)]})
    payload = get_or_build("demo", spec, lambda: {"configs": {"data": jsonable(DataConfig())}})
    assert payload["configs"]["data"]["name"] == "fashion-mnist"


class _Marker:
    """Unpickling this (with weights_only=False) creates a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_load_checkpoint_refuses_code(tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "x": _Marker(marker)}, evil)
    with pytest.raises(ArtifactError, match=f"{evil}: refused: not a plain state dict / tensor file.*"
                                            r"\(Unsupported global: GLOBAL io.open"):
        load_checkpoint(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file is live: an unsafe load would have created the marker
    assert marker.exists()


def test_load_checkpoint_state_dict_missing_and_corrupt(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    state = load_checkpoint(tmp_path / "model.pth")
    assert state.keys() == model.state_dict().keys() and torch.equal(state["weight"], model.weight)
    with pytest.raises(ArtifactError, match="absent.pth: no such file"):
        load_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
    with pytest.raises(ArtifactError, match="junk.pth: corrupt or not a torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")


def _listing(root):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def test_read_only_cache_hit_writes_nothing(fresh_cache, monkeypatch):
    spec = {"a": 5}
    get_or_build("demo", spec, lambda: {"w": torch.arange(4)})
    TrainState("demo", {"a": 6}).save({"step": 1})  # a stale snapshot of another run
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "1")
    assert not cache_writable()
    before = _listing(fresh_cache)

    def build():
        raise AssertionError("build() called on a hit")

    assert torch.equal(get_or_build("demo", spec, build)["w"], torch.arange(4))
    st = TrainState("demo", spec)
    assert st.load() is None
    st.clear()  # nothing to delete
    stale = TrainState("demo", {"a": 6})
    stale.clear()  # read-only: kept
    assert stale.load()["step"] == 1
    assert _listing(fresh_cache) == before


def test_read_only_cache_miss_fails_before_build(fresh_cache, monkeypatch):
    fresh_cache.mkdir()
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "true")
    build = mock.Mock(return_value={})
    path = artifact_path("demo", {"a": 7})
    with pytest.raises(ArtifactError, match=f"{path}: not in the cache.*read-only.*VARLIB_CACHE_READONLY"):
        get_or_build("demo", {"a": 7}, build)
    build.assert_not_called()
    with pytest.raises(ArtifactError, match="cannot save training progress.*read-only"):
        TrainState("demo", {"a": 7}).save({"step": 1})
    assert list(fresh_cache.rglob("*")) == []


def test_cache_writable(fresh_cache, monkeypatch, tmp_path):
    assert cache_writable()
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "0")
    assert cache_writable()
    monkeypatch.setenv("VARLIB_CACHE_READONLY", "maybe")
    with pytest.raises(ValueError, match="VARLIB_CACHE_READONLY='maybe'"):
        cache_writable()
    monkeypatch.delenv("VARLIB_CACHE_READONLY")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot be created, even as root
    assert not cache_writable()


def test_full_disk_is_named_and_leaves_no_file(fresh_cache):
    spec = {"a": 8}
    path = artifact_path("demo", spec)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with mock.patch("varlib.artifacts.os.fsync", side_effect=full):  # after the bytes went to the temporary file
        with pytest.raises(ArtifactError, match=f"no space left on device writing {path}.*VARLIB_CACHE"):
            get_or_build("demo", spec, lambda: {"w": torch.ones(1000)})
    assert not path.exists() and list(fresh_cache.rglob("*.*")) == []
    with mock.patch("varlib.artifacts.os.fsync", side_effect=OSError(errno.EIO, "I/O error")):
        with pytest.raises(OSError, match="I/O error"):
            atomic_save({"w": torch.ones(1)}, path)
    assert list(fresh_cache.rglob("*.*")) == []
    assert torch.equal(get_or_build("demo", spec, lambda: {"w": torch.ones(3)})["w"], torch.ones(3))
