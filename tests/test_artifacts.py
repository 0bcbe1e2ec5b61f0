import pytest
import torch

from varlib.artifacts import ArtifactError, TrainState, artifact_path, get_or_build, key_of
from varlib.config import TokenizerConfig


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
    assert artifact_path("demo", spec).is_relative_to(fresh_cache)
    assert not list(fresh_cache.rglob("*.tmp"))  # atomic write leaves no temporary file


def test_corrupt_and_incompatible_files(fresh_cache):
    spec = {"a": 1}
    path = artifact_path("demo", spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match=str(path) + ": corrupt"):
        get_or_build("demo", spec, lambda: {})
    torch.save({"key": "something-else", "payload": {}}, path)
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
    st.save({"step": 7, "x": torch.ones(2)})
    assert st.load()["step"] == 7
    st.clear()
    assert st.load() is None
