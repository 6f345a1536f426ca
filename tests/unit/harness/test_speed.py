"""Realized and theoretical speedup on the same statistic, intervals over calls, the suspect flag.

The models here spend *virtual* time in proportion to the FLOPs each sample costs, read by a fake
hardware timer, so the physics is known exactly: whatever the per-sample cost distribution, a method
whose time is proportional to its executed FLOPs realizes exactly its theoretical speedup.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from dynbench.config import MeasureConfig
from dynbench.hardware.base import CallTimer, HardwareTarget
from dynbench.harness.measure import REALIZATION_LIMIT, FlopsResult, TimingInputs, time_speed, timing_rows


class VirtualClock:
    def __init__(self) -> None:
        self.ms = 0.0


class VirtualTimer(CallTimer):
    def __init__(self, clock: VirtualClock) -> None:
        self.clock, self.durations = clock, []

    def time(self, fn: Callable[[], Any]) -> None:
        start = self.clock.ms
        fn()
        self.durations.append(self.clock.ms - start)

    def elapsed_ms(self) -> list[float]:
        return self.durations


class VirtualHardware(HardwareTarget):
    name = "virtual"

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def unavailable_reason(self) -> str | None:
        return None

    def synchronize(self) -> None:
        pass

    def timer(self) -> CallTimer:
        return VirtualTimer(self.clock)

    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        fn()
        return 0

    def describe(self) -> dict[str, Any]:
        return {}


class CostModel:
    """Spends ``ms_per_flop × cost`` virtual ms per call; a sample's cost is its input value."""

    def __init__(self, clock: VirtualClock, ms_per_flop: float, fixed_cost: float | None = None) -> None:
        self.clock, self.ms_per_flop, self.fixed_cost = clock, ms_per_flop, fixed_cost

    def cost(self, x: Tensor) -> Tensor:
        return x[:, 0] if self.fixed_cost is None else torch.full((len(x),), self.fixed_cost)

    def __call__(self, x: Tensor, *, budget: float) -> None:
        self.clock.ms += self.ms_per_flop * float(self.cost(x).sum())

    def controller_modules(self) -> list:
        return []


def setup(costs: np.ndarray, method_cost: float | None, ms_per_flop: float = 1.0, dense_cost: float = 8.0):
    """Batch-1 timing inputs with method cost ``costs`` (varying) or ``method_cost`` (constant)."""
    clock = VirtualClock()
    n = len(costs)
    inputs = [torch.tensor([[float(c)]]) for c in costs]
    ti = TimingInputs(inputs, [np.array([i]) for i in range(n)], warmup=[0], timed=list(range(n)))
    model = CostModel(clock, ms_per_flop, method_cost)
    dense = CostModel(clock, 1.0, dense_cost)
    per_sample = np.asarray(costs, dtype=float) if method_cost is None else np.full(n, method_cost)
    flops = FlopsResult(per_sample, np.zeros(n), int(per_sample.sum()), float(per_sample.sum()))
    dense_flops = FlopsResult(np.full(n, dense_cost), np.zeros(n), int(dense_cost * n), dense_cost * n)
    cfg = MeasureConfig(min_iters=3 * n, min_time_s=0.0, warmup_max=0)  # every input timed three times
    hardware = VirtualHardware(clock)
    plan = SimpleNamespace(spec=SimpleNamespace(measure=cfg), hardware=hardware, method=SimpleNamespace(name="virtual"))
    return plan, model, dense, ti, flops, dense_flops


# early exit's kind of cost: most samples leave after one block, a few run all eight
VARYING = np.array([1.0] * 12 + [8.0] * 4)


@pytest.mark.parametrize("method_cost", [None, 4.0], ids=["varying (early_exit-like)", "constant (layer_skip-like)"])
def test_time_proportional_to_flops_realizes_exactly_the_theoretical_speedup(method_cost):
    plan, model, dense, ti, flops, dense_flops = setup(VARYING, method_cost)
    speed = time_speed(plan, model, dense, 0.5, ti, flops, dense_flops)
    theoretical = dense_flops.mean / flops.mean  # what the speedup_theoretical row reports
    assert speed.realized == pytest.approx(theoretical, rel=1e-12)
    assert speed.realization == pytest.approx(1.0, rel=1e-12)
    ci = speed.realization_ci()
    assert ci.low == pytest.approx(1.0, rel=1e-9) and ci.high == pytest.approx(1.0, rel=1e-9) and ci.over == "calls"


def test_a_median_speedup_would_disagree_when_cost_varies():
    """The statistic the suite used before: median call times against mean FLOPs read 8× where
    physics says 2.9×."""
    plan, model, dense, ti, flops, dense_flops = setup(VARYING, None)
    speed = time_speed(plan, model, dense, 0.5, ti, flops, dense_flops)
    median_ratio = speed.dense.median_ms / speed.method.median_ms
    assert median_ratio == pytest.approx(8.0) and speed.realized == pytest.approx(8.0 / VARYING.mean())


def test_speedup_interval_covers_the_ratio_of_means_under_noise():
    plan, model, dense, ti, flops, dense_flops = setup(VARYING, None)
    speed = time_speed(plan, model, dense, 0.5, ti, flops, dense_flops)
    ci = speed.realized_ci()
    assert ci.low <= speed.realized <= ci.high and ci.n == speed.method.n


def rows_of(ms_per_flop_attempts: list[float]):
    """timing_rows with a method whose speed changes between the first and second measurement."""
    plan, model, dense, ti, flops, dense_flops = setup(VARYING, None)
    attempts = iter(ms_per_flop_attempts)
    original = model.__call__
    calls = {"n": 0}

    def call(x: Tensor, *, budget: float) -> None:
        if calls["n"] % (3 * len(VARYING) + 1) == 0:  # a new measurement starts with the warm-up call
            model.ms_per_flop = next(attempts, model.ms_per_flop)
        calls["n"] += 1
        original(x, budget=budget)

    made: list[dict] = []

    def make_row(budget, batch_size, metric, value, n, **kw):
        made.append({"metric": metric, "value": value, **kw})
        return made[-1]

    rows, record = timing_rows(plan, MethodCall(call), dense, 0.5, ti, flops, dense_flops, make_row)
    return {r["metric"]: r for r in rows}, record


class MethodCall:
    """A model made of a function (the timing loop only calls it and asks for its controllers)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __call__(self, x: Tensor, *, budget: float) -> None:
        self.fn(x, budget=budget)

    def controller_modules(self) -> list:
        return []


def test_implausible_realization_is_remeasured_then_flagged():
    rows, record = rows_of([0.25, 0.25])  # 4× faster than its FLOPs allow, twice
    assert rows["realization"]["value"] == pytest.approx(4.0) and 4.0 > REALIZATION_LIMIT
    assert record["attempts"] == 2 and record["suspect"] is True
    assert all(r["suspect"] for r in rows.values())


def test_a_spike_that_does_not_persist_is_replaced_by_the_remeasure():
    rows, record = rows_of([0.25, 1.0])
    assert rows["realization"]["value"] == pytest.approx(1.0)
    assert record["attempts"] == 2 and record["suspect"] is False
    assert not any(r["suspect"] for r in rows.values())


def test_timings_record_keeps_every_pair_with_its_flops():
    rows, record = rows_of([1.0])
    assert record["attempts"] == 1 and len(record["method_ms"]) == len(record["dense_ms"]) == 3 * len(VARYING)
    assert record["method_flops"] == [VARYING[i] for i in record["inputs"]]
    realized = rows["speedup_realized"]
    assert realized["ci"].low <= realized["value"] <= realized["ci"].high
