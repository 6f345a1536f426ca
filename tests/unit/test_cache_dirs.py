"""One cache root: the model cache and the data cache both derive from it, each movable alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynbench.cache_dirs import cache_root, data_root, model_cache_dir


def test_both_caches_live_under_one_root_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("DYNBENCH_CACHE", raising=False)
    monkeypatch.delenv("DYNBENCH_DATA", raising=False)
    assert cache_root() == tmp_path / "dynbench"
    assert model_cache_dir() == cache_root()
    assert data_root() == cache_root() / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "dynbench"


def test_each_cache_moves_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DYNBENCH_CACHE", str(tmp_path / "models"))
    monkeypatch.delenv("DYNBENCH_DATA", raising=False)
    assert model_cache_dir() == tmp_path / "models"
    assert data_root() == tmp_path / "xdg" / "dynbench" / "data"  # a cold model cache keeps prepared data
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data" and model_cache_dir() == tmp_path / "models"
