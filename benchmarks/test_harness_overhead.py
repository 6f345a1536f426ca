"""Harness overhead per sample: what the FLOP counter and the timing loop add to the model itself.

Run with ``pytest benchmarks --benchmark-only`` (pytest-benchmark). Not part of the test suite's
pass/fail: these record numbers, and regressions are read from pytest-benchmark's comparisons.
"""

from __future__ import annotations

import pytest
import torch

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness.flops import count_flops
from dynbench.harness.timing import time_interleaved
from dynbench.models.vit import ViT, ViTConfig

BATCH = 64


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=2, d_model=64, n_layers=6, n_heads=4)).eval()
    return model, torch.randn(BATCH, 1, 8, 8)


def test_forward_alone(benchmark, model_and_inputs):
    model, x = model_and_inputs
    with torch.inference_mode():
        benchmark(lambda: model(x))
    benchmark.extra_info["samples_per_call"] = BATCH


def test_flops_pass(benchmark, model_and_inputs):
    """Forward under FlopCounterMode: the difference to ``test_forward_alone`` is the counter's
    overhead."""
    model, x = model_and_inputs
    with torch.inference_mode():
        benchmark(lambda: count_flops(lambda: model(x), model))
    benchmark.extra_info["samples_per_call"] = BATCH


def test_timing_loop(benchmark):
    """The timing loop around a no-op: its bookkeeping cost per timed call."""
    cfg = MeasureConfig(min_iters=1000, min_time_s=0.0)
    calls = {"a": lambda i: None, "b": lambda i: None}
    benchmark(lambda: time_interleaved(calls, n_inputs=8, warmup=[0], target=CPU(), cfg=cfg))
    benchmark.extra_info["timed_calls_per_round"] = 2 * cfg.min_iters
