"""Execute one run: load the backbone, fit the method (cached), sweep its budgets, measure, store.

Each budget is measured in separate passes so no measurement disturbs another (docs/architecture.md,
"A run"):

1. quality — the whole eval split in a fixed seeded order; per-sample scores and traces kept;
2. FLOPs — ``FlopCounterMode`` over the same samples, per batch, attributed to samples through the
   analytic count of each sample's trace (and checked against it: ``flops_count_gap``);
3. timing — batch-1 latency and batch-N throughput, dense interleaved with the method on real
   inputs;
4. memory — tensor peak and process footprint, costliest execution paths first.

The run was validated beforehand (:mod:`dynbench.harness.planning`); the fit comes from
:mod:`dynbench.harness.fit_cache` and the passes from :mod:`dynbench.harness.measure`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dynbench.harness import measure
from dynbench.harness.fit_cache import fitted_eval, fitted_model
from dynbench.harness.planning import RunPlan
from dynbench.harness.provenance import now
from dynbench.harness.rows import RowMaker
from dynbench.harness.store import ResultStore
from dynbench.methods.base import METHODS, DynamicModel
from dynbench.types import Batch

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)`` — budgets finished of this run, and what runs now."""


def eval_batches(plan: RunPlan) -> list[Batch]:
    """The eval split in a fixed seeded order (the same for every seed and method), on device."""
    task, spec = plan.task, plan.spec
    batches = task.batches(
        task.eval_split, batch_size=spec.measure.eval_batch_size, seed=0, shuffle=True, limit=spec.limit
    )
    return [b.to(plan.hardware.device) for b in batches]


def execute(plan: RunPlan, *, store: ResultStore, cache_dir: Path | None, progress: Progress | None = None) -> None:
    """Run one plan end to end and store its rows and samples.

    Args:
        plan: the validated run.
        store: where the finished run is written (atomically, at the end).
        cache_dir: backbone and method-fit cache; ``None`` disables caching.
        progress: called after each budget.
    """
    started = now()
    spec = plan.spec
    plan.hardware.setup()
    say = progress or (lambda done, total, what: None)
    say(0, len(plan.budgets), "training / loading the dense backbone")
    backbone = plan.task.backbone(spec.seed, cache_dir=cache_dir)
    say(0, len(plan.budgets), f"fitting {plan.method.name}")
    model = fitted_model(plan, backbone, cache_dir).to(plan.hardware.device)
    backbone = model.backbone.eval()
    batches = eval_batches(plan)
    if not batches:
        raise ValueError(f"The {plan.task.eval_split} split of task '{plan.task.name}' is empty; nothing to evaluate.")
    if plan.method.sees_eval_labels:
        say(0, len(plan.budgets), f"fitting {plan.method.name} on the evaluation samples (an upper bound)")
    fitted_eval(plan, model, batches, cache_dir)
    make_row = RowMaker(plan, started)
    dense = METHODS.get("dense")().wrap(backbone).eval()
    rows: list[dict] = []
    samples: list[dict] = []
    timings: list[dict] = []
    with torch.inference_mode():
        twin = DenseTwin(
            quality=None if plan.method.name == "dense" else measure.quality_pass(dense, 1.0, batches, plan.task),
            flops=measure.flops_pass(dense, 1.0, batches) if spec.measure.flops else None,
        )
        for done, budget in enumerate(plan.budgets):
            say(done, len(plan.budgets), f"budget {budget:.3g}")
            r, s, t = measure_budget(plan, model, dense, budget, batches, twin, make_row)
            rows.extend(r)
            samples.extend(s)
            timings.extend(t)
    store.write(plan.run_key, rows, samples, timings)
    say(len(plan.budgets), len(plan.budgets), "done")


@dataclass
class DenseTwin:
    """The dense model's passes over the same samples: what every ratio and difference refers to."""

    quality: measure.QualityResult | None  # None when the run is dense itself (every delta would be 0)
    flops: measure.FlopsResult | None  # None when FLOPs are not counted


def measure_budget(
    plan: RunPlan,
    model: DynamicModel,
    dense: DynamicModel,
    budget: float,
    batches: list[Batch],
    twin: DenseTwin,
    make_row: RowMaker,
) -> tuple[list[dict], list[dict], list[dict]]:
    """All passes at one budget → (rows, per-sample records, timed-call records)."""
    spec, task = plan.spec, plan.task
    ebs = spec.measure.eval_batch_size
    q = measure.quality_pass(model, budget, batches, task)
    n = len(q.scores)
    rows = measure.quality_rows(make_row, budget, ebs, task, q, twin.quality)
    rows.append(make_row(budget, ebs, "mean_layers", float(q.trace.layers_executed.double().mean()), n))
    extras = {**task.metric.secondary(q.correct), **model.trace_metrics(q.trace)}
    for name, (value, unit, hib) in extras.items():
        rows.append(make_row(budget, ebs, name, value, n, unit=unit, higher_is_better=hib))
    flops = None
    if spec.measure.flops and twin.flops is not None:
        flops = measure.flops_pass(model, budget, batches)
        rows += measure.flops_rows(make_row, budget, ebs, flops, twin.flops)
    timings: list[dict] = []
    for bs in spec.batch_sizes:
        inputs = measure.timing_inputs(q, batches, bs, spec.measure.timing_inputs)
        if spec.measure.timing:
            r, record = measure.timing_rows(plan, model, dense, budget, inputs, flops, twin.flops, make_row)
            rows += r
            timings.append(record)
        if spec.measure.memory:
            rows += measure.memory_rows(plan, model, budget, inputs, q, make_row)
    return rows, measure.sample_records(plan, budget, q, flops), timings
