"""The four measurement passes of one budget: quality, FLOPs, timing and memory (DESIGN §4).

Each pass runs the model on its own, so e.g. the FLOP counter's dispatch overhead never enters a timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from dynbench.harness.flops import count_flops
from dynbench.harness.memory import measure_memory
from dynbench.harness.timing import time_controllers, time_interleaved
from dynbench.methods.base import DynamicModel
from dynbench.tasks.base import Task
from dynbench.types import Batch, Trace

if TYPE_CHECKING:
    from dynbench.harness.runner import RowMaker, RunPlan


@dataclass
class QualityResult:
    """Per-sample outcome of the quality pass, in eval order."""

    scores: np.ndarray  # (N,) the task's per-sample scores
    correct: np.ndarray  # (N,) fraction correct per sample
    sample_ids: np.ndarray  # (N,) ids within the eval split
    trace: Trace  # what ran, per sample
    analytic_flops: np.ndarray  # (N,) FLOPs per sample from the trace


@dataclass
class FlopsResult:
    """Counted FLOPs, attributed to samples."""

    per_sample: np.ndarray  # (N,) counted FLOPs, split within each batch in proportion to the analytic count
    controller: np.ndarray  # (N,) controller part, attributed the same way
    counted_total: int  # what FlopCounterMode counted over all batches
    analytic_total: float  # what the traces say should have run

    @property
    def mean(self) -> float:
        """Mean FLOPs per sample."""
        return float(self.per_sample.mean())

    @property
    def controller_mean(self) -> float:
        """Mean controller FLOPs per sample."""
        return float(self.controller.mean())

    @property
    def count_gap(self) -> float:
        """``counted / analytic - 1``: 0 when the counter and the analytic count agree."""
        return self.counted_total / self.analytic_total - 1.0 if self.analytic_total else 0.0


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def quality_pass(model: DynamicModel, budget: float, batches: list[Batch], task: Task) -> QualityResult:
    """Run every eval batch once; keep scores, correctness and traces per sample."""
    scores, correct, ids, traces = [], [], [], []
    for b in batches:
        out = model(b.inputs, budget=budget)
        scores.append(_np(task.metric.score(out.logits, b.targets)))
        correct.append(_np(task.metric.correct(out.logits, b.targets)))
        ids.append(b.sample_ids.numpy())
        traces.append(out.trace.to_cpu())
    trace = Trace.cat(traces)
    shape = tuple(batches[0].inputs.shape[1:])
    analytic = _np(model.backbone.flops(trace, shape))
    return QualityResult(np.concatenate(scores), np.concatenate(correct), np.concatenate(ids), trace, analytic)


def flops_pass(model: DynamicModel, budget: float, batches: list[Batch]) -> FlopsResult:
    """Count executed FLOPs batch by batch and attribute them to samples through their traces."""
    per_sample, controller = [], []
    counted = 0
    analytic_total = 0.0
    shape = tuple(batches[0].inputs.shape[1:])
    controllers = model.controller_modules()
    for b in batches:
        c = count_flops(lambda b=b: model(b.inputs, budget=budget), model, controllers)
        trace = c.output.trace.to_cpu()
        analytic = _np(model.backbone.flops(trace, shape))
        ctrl = _np(trace.controller_flops)
        per_sample.append(analytic * (c.total / analytic.sum() if analytic.sum() else 0.0))
        controller.append(
            ctrl * (c.controller / ctrl.sum()) if ctrl.sum() else np.full_like(ctrl, c.controller / len(ctrl))
        )
        counted += c.total
        analytic_total += float(analytic.sum())
    return FlopsResult(np.concatenate(per_sample), np.concatenate(controller), counted, analytic_total)


def _path_signature(trace: Trace, i: int) -> tuple:
    return (
        tuple(trace.block_tokens[i].tolist()),
        tuple(trace.block_heads[i].tolist()),
        int(trace.readout[i]),
    )


@dataclass
class TimingInputs:
    """Real eval inputs for the timing and memory loops."""

    inputs: list[Tensor]  # one tensor per call, batch dimension included
    members: list[np.ndarray]  # eval-order indices of the samples inside each input
    warmup: list[int]  # inputs covering every execution path, run before timing


def timing_inputs(q: QualityResult, batches: list[Batch], batch_size: int, limit: int) -> TimingInputs:
    """Real eval inputs for one batch size.

    Batch 1: one sample of every distinct execution path first (these are the warm-up), then samples in eval
    order, ``limit`` in all. A method with more distinct paths than ``limit`` (random sub-networks: nearly one
    per sample) gets the first ``limit`` of them, all warmed: warming thousands of one-off paths would cost more
    than the measurement and tell nothing about the timed calls. Batch N: consecutive eval samples, cycled when
    the split is smaller than N.
    """
    inputs = torch.cat([b.inputs for b in batches])  # (N, ...)
    n = inputs.shape[0]
    if batch_size == 1:
        first_of_path: dict[tuple, int] = {}
        for i in range(n):
            first_of_path.setdefault(_path_signature(q.trace, i), i)
        reps = list(first_of_path.values())[:limit]
        rep_set = set(reps)
        order = (reps + [i for i in range(n) if i not in rep_set])[:limit]
        members = [np.array([i]) for i in order]
        return TimingInputs([inputs[i : i + 1] for i in order], members, list(range(len(reps))))
    chunks = max(1, min(limit, -(-n // batch_size)))
    members = [(np.arange(batch_size) + k * batch_size) % n for k in range(chunks)]
    return TimingInputs([inputs[torch.from_numpy(m)] for m in members], members, [0])


def timing_rows(
    plan: RunPlan,
    model: DynamicModel,
    dense: DynamicModel,
    budget: float,
    ti: TimingInputs,
    flops: FlopsResult | None,
    dense_flops: FlopsResult | None,
    make_row: RowMaker,
) -> list[dict]:
    """Time the method and dense, interleaved, at one batch size → latency, throughput, speedup and controller rows."""
    cfg = plan.spec.measure
    inputs = ti.inputs
    batch_size = int(inputs[0].shape[0])
    warmup = list(dict.fromkeys(ti.warmup + list(range(min(cfg.warmup_max, len(inputs))))))
    calls: dict[str, Callable[[int], Any]] = {"method": lambda i: model(inputs[i], budget=budget)}
    is_dense = plan.method.name == "dense"
    if not is_dense:
        calls["dense"] = lambda i: dense(inputs[i], budget=1.0)
    stats = time_interleaved(calls, len(inputs), warmup, plan.hardware, cfg)
    st, ref = stats["method"], stats["dense" if not is_dense else "method"]
    realized = ref.median_ms / st.median_ms
    rows = [
        make_row(budget, batch_size, "latency_ms", st.median_ms, st.n),
        make_row(budget, batch_size, "latency_ms_p90", st.p90_ms, st.n),
        make_row(budget, batch_size, "latency_ms_iqr", st.iqr_ms, st.n),
        make_row(budget, batch_size, "throughput", batch_size * 1000.0 / st.median_ms, st.n),
        make_row(budget, batch_size, "speedup_realized", realized, st.n),
    ]
    if flops is not None and dense_flops is not None:
        rows.append(make_row(budget, batch_size, "realization", realized / (dense_flops.mean / flops.mean), st.n))
    controllers = [] if is_dense else model.controller_modules()
    ctrl = time_controllers(controllers, calls["method"], len(inputs), plan.hardware, cfg)
    if ctrl is not None:  # the decision overhead, shown apart from the call it is part of
        rows += [
            make_row(budget, batch_size, "controller_ms", ctrl.median_ms, ctrl.n),
            make_row(budget, batch_size, "controller_share", ctrl.share, ctrl.n),
        ]
    return rows


def memory_rows(
    plan: RunPlan,
    model: DynamicModel,
    budget: float,
    ti: TimingInputs,
    q: QualityResult,
    make_row: RowMaker,
) -> list[dict]:
    """Peak memory of the method at one batch size, over the costliest inputs."""
    cfg = plan.spec.measure
    inputs = ti.inputs
    batch_size = int(inputs[0].shape[0])
    costs = [float(q.analytic_flops[m].sum()) for m in ti.members]
    order = sorted(range(len(inputs)), key=lambda i: -costs[i])[: cfg.memory_inputs]
    mem = measure_memory(model, lambda i: model(inputs[i], budget=budget), inputs, order, plan.hardware)
    rows = [
        make_row(budget, batch_size, "peak_mem_bytes", mem.peak_bytes, len(order)),
        make_row(budget, batch_size, "transient_mem_bytes", mem.transient_bytes, len(order)),
    ]
    if mem.process_peak_bytes is not None:
        rows.append(make_row(budget, batch_size, "process_peak_bytes", mem.process_peak_bytes, len(order)))
    return rows


def sample_records(plan: RunPlan, budget: float, q: QualityResult, flops: FlopsResult | None) -> list[dict]:
    """Per-sample records of one budget for the samples file."""
    t = q.trace
    layers = t.layers_executed.numpy()
    executed = (t.block_tokens > 0).double()
    heads = ((t.block_heads.double() * executed).sum(1) / executed.sum(1).clamp(min=1)).numpy()
    fl = flops.per_sample if flops is not None else q.analytic_flops
    ctrl = flops.controller if flops is not None else t.controller_flops.numpy()
    base = {
        "run_key": plan.run_key,
        "task": plan.spec.task.name,
        "method": plan.method.name,
        "method_label": plan.spec.method.label,
        "budget": float(budget),
        "seed": plan.spec.seed,
        "hardware": plan.hardware.label,
    }
    extras = {k: v for k, v in t.extra.items() if v.dim() == 1}
    out = []
    for i in range(len(q.scores)):
        rec = {
            **base,
            "sample_id": int(q.sample_ids[i]),
            "flops": float(fl[i]),
            "controller_flops": float(ctrl[i]),
            "layers": int(layers[i]),
            "heads": float(heads[i]),
            "exit_layer": None if t.exit_layer is None else int(t.exit_layer[i]),
            "score": float(q.scores[i]),
            "correct": float(q.correct[i]),
        }
        rec.update({k: float(v[i]) for k, v in extras.items()})
        out.append(rec)
    return out
