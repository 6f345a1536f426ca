"""Controller spans: how a method marks controller work that fires no module hooks (traced /
compiled stages)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness import timing
from dynbench.harness.timing import time_controllers
from dynbench.methods import base
from dynbench.methods.base import DynamicModel
from dynbench.types import StepOutput

MS = 1_000_000  # ns
LOOP = MeasureConfig(min_iters=3, min_time_s=0.0)


class Clock:
    """A fake nanosecond clock that only moves when told to, and counts its reads."""

    def __init__(self) -> None:
        self.ns = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.ns


class Spanned(DynamicModel):
    """A model without a backbone whose forward is scripted work: ``(kind, ms, children)`` steps.

    Kinds: ``"rest"`` advances the clock; ``"span"`` runs the children inside ``controller_span()``;
    ``"module"`` runs them inside the hooked controller module; ``"raise"`` raises.
    """

    def __init__(self, clock: Clock, steps: list) -> None:
        nn.Module.__init__(self)
        self.clock, self.steps = clock, steps
        self.ctrl = Hooked(self)

    def controller_modules(self) -> list[nn.Module]:
        return [self.ctrl] if self.ctrl.used else []

    def forward(self, inputs: torch.Tensor, *, budget: float = 1.0) -> StepOutput:  # type: ignore[override]
        self.run(self.steps)
        return StepOutput(inputs, None)  # type: ignore[arg-type]

    def run(self, steps: list) -> None:
        for kind, ms, children in steps:
            self.clock.ns += ms * MS
            if kind == "span":
                with self.controller_span():
                    self.run(children)
            elif kind == "module":
                self.ctrl(children)
            elif kind == "raise":
                raise RuntimeError("boom")


class Hooked(nn.Module):
    """The model's controller module: runs its children steps when called."""

    def __init__(self, owner: Spanned) -> None:
        super().__init__()
        self.owner = [owner]  # a list, so the owner is not registered as a submodule (no cycle)
        self.used = True

    def forward(self, children: list) -> None:
        self.owner[0].run(children)


def rest(ms: int) -> tuple:
    return ("rest", ms, [])


def timed(monkeypatch: pytest.MonkeyPatch, steps: list, *, hooked: bool = True) -> tuple:
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    model = Spanned(clock, steps)
    model.ctrl.used = hooked
    ctrl = time_controllers(model.controller_modules(), lambda i: model(torch.zeros(1)), 2, CPU(), LOOP)
    return ctrl, model, clock


def test_span_alone_is_timed_without_controller_modules(monkeypatch: pytest.MonkeyPatch):
    # 2 ms rest, a span of 3 ms, 5 ms rest: a traced stage the hooks cannot see
    ctrl, model, _ = timed(monkeypatch, [rest(2), ("span", 0, [rest(3)]), rest(5)], hooked=False)
    assert ctrl is not None and ctrl.n == LOOP.min_iters
    assert ctrl.median_ms == pytest.approx(3.0) and ctrl.share == pytest.approx(0.3)


def test_span_inside_hooked_module_counts_once(monkeypatch: pytest.MonkeyPatch):
    # module: 1 ms, then a span of 2 ms, then 1 ms more → 4 ms of controller; 6 ms rest
    steps = [rest(6), ("module", 0, [rest(1), ("span", 0, [rest(2)]), rest(1)])]
    ctrl, model, _ = timed(monkeypatch, steps)
    assert ctrl is not None and ctrl.median_ms == pytest.approx(4.0) and ctrl.share == pytest.approx(0.4)


def test_hooked_module_inside_span_counts_once(monkeypatch: pytest.MonkeyPatch):
    # span: 1 ms, module 3 ms (itself holding a nested span of 1 ms), 1 ms → 5 ms of controller; 5
    # ms rest
    steps = [("span", 0, [rest(1), ("module", 0, [rest(2), ("span", 0, [rest(1)])]), rest(1)]), rest(5)]
    ctrl, model, _ = timed(monkeypatch, steps)
    assert ctrl is not None and ctrl.median_ms == pytest.approx(5.0) and ctrl.share == pytest.approx(0.5)


def test_sibling_spans_and_modules_add_up(monkeypatch: pytest.MonkeyPatch):
    steps = [("span", 0, [rest(1)]), rest(4), ("module", 0, [rest(2)]), ("span", 0, [rest(3)])]
    ctrl, _, _ = timed(monkeypatch, steps)
    assert ctrl is not None and ctrl.median_ms == pytest.approx(6.0) and ctrl.share == pytest.approx(0.6)


def test_no_controller_is_none_after_one_call(monkeypatch: pytest.MonkeyPatch):
    calls = []
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    model = Spanned(clock, [rest(1)])
    assert time_controllers([], lambda i: calls.append(model(torch.zeros(1))), 2, CPU(), LOOP) is None
    assert len(calls) == 1  # one call shows there is no span; no loop runs for a model without a controller


def test_span_outside_the_pass_reads_no_clock(monkeypatch: pytest.MonkeyPatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    model = Spanned(clock, [("span", 0, [rest(1)])])
    model(torch.zeros(1))
    assert clock.reads == 0
    assert model.controller_span() is model.controller_span()  # one shared no-op context: nothing allocated


def test_everything_is_removed_also_on_exceptions(monkeypatch: pytest.MonkeyPatch):
    steps = [("module", 0, [("span", 1, [("raise", 0, [])])])]
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    model = Spanned(clock, steps)
    with pytest.raises(RuntimeError, match="boom"):
        time_controllers(model.controller_modules(), lambda i: model(torch.zeros(1)), 2, CPU(), LOOP)
    assert not model.ctrl._forward_hooks and not model.ctrl._forward_pre_hooks
    assert base._clock is None
    reads = clock.reads
    model.steps = [("span", 1, [])]
    model(torch.zeros(1))
    assert clock.reads == reads  # the span is a no-op again
    ctrl, _, _ = timed(monkeypatch, [("span", 0, [rest(1)]), rest(1)], hooked=False)  # and a new pass works
    assert ctrl is not None and ctrl.median_ms == pytest.approx(1.0)


def test_clocks_do_not_nest():
    clock = base.ControllerClock(lambda: None, lambda: None)
    with base.controller_clock(clock), pytest.raises(RuntimeError, match="installed already"):
        with base.controller_clock(clock):
            pass
    assert base._clock is None
