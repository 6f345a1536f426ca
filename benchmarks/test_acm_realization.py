"""ACM on the CPU: how much of the FLOPs learner gating saves comes back as time (the realization).

realization = realized speedup / theoretical speedup, with realized = dense time / ACM time (medians
of interleaved calls, the harness's own timer) and theoretical = dense FLOPs / ACM FLOPs (analytic,
from the trace, gates included). Measured at batch 1 and 32 on a ViT with d = 256 (MLP 1024, 4
blocks, 64 patches + CLS), whose gates are untrained but priced to spend each budget on the inputs
(:func:`~dynbench.methods.acm.set_price`), so the choices per token vary as in a fitted model. A
second benchmark compares one module's grouped execution (tokens sorted by k, one contiguous matmul
per learner) with the naive boolean-mask loop.

Run with ``pytest benchmarks/test_acm_realization.py --benchmark-only`` (pytest-benchmark). The
numbers go to ``extra_info``; nothing here passes or fails on a speed.
"""

from __future__ import annotations

import pytest
import torch

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness.timing import time_interleaved
from dynbench.methods.acm import ACM, ACMConfig, ACMModel, LearnerStack, set_price
from dynbench.models.vit import ViT, ViTConfig

BUDGETS = (0.75, 0.5, 0.25)
TIMING = MeasureConfig(min_iters=20, min_time_s=1.0, max_time_s=20.0)


@pytest.fixture(scope="module")
def model() -> ACMModel:
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=4, channels=3, d_model=256, n_layers=4, n_heads=8)).eval()
    acm = ACM(ACMConfig(targets=BUDGETS)).wrap(vit).eval()
    calibration = torch.randn(64, 3, 32, 32)
    with torch.inference_mode():
        for beta in BUDGETS:
            set_price(acm, beta, calibration)
    return acm


def inputs_for(batch: int) -> list[torch.Tensor]:
    """Distinct inputs, so the timed calls do not repeat one execution path."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(8)]


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("budget", BUDGETS)
def test_acm_realization(benchmark, model: ACMModel, budget: float, batch: int) -> None:
    inputs = inputs_for(batch)
    dense = model.backbone
    shape = tuple(inputs[0].shape[1:])
    with torch.inference_mode():
        flops = sum(float(model.backbone.flops(model(x, budget=budget).trace, shape).sum()) for x in inputs)
        dense_flops = dense.dense_flops(shape) * batch * len(inputs)
        calls = {"acm": lambda i: model(inputs[i], budget=budget), "dense": lambda i: dense(inputs[i])}
        stats = time_interleaved(calls, len(inputs), list(range(len(inputs))), CPU(), TIMING)
        theoretical = dense_flops / flops
        realized = stats["dense"].median_ms / stats["acm"].median_ms
        benchmark.extra_info.update(
            batch=batch,
            budget=budget,
            speedup_theoretical=round(theoretical, 4),
            speedup_realized=round(realized, 4),
            realization=round(realized / theoretical, 4),
            dense_ms=round(stats["dense"].median_ms, 4),
            acm_ms=round(stats["acm"].median_ms, 4),
        )
        benchmark(lambda: model(inputs[0], budget=budget))


def masked(acm: LearnerStack, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The naive execution: learner i on the tokens with k >= i, selected by boolean masks."""
    out = torch.zeros_like(z)
    for i in range(acm.n):
        mask = k > i
        out[mask] += acm.learner(z[mask], i)
    return out


@pytest.mark.parametrize("tokens", [65, 32 * 65])
def test_grouped_vs_masked_module(benchmark, tokens: int) -> None:
    """One d = 256 module, random choices: grouped (sorted) vs masked execution vs the dense MLP."""
    torch.manual_seed(0)
    acm = LearnerStack(256, 4, 256, swiglu=False, bias=True, out_bias=True, gate_hidden=16, gate_depth=3).eval()
    z = torch.randn(tokens, 256)
    k = torch.randint(0, 5, (tokens,))
    with torch.inference_mode():
        calls = {"grouped": lambda i: acm.gated(z, k), "masked": lambda i: masked(acm, z, k), "dense": lambda i: acm(z)}
        stats = time_interleaved(calls, 1, [0], CPU(), TIMING)
        theoretical = 4 / k.double().mean().item()  # dense = all 4 learners on every token
        for name in ("grouped", "masked"):
            benchmark.extra_info[f"{name}_realization"] = round(
                stats["dense"].median_ms / stats[name].median_ms / theoretical, 4
            )
        benchmark.extra_info.update(
            tokens=tokens, mean_learners=round(k.double().mean().item(), 4), speedup_theoretical=round(theoretical, 4)
        )
        benchmark(lambda: acm.gated(z, k))
