"""Cache keys follow the content of the weights files they depend on, not only their path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynbench import file_digest
from dynbench.models.training import config_digest
from dynbench.tasks.base import TASKS, backbone_key


def rewrite(path: Path, data: bytes) -> None:
    """Replace the file's content and move its mtime on (a copy within one clock tick keeps it)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.mark.parametrize(("task", "option"), [("imagenet", "weights"), ("smollm2", "gguf_path")])
def test_backbone_and_fit_keys_change_with_the_file_content(task: str, option: str, tmp_path: Path):
    path = tmp_path / "weights.bin"
    rewrite(path, b"first weights")
    cls = TASKS.get(task)
    make = lambda: cls(cls.Config(**{option: str(path)}))  # noqa: E731
    first = backbone_key(make(), 0)
    assert backbone_key(make(), 0) == first
    rewrite(path, b"other weights")  # same path, same size, new content
    assert backbone_key(make(), 0) != first


def test_a_task_without_files_keeps_its_key():
    task = TASKS.get("toy-text")()
    assert task.source_files() == ()
    assert backbone_key(task, 3) == f"toy-text-v{task.version}-{config_digest(task.config)}-seed3"


def test_a_file_is_hashed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "w"
    rewrite(path, b"x" * 10)
    reads = []
    real_open = open

    def counting_open(p, *args, **kwargs):
        reads.append(Path(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(file_digest, "open", counting_open, raising=False)
    digest = file_digest.file_sha256(path)
    assert file_digest.file_sha256(path) == digest and len(reads) == 1
    rewrite(path, b"y" * 10)
    assert file_digest.file_sha256(path) != digest and len(reads) == 2
