"""Shared fixtures: toy tasks with their trained backbones, cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels (acm[kernel=triton]) run on CPU tensors only under Triton's interpreter, which
# Triton reads when it is first imported: set it before anything imports it, where no GPU is
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dynbench.tasks.base import TASKS, Task  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's cache: backbones and fits go to a session temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DYNBENCH_CACHE", str(tmp_path_factory.mktemp("dynbench-cache")))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the caller's cap wins on a shared machine
    yield
    mp.undo()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint cache shared by the whole session, so each toy backbone trains once."""
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="session")
def toy(cache_dir: Path):
    """``toy(name)`` → (task, trained backbone), trained once per session."""
    made: dict[str, tuple[Task, torch.nn.Module]] = {}

    def get(name: str):
        if name not in made:
            task = TASKS.get(name)()
            made[name] = (task, task.backbone(0, cache_dir=cache_dir))
        return made[name]

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
