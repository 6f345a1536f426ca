from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU, profiler_tensor_peak
from dynbench.harness import timing
from dynbench.harness.eval_batches import EvalBatches
from dynbench.harness.measure import QualityResult, timing_inputs
from dynbench.harness.memory import measure_memory, module_bytes
from dynbench.harness.timing import TimingStats, time_controllers, time_interleaved
from dynbench.types import Batch, Trace


def test_stats_are_percentiles():
    s = TimingStats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median_ms == 3.0 and s.n == 5 and s.iqr_ms == 2.0
    assert 4.0 < s.p90_ms < 100.0


def test_stats_keep_every_call_and_its_input():
    s = TimingStats.of([1.0, 2.0, 3.0], [4, 5, 4])
    assert s.durations_ms == (1.0, 2.0, 3.0) and s.inputs == (4, 5, 4) and s.mean_ms == 2.0


def test_timed_loop_cycles_the_timed_inputs_only():
    calls: list[tuple[str, int]] = []
    fns = {"a": lambda i: calls.append(("a", i))}
    cfg = MeasureConfig(min_iters=5, min_time_s=0.0)
    stats = time_interleaved(fns, n_inputs=4, warmup=[3], target=CPU(), cfg=cfg, timed=[0, 2])
    assert calls == [("a", 3), ("a", 0), ("a", 2), ("a", 0), ("a", 2), ("a", 0)]
    assert stats["a"].inputs == (0, 2, 0, 2, 0)


def test_interleaving_alternates_order_and_meets_min_iters():
    calls: list[tuple[str, int]] = []
    fns = {"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))}
    cfg = MeasureConfig(min_iters=4, min_time_s=0.0)
    stats = time_interleaved(fns, n_inputs=3, warmup=[0, 2], target=CPU(), cfg=cfg)
    assert calls[:4] == [("a", 0), ("b", 0), ("a", 2), ("b", 2)]  # warm-up: every path, every model
    timed = calls[4:]
    assert timed == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 0), ("a", 0)]
    assert stats["a"].n == stats["b"].n == 4


class Clock:
    """A fake nanosecond clock that only moves when told to."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class Ticks(nn.Module):
    """Advances the clock ``before`` ns, runs ``inner`` (if any), then advances it ``after`` ns."""

    def __init__(self, clock: Clock, before: int, after: int = 0, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.clock, self.before, self.after, self.inner = clock, before, after, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.ns += self.before
        if self.inner is not None:
            x = self.inner(x)
        self.clock.ns += self.after
        return x


def test_controller_time_counts_nested_controllers_once(monkeypatch: pytest.MonkeyPatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    inner = Ticks(clock, 3_000_000)  # 3 ms inside the inner controller
    outer = Ticks(clock, 1_000_000, 1_000_000, inner)  # plus 2 ms of its own: 5 ms of controller per call
    backbone = Ticks(clock, 5_000_000)  # 5 ms of everything else

    def call(i: int) -> None:
        backbone(outer(torch.zeros(1)))

    ctrl = time_controllers([outer, inner, inner], call, 2, CPU(), MeasureConfig(min_iters=4, min_time_s=0.0))
    assert ctrl is not None and ctrl.n == 4
    assert ctrl.median_ms == pytest.approx(5.0) and ctrl.share == pytest.approx(0.5)
    assert not outer._forward_hooks and not outer._forward_pre_hooks and not inner._forward_hooks  # removed
    assert time_controllers([], call, 2, CPU(), MeasureConfig()) is None


def test_profiler_sees_torch_allocations():
    peak = profiler_tensor_peak(lambda: torch.ones(256, 1024))  # 1 MiB of float32
    assert peak >= 256 * 1024 * 4


def test_memory_counts_weights_inputs_and_transients():
    model = torch.nn.Linear(64, 4096)
    inputs = [torch.randn(8, 64)]
    stats = measure_memory(model, lambda i: model(inputs[i]), inputs, [0], CPU())
    weights = module_bytes(model)
    assert weights == (64 * 4096 + 4096) * 4
    assert stats.transient_bytes >= 8 * 4096 * 4
    assert stats.peak_bytes == weights + 8 * 64 * 4 + stats.transient_bytes
    assert stats.process_peak_bytes is None or stats.process_peak_bytes > stats.peak_bytes


def test_batch1_timing_warms_every_path_up_to_the_input_limit():
    n = 10
    trace = Trace.dense(n, 2, 4, 2)
    trace.block_heads[:6, 0] = torch.arange(6) % 2  # paths: samples 0-5 alternate two paths, 6-9 the dense one
    batches = [Batch(torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.zeros(n), torch.arange(n))]
    q = QualityResult(np.zeros(n), np.zeros(n), np.arange(n), trace, np.zeros(n))
    batches = EvalBatches.in_memory(batches)
    ti = timing_inputs(q, batches, 1, limit=8)
    assert [int(m[0]) for m in ti.members] == list(range(8)) and ti.warmup == [0, 1, 6] and ti.timed == list(range(8))
    ti = timing_inputs(
        q, EvalBatches.in_memory(batches), 1, limit=4
    )  # the dense path's first sample (6) is warmed, never timed
    assert [int(m[0]) for m in ti.members] == [0, 1, 2, 3, 6] and ti.warmup == [0, 1, 4] and ti.timed == [0, 1, 2, 3]
    trace.block_heads[:, 1] = torch.arange(n)  # a path per sample (random sub-networks)
    ti = timing_inputs(q, batches, 1, limit=4)
    assert [int(m[0]) for m in ti.members] == [0, 1, 2, 3] and ti.warmup == [0, 1, 2, 3]  # not all ten
