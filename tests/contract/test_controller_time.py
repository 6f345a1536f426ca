"""Every registered method × toy task × budget: controller FLOPs in the trace imply controller time
in the harness.

``timing.time_controllers`` sees a controller through forward hooks on ``controller_modules()`` and
through ``DynamicModel.controller_span()``. A stage run as a traced, scripted, compiled or
CUDA-graph call fires no module hooks, so a method that prepares its controller that way must mark
it with a span, or its controller time reads 0 (``tinv[compiled=true]`` did). Execution-only options
that switch to such paths are swept too: every method whose ``Config`` has one of
``EXECUTION_OPTIONS`` also runs with it on, on the default fit's state.

The clock is a fake one that advances on every read, so the test is deterministic: any span or
hooked module entered in a call gives it a controller time > 0, and nothing else can.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted  # the session's shared fits (same folder, on sys.path)

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness import timing
from dynbench.harness.timing import time_controllers
from dynbench.methods.base import METHODS, DynamicModel, Method

EXECUTION_OPTIONS = {"compiled": True}  # options that only switch the execution path (traced / graph-captured)
LOOP = MeasureConfig(min_iters=2, min_time_s=0.0)  # two calls per pass: the fake clock needs no more


def variants() -> list[tuple[str, dict]]:
    """(method name, execution options): every method with its defaults, then each execution option
    it has."""
    out: list[tuple[str, dict]] = []
    for name in METHODS.names():
        out.append((name, {}))
        config = METHODS.get(name).Config
        fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
        out += [(name, {k: v}) for k, v in EXECUTION_OPTIONS.items() if k in fields]
    return out


VARIANTS = variants()


def build(toy, method_name: str, options: dict, task_name: str) -> tuple[Method, DynamicModel]:
    """The fitted model with ``options`` (execution only: it shares the fit of the defaults)."""
    method, model, _ = fitted(toy, method_name, task_name, options)
    return method, model


class TickingClock:
    """A fake nanosecond clock that advances by one on every read."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        self.ns += 1
        return self.ns


def label(method_name: str, options: dict) -> str:
    return method_name + ("[" + ",".join(f"{k}={str(v).lower()}" for k, v in options.items()) + "]" if options else "")


@pytest.mark.parametrize("task_name", TOY_TASKS)
@pytest.mark.parametrize(("method_name", "options"), VARIANTS, ids=[label(*v) for v in VARIANTS])
def test_controller_flops_imply_controller_time(toy, monkeypatch, method_name, options, task_name):
    method, model = build(toy, method_name, options, task_name)
    monkeypatch.setattr(timing.time, "perf_counter_ns", TickingClock())
    x = eval_batch(toy, task_name).inputs
    checked = 0
    with torch.inference_mode():  # as runner.execute measures: prepared graphs run only without autograd
        for budget, batch in itertools.product(method.resolve_budgets(None, model.backbone.n_blocks), (16, 1)):
            inputs = x[:batch]

            def call(i: int, inputs: torch.Tensor = inputs, budget: float = budget) -> object:
                return model(inputs, budget=budget)

            ctrl_flops = float(call(0).trace.controller_flops.sum())  # also the warm-up: graphs are prepared here
            ctrl = time_controllers(model.controller_modules(), call, 1, CPU(), LOOP)
            if ctrl_flops > 0:
                where = f"{label(method_name, options)} on {task_name}, budget {budget}, batch {batch}"
                assert ctrl is not None, f"{where}: {ctrl_flops:.0f} controller FLOPs but no controller timing"
                assert ctrl.n == LOOP.min_iters
                assert ctrl.median_ms > 0 and ctrl.share > 0, f"{where}: {ctrl_flops:.0f} controller FLOPs in 0 ms"
                checked += 1
    if options:  # an execution variant exists to exercise a controller; it must have had one to time
        assert checked > 0, f"{label(method_name, options)} reported no controller FLOPs on {task_name}"
