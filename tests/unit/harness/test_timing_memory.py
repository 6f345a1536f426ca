from __future__ import annotations

import torch

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU, profiler_tensor_peak
from dynbench.harness.memory import measure_memory, module_bytes
from dynbench.harness.timing import TimingStats, time_interleaved


def test_stats_are_percentiles():
    s = TimingStats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median_ms == 3.0 and s.n == 5 and s.iqr_ms == 2.0
    assert 4.0 < s.p90_ms < 100.0


def test_interleaving_alternates_order_and_meets_min_iters():
    calls: list[tuple[str, int]] = []
    fns = {"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))}
    cfg = MeasureConfig(min_iters=4, min_time_s=0.0)
    stats = time_interleaved(fns, n_inputs=3, warmup=[0, 2], target=CPU(), cfg=cfg)
    assert calls[:4] == [("a", 0), ("b", 0), ("a", 2), ("b", 2)]  # warm-up: every path, every model
    timed = calls[4:]
    assert timed == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 0), ("a", 0)]
    assert stats["a"].n == stats["b"].n == 4


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
