"""Every fit, and the dense backbone's training, runs on the model's device: no tensor elsewhere.

A GPU target trains and fits on its GPU (:func:`dynbench.harness.fit_cache.fitted_model`). The bug
that breaks it is a tensor made without a device (``torch.zeros(n)``): on the host, while the model
and its batches are on the GPU. This machine has no GPU, so the tests make that bug fail here: the
fit runs with the *default* device set to ``meta``, while the model and the task's batches stay on
the CPU. A tensor made without a device is then a meta tensor, and the first op that mixes it with
the model's tensors (or reads its value) raises.

Code that makes host tensors on purpose runs with the default device back on the CPU, as it runs on
a GPU target: the traces and the analytic FLOP counts (host bookkeeping by design), the forward
passes (measured on GPUs already) and Transformer^-1's controller fit (host statistics, host
modules). They are listed in :data:`HOST_BY_DESIGN`; everything else a fit runs is checked.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from fitting import TOY_TASKS, method_with

import dynbench.methods
from dynbench.methods.base import METHODS
from dynbench.tasks.base import TASKS, Task, train_backbone
from dynbench.types import Trace

HOST_BY_DESIGN = (
    # traces: per-sample bookkeeping the harness reads on the host
    "trace",
    "extras",
    "regions",
    "_trace",
    "make_trace",
    # forward passes: every measured run executes them on its device already
    "forward",
    "run",
    "step",
    # analytic FLOP counts and host-side index helpers (moved to the device where used)
    "arm_flops",
    "forward_flops",
    "calibration_flops",
    "path_flops",
    "feature_positions",
    "head_index",
    # Transformer^-1's trees and policy: fitted on the host from host statistics, then moved
    "_fit_controller_on_host",
)


def on_host(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with the CPU as the default device (as every call runs on a GPU target)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapped


@pytest.fixture
def host_by_design(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the :data:`HOST_BY_DESIGN` functions of every method module on the host."""
    for info in pkgutil.iter_modules(dynbench.methods.__path__):
        module = importlib.import_module(f"dynbench.methods.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name in HOST_BY_DESIGN:
                fn = cls.__dict__.get(name)
                if isinstance(fn, staticmethod):
                    monkeypatch.setattr(cls, name, staticmethod(on_host(fn.__func__)))
                elif callable(fn):
                    monkeypatch.setattr(cls, name, on_host(fn))
    monkeypatch.setattr(Trace, "dense", classmethod(on_host(Trace.dense.__func__)))


def host_data(task: Task, monkeypatch: pytest.MonkeyPatch) -> Task:
    """``task`` whose data is read on the host (a GPU run's data is too, until a fit moves it)."""
    for split in {"train", task.validation_split, task.eval_split}:
        with torch.device("cpu"):
            task.n_samples(split)  # materialises and caches the split on the host
    batches = task.batches

    def host_batches(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with torch.device("cpu"):
            it = iter(batches(*args, **kwargs))
        while True:
            with torch.device("cpu"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    monkeypatch.setattr(task, "batches", host_batches)
    monkeypatch.setattr(task, "split", on_host(task.split))
    monkeypatch.setattr(task, "n_samples", on_host(task.n_samples))
    return task


LEARNING = [name for name in METHODS.names() if METHODS.get(name).learns()]


@pytest.mark.usefixtures("host_by_design")
@pytest.mark.parametrize("task_name", TOY_TASKS)
@pytest.mark.parametrize("method_name", LEARNING)
def test_every_fit_makes_its_tensors_on_the_models_device(
    toy, monkeypatch: pytest.MonkeyPatch, method_name: str, task_name: str
) -> None:
    _, backbone = toy(task_name)
    task = host_data(TASKS.get(task_name)(), monkeypatch)  # a fresh task: the patches stay off the shared one
    method = method_with(method_name)
    model = method.wrap(copy.deepcopy(backbone))
    torch.manual_seed(0)
    with torch.device("meta"):
        method.fit(model, task, seed=0)
    state = model.state_dict()
    assert all(t.device.type == "cpu" for t in state.values()), "the fit left a tensor off the model's device"


@pytest.mark.parametrize("task_name", TOY_TASKS)
def test_the_dense_backbone_trains_on_the_device_it_is_given(monkeypatch: pytest.MonkeyPatch, task_name: str) -> None:
    task = host_data(TASKS.get(task_name)(), monkeypatch)
    with torch.device("meta"):
        model = train_backbone(task, 0, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.device("cpu"):  # the host-built initial weights: the same as a plain CPU training's
        again = train_backbone(TASKS.get(task_name)(), 0)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs from a plain CPU training")


@pytest.mark.gpu
@pytest.mark.parametrize("method_name", LEARNING)
def test_a_fit_made_on_the_gpu_runs_on_the_gpu_and_loads_on_the_cpu(toy, method_name: str) -> None:
    from dynbench.harness.fit_cache import fitted_state, tensor_versions

    task, backbone = toy("toy-vision")
    method = method_with(method_name)
    model = method.wrap(copy.deepcopy(backbone)).to("cuda")
    before = tensor_versions(model)
    torch.manual_seed(0)
    with task.sealed(task.eval_split, reader=f"the fit of method '{method_name}'"):
        method.fit(model, task, seed=0)
    assert {t.device.type for t in model.state_dict().values()} == {"cuda"}
    state = fitted_state(model.eval(), before)
    assert {t.device.type for t in state.values()} <= {"cpu"}  # the cache file holds host tensors
    on_cpu = method.wrap(copy.deepcopy(backbone))
    on_cpu.load_state_dict(state, strict=False)
    x = next(task.batches(task.eval_split, batch_size=8)).inputs
    with torch.inference_mode():
        budgets = method.resolve_budgets(None, backbone.n_blocks)
        for budget in budgets:  # a routing decision near its threshold may flip between devices: finite here
            assert torch.isfinite(model(x.cuda(), budget=budget).logits).all()
        top = max(budgets)  # the full budget runs the whole backbone: the same numbers on both devices
        if top < 1.0:  # every budget routes (MoD's capacities): nothing is decision-free to compare
            return
        got = on_cpu.eval()(x, budget=top).logits
        torch.testing.assert_close(got, model(x.cuda(), budget=top).logits.cpu(), atol=1e-3, rtol=1e-3)
