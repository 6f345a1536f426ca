"""Cache keys follow the content of the weights files they depend on, not only their path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynbench import file_digest
from dynbench.config import PluginSpec, RunSpec
from dynbench.hardware.cpu import CPU
from dynbench.harness.planning import run_key
from dynbench.methods.base import METHODS
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


@pytest.mark.parametrize(("task", "option"), [("imagenet", "weights"), ("smollm2", "gguf_path")])
def test_run_keys_change_with_the_file_content(task: str, option: str, tmp_path: Path):
    """A finished run on the old file is not taken for a run on the new one ("N already done")."""
    path = tmp_path / "weights.bin"
    rewrite(path, b"first weights")
    cls = TASKS.get(task)
    spec = RunSpec(task=PluginSpec.make(task, {option: str(path)}), method=PluginSpec.make("dense", {}), seed=0)
    key = lambda: run_key(spec, cls(cls.Config(**{option: str(path)})), METHODS.get("dense")(), CPU())  # noqa: E731
    first = key()
    assert key() == first
    rewrite(path, b"other weights")
    assert key() != first


def test_run_keys_of_tasks_without_files_are_what_they_were():
    spec = RunSpec(task=PluginSpec.make("toy-text", {}), method=PluginSpec.make("dense", {}), seed=0, profile="full")
    task, method = TASKS.get("toy-text")(), METHODS.get("dense")()
    identity = {**spec.identity(), "task_version": task.version, "method_version": method.version}
    assert run_key(spec, task, method, CPU()) == f"toy-text__dense__s0__cpu__{config_digest(identity)}"


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
