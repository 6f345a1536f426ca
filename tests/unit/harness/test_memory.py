"""Memory per operating point: ``peak_mem_bytes`` counts the operating modules, ``resident_bytes``
the whole model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness.eval_batches import EvalBatches
from dynbench.harness.measure import QualityResult, memory_rows, timing_inputs
from dynbench.harness.memory import measure_memory, module_bytes, modules_bytes
from dynbench.methods.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.types import METRICS, Batch


def test_distinct_storages_count_once_across_modules() -> None:
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight  # tied
    one = (8 * 8 + 8) * 4
    assert modules_bytes([a]) == module_bytes(a) == one
    assert modules_bytes([a, b]) == one + 8 * 4  # b adds only its bias
    assert modules_bytes([a, a, nn.Sequential(a)]) == one


def test_peak_counts_the_operating_modules_and_resident_the_whole_model() -> None:
    used, unused = nn.Linear(64, 256), nn.Linear(64, 4096)
    model = nn.ModuleList([used, unused])
    inputs = [torch.randn(8, 64)]
    stats = measure_memory(model, lambda i: used(inputs[i]), inputs, [0], CPU(), [used])
    assert stats.weight_bytes == module_bytes(used) and stats.resident_bytes == module_bytes(model)
    assert stats.peak_bytes == stats.weight_bytes + 8 * 64 * 4 + stats.transient_bytes
    whole = measure_memory(model, lambda i: used(inputs[i]), inputs, [0], CPU())  # no operating modules: all
    assert whole.weight_bytes == whole.resident_bytes == module_bytes(model)


def test_memory_rows_count_one_capacity_and_report_resident_bytes() -> None:
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=8, patch_size=2, n_classes=4, d_model=32, n_layers=4, n_heads=2)).eval()
    model = MixtureOfDepths(MixtureOfDepthsConfig()).wrap(vit).eval()  # the backbone + three capacities' copies
    n = 4
    batches = [Batch(torch.randn(n, 1, 8, 8), torch.zeros(n, dtype=torch.long), torch.arange(n))]
    trace = model(batches[0].inputs, budget=1.0).trace
    q = QualityResult(np.zeros(n), np.zeros(n), np.arange(n), trace, np.ones(n))
    ti = timing_inputs(q, EvalBatches.in_memory(batches), 1, limit=n)
    plan = SimpleNamespace(spec=SimpleNamespace(measure=MeasureConfig(memory_inputs=2)), hardware=CPU())

    def make_row(budget: float, batch_size: int, metric: str, value: float, n: int, **kw) -> dict:
        return {"budget": budget, "batch_size": batch_size, "metric": metric, "value": value, "n": n, **kw}

    assert METRICS["resident_bytes"] == ("bytes", False)
    input_bytes = 1 * 8 * 8 * 4
    for budget in (1.0, 0.25):
        rows = {r["metric"]: r for r in memory_rows(plan, model, budget, ti, q, make_row)}
        assert {"peak_mem_bytes", "transient_mem_bytes", "resident_bytes"} <= set(rows)
        assert rows["resident_bytes"]["value"] == module_bytes(model)
        assert rows["peak_mem_bytes"]["ci"].over == "exact"  # a deterministic measurement: no interval to draw
        weights = rows["peak_mem_bytes"]["value"] - input_bytes - rows["transient_mem_bytes"]["value"]
        assert weights == modules_bytes(model.operating_modules(budget))  # every input has the same bytes
        assert rows["resident_bytes"]["value"] > 3.9 * modules_bytes(model.operating_modules(budget))
    dense_weights = module_bytes(vit)
    assert modules_bytes(model.operating_modules(1.0)) == dense_weights
