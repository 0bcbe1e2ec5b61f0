import os
import tempfile

import pytest
import torch

# Tests never touch the user's cache: one temporary cache per test session, shared by the tests in it
# (so a tokenizer trained by one smoke test is reused by the next, as notebooks reuse each other's work).
os.environ.setdefault("VARLIB_CACHE", tempfile.mkdtemp(prefix="varlib-test-cache-"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty artifact cache for tests about the cache itself."""
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
