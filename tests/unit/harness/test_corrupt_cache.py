"""A damaged cache entry is a cache miss: warned about by name, moved to ``.corrupt``, rebuilt.

Each kind of damage a cached file can suffer — cut short, emptied, overwritten with random bytes,
replaced by a loadable state dict of the wrong shape, or by something that is not a state dict — on
each cache: the dense backbone, a method fit, and SmolLM2's converted weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.fit_cache import fitted_model, load_cached_fit
from dynbench.harness.planning import plan_suite
from dynbench.models.cached_state import CORRUPT_SUFFIX, read_tensor
from dynbench.models.training import TrainConfig
from dynbench.tasks.base import backbone_key, trained_backbone
from dynbench.tasks.toy_vision import ToyVision, ToyVisionConfig

torch.set_num_threads(1)


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def wrong_shape(path: Path) -> None:
    """A readable, finite state dict whose first tensor has another shape (another model's file)."""
    state = torch.load(path, weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(*state[first].shape, 3)
    torch.save(state, path)


def not_a_state_dict(path: Path) -> None:
    torch.save([1, 2, 3], path)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncated,
    "zero-bytes": emptied,
    "random-bytes": random_bytes,
    "wrong-shape": wrong_shape,
    "not-a-state-dict": not_a_state_dict,
}


def assert_set_aside_and_rebuilt(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One warning naming the file and its ``.corrupt`` copy; a fresh, loadable entry in place."""
    corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
    assert corrupt.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and corrupt.name in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert isinstance(torch.load(path, weights_only=True), dict)
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cached_backbone_is_trained_again(damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    task = ToyVision(ToyVisionConfig(train=TrainConfig(steps=3, batch_size=32, warmup_steps=1)))
    first = trained_backbone(task, 0, cache_dir=tmp_path)
    path = tmp_path / "backbones" / f"{backbone_key(task, 0)}.pt"
    DAMAGE[damage](path)
    with caplog.at_level(logging.WARNING):
        again = trained_backbone(task, 0, cache_dir=tmp_path)
    assert_set_aside_and_rebuilt(path, caplog)
    for key, value in first.state_dict().items():  # the same seed trains the same weights
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cached_fit_is_fitted_again(damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (plan,) = plan_suite(
        [RunSpec(task=PluginSpec("toy-text", (("train.steps", "5"),)), method=PluginSpec("layer_skip"))]
    )
    first = fitted_model(plan, plan.task.backbone(0, cache_dir=tmp_path), tmp_path)
    (path,) = (tmp_path / "methods").glob("*.pt")
    DAMAGE[damage](path)
    with caplog.at_level(logging.WARNING):
        again = fitted_model(plan, plan.task.backbone(0, cache_dir=tmp_path), tmp_path)
    assert_set_aside_and_rebuilt(path, caplog)
    inputs = next(plan.task.batches("test", batch_size=4)).inputs
    with torch.no_grad():
        torch.testing.assert_close(again(inputs, budget=0.5).logits, first(inputs, budget=0.5).logits, rtol=0, atol=0)


class Placeholder(nn.Module):
    """A module whose empty buffer passes the shape check but which refuses other shapes on load."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.register_buffer("table", torch.zeros(0))


def test_a_fit_refused_while_loading_fails_the_run_once_and_is_set_aside(tmp_path: Path):
    path = tmp_path / "fit.pt"
    torch.save({"weight": torch.full((3,), 2.0), "table": torch.zeros(5)}, path)
    with pytest.raises(ValueError, match=r"was refused by the method's model while loading .*fit\.pt\.corrupt\. Run"):
        load_cached_fit(Placeholder(), path)
    assert not path.exists() and (tmp_path / "fit.pt.corrupt").exists()  # the next run fits anew


HAVE_TEXT_STACK = all(importlib.util.find_spec(m) is not None for m in ("gguf", "tokenizers"))


@pytest.mark.skipif(not HAVE_TEXT_STACK, reason="needs the 'gguf' and 'tokenizers' packages")
@pytest.mark.parametrize("damage", [*DAMAGE, "config-json"])
def test_a_damaged_smollm2_conversion_is_converted_again(damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import dynbench.tasks.smollm2 as sm

    spec = importlib.util.spec_from_file_location(
        "_dynbench_test_convert_gguf", Path(__file__).parents[1] / "models" / "test_convert_gguf.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gguf = tmp_path / "tiny.gguf"
    module.write_tiny_llama(gguf)
    first = sm.SmolLM2(sm.SmolLM2Config(gguf_path=str(gguf))).backbone(0, cache_dir=tmp_path / "cache")
    folder = sm.SmolLM2.cache_folder(tmp_path / "cache", sm.file_sha256(gguf))
    path = folder / ("config.json" if damage == "config-json" else "model.pt")
    if damage == "config-json":
        path.write_text('{"n_layers": ')
    else:
        DAMAGE[damage](path)
    sm._MEMO.clear()  # a new process
    with caplog.at_level(logging.WARNING):
        again = sm.SmolLM2(sm.SmolLM2Config(gguf_path=str(gguf))).backbone(0, cache_dir=tmp_path / "cache")
    corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert corrupt.exists() and len(warnings) == 1 and str(path) in warnings[0], warnings
    ids = torch.tensor([[5, 80, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids), first(ids), rtol=0, atol=0)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cached_features_are_a_miss_and_set_aside(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "train-features.pt"
    inputs = torch.randn(6, 100, 40).half()  # (N, T, M), as the speech tasks store them
    torch.save({"inputs": inputs}, path)
    assert torch.equal(read_tensor(path, "inputs", (6, 100, 40), torch.float16, "cached features", "redo"), inputs)
    DAMAGE[damage](path)
    with caplog.at_level(logging.WARNING):
        assert read_tensor(path, "inputs", (6, 100, 40), torch.float16, "cached features", "recomputing them") is None
    corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert corrupt.exists() and not path.exists() and len(warnings) == 1 and "recomputing them" in warnings[0]


def test_cached_features_of_another_dtype_are_set_aside(tmp_path: Path):
    path = tmp_path / "f.pt"
    torch.save({"inputs": torch.zeros(2, 3)}, path)
    assert read_tensor(path, "inputs", (2, 3), torch.float16, "cached features", "redo") is None
    assert read_tensor(tmp_path / "absent.pt", "inputs", (2, 3), torch.float16, "cached features", "redo") is None
    assert path.with_name("f.pt" + CORRUPT_SUFFIX).exists()
