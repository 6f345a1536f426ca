"""The four measurement passes of one budget: quality, FLOPs, timing and memory.

Each pass runs the model on its own, so e.g. the FLOP counter's dispatch overhead never enters a
timing. The passes and their rows are called by :mod:`dynbench.harness.execution`, which owns the
order of a run; why each pass measures the way it does is in docs/architecture.md ("A run").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from dynbench.harness.eval_batches import EvalBatches
from dynbench.harness.flops import count_flops
from dynbench.harness.memory import measure_memory
from dynbench.harness.planning import RunPlan
from dynbench.harness.rows import RowMaker
from dynbench.harness.timing import TimingStats, time_controllers, time_interleaved
from dynbench.methods.base import DynamicModel
from dynbench.stats import Interval, bootstrap, exact, median_interval
from dynbench.tasks.base import Task
from dynbench.types import Batch, Trace


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


def quality_pass(model: DynamicModel, budget: float, batches: Iterable[Batch], task: Task) -> QualityResult:
    """Run every eval batch once; keep scores, correctness and traces per sample."""
    scores, correct, ids, traces = [], [], [], []
    shape: tuple[int, ...] = ()
    for b in batches:
        shape = tuple(b.inputs.shape[1:])
        out = model(b.inputs, budget=budget)
        logits = out.logits.float()  # a bf16/fp16 model's logits, scored in fp32 as every other run's
        scores.append(_np(task.metric.score(logits, b.targets)))
        correct.append(_np(task.metric.correct(logits, b.targets)))
        ids.append(b.sample_ids.numpy())
        traces.append(out.trace.to_cpu())
    trace = Trace.cat(traces)
    analytic = _np(model.backbone.flops(trace, shape))
    return QualityResult(np.concatenate(scores), np.concatenate(correct), np.concatenate(ids), trace, analytic)


def flops_pass(model: DynamicModel, budget: float, batches: Iterable[Batch]) -> FlopsResult:
    """Count executed FLOPs batch by batch and attribute them to samples through their traces."""
    per_sample, controller = [], []
    counted = 0
    analytic_total = 0.0
    controllers = model.controller_modules()
    for b in batches:
        shape = tuple(b.inputs.shape[1:])
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


def quality_rows(
    make_row: RowMaker, budget: float, batch_size: int, task: Task, q: QualityResult, dense_q: QualityResult | None
) -> list[dict]:
    """``quality`` (bootstrap interval over samples) and ``quality_delta`` against dense, paired.

    ``quality_delta`` is the method's quality minus the dense twin's on the same samples (in the
    quality's unit; its direction is the task's): the interval resamples samples for both at once,
    so item difficulty cancels.
    """
    metric = task.metric
    kw = {"unit": metric.spec.unit, "higher_is_better": metric.spec.higher_is_better}
    n = len(q.scores)
    ci = bootstrap(q.scores, lambda m: metric.from_mean(m[..., 0]))
    rows = [make_row(budget, batch_size, "quality", metric.aggregate(q.scores), n, ci=ci, **kw)]
    if dense_q is not None:
        pair = np.column_stack([q.scores, dense_q.scores])  # (N, 2): the same samples, in the same order
        delta = lambda m: metric.from_mean(m[..., 0]) - metric.from_mean(m[..., 1])  # noqa: E731
        value = float(delta(pair.mean(axis=0)))
        rows.append(make_row(budget, batch_size, "quality_delta", value, n, ci=bootstrap(pair, delta), **kw))
    return rows


def flops_rows(
    make_row: RowMaker, budget: float, batch_size: int, flops: FlopsResult, dense_flops: FlopsResult
) -> list[dict]:
    """FLOPs rows: per sample (exact), and the FLOPs ratio and theoretical speedup with intervals.

    The intervals are paired bootstraps over samples: how far the mean cost could move on another
    draw of the split.
    """
    n = len(flops.per_sample)
    pair = np.column_stack([flops.per_sample, dense_flops.per_sample])  # (N, 2)
    ratio = bootstrap(pair, lambda m: m[..., 0] / m[..., 1])
    # the theoretical speedup is the ratio's inverse, so its percentile interval is the inverted one
    # (no 2nd resample)
    inverse = Interval(1.0 / ratio.high, 1.0 / ratio.low, ratio.n, ratio.over) if ratio.finite else ratio
    return [
        make_row(budget, batch_size, "flops_per_sample", flops.mean, n, ci=exact(flops.mean, n)),
        make_row(budget, batch_size, "controller_flops_per_sample", flops.controller_mean, n),
        make_row(budget, batch_size, "flops_ratio", flops.mean / dense_flops.mean, n, ci=ratio),
        make_row(budget, batch_size, "speedup_theoretical", dense_flops.mean / flops.mean, n, ci=inverse),
        make_row(budget, batch_size, "flops_count_gap", flops.count_gap, n),
    ]


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
    timed: list[int]  # the inputs the timed loop cycles through: a plain sample of the eval order


def timing_inputs(q: QualityResult, batches: EvalBatches, batch_size: int, limit: int) -> TimingInputs:
    """Real eval inputs for one batch size, copied out of the eval split in one pass.

    Batch 1: the timed inputs are the first ``limit`` samples in eval order (a seeded shuffle: a
    plain random sample, so their mean cost estimates the split's); one sample of every distinct
    execution path is added for the warm-up only, so a rare path is warm without being
    over-represented in the timing. A method with more distinct paths than ``limit`` (random
    sub-networks: nearly one per sample) warms the first ``limit`` of them: warming thousands of
    one-off paths would cost more than the measurement. Batch N: consecutive eval samples, cycled
    when the split is smaller than N.

    Only the chosen samples are copied (:meth:`EvalBatches.gather`): the inputs cost memory in
    proportion to ``limit`` × ``batch_size``, never the split.
    """
    n = batches.n_samples
    if batch_size == 1:
        first_of_path: dict[tuple, int] = {}
        for i in range(n):
            first_of_path.setdefault(_path_signature(q.trace, i), i)
        reps = list(first_of_path.values())[:limit]
        timed = list(range(min(n, limit)))
        samples = list(dict.fromkeys(timed + reps))  # eval indices: the timed ones first, then extra warm-up paths
        position = {s: k for k, s in enumerate(samples)}
        members = [np.array([s]) for s in samples]
        return TimingInputs(batches.gather(members), members, [position[r] for r in reps], [position[t] for t in timed])
    chunks = max(1, min(limit, -(-n // batch_size)))
    members = [(np.arange(batch_size) + k * batch_size) % n for k in range(chunks)]
    return TimingInputs(batches.gather(members), members, [0], list(range(chunks)))


REALIZATION_LIMIT = 1.1
"""Realization above this is physically implausible.

The method got back more time than the FLOPs it saved: the timing is re-measured once, and flagged
``suspect`` when it persists (docs/architecture.md, "A run").
"""


@dataclass
class SpeedResult:
    """One interleaved timing of a method against dense: its speed figures with 95% intervals.

    Every ratio is a ratio of means over the same timed calls: mean time per call against mean FLOPs
    per call of exactly the inputs those calls ran, so realized and theoretical speedup use the same
    statistic even when per-sample compute varies (early exit, dht, tinv). The median stays a
    latency figure of its own.
    """

    method: TimingStats
    dense: TimingStats
    method_flops: np.ndarray  # (n,) FLOPs of the input each timed call ran, method's
    dense_flops: np.ndarray  # (n,) same, dense's
    batch_size: int

    @property
    def realized(self) -> float:
        """``mean time(dense) / mean time(method)`` over the timed call pairs."""
        return self.dense.mean_ms / self.method.mean_ms

    @property
    def theoretical(self) -> float:
        """``mean FLOPs(dense) / mean FLOPs(method)`` of the timed calls' inputs.

        NaN without a FLOPs pass.
        """
        den = float(self.method_flops.mean()) if self.method_flops.size else math.nan
        return float(self.dense_flops.mean()) / den if den else math.nan

    @property
    def realization(self) -> float:
        """``realized / theoretical`` on the same calls."""
        return self.realized / self.theoretical

    def _pairs(self) -> np.ndarray:
        return np.column_stack([self.dense.durations_ms, self.method.durations_ms])  # (n, 2)

    def realized_ci(self) -> Interval:
        """Bootstrap over call pairs of the ratio of mean call times."""
        return bootstrap(self._pairs(), lambda m: m[..., 0] / m[..., 1], over="calls")

    def realization_ci(self) -> Interval:
        """Bootstrap over call pairs of realized ÷ theoretical, both from the resampled calls."""
        cols = np.column_stack([self._pairs(), self.dense_flops, self.method_flops])  # (n, 4)
        return bootstrap(cols, lambda m: (m[..., 0] / m[..., 1]) / (m[..., 2] / m[..., 3]), over="calls")

    def throughput(self) -> float:
        """Samples per second: batch size ÷ mean call time."""
        return self.batch_size * 1000.0 / self.method.mean_ms

    def throughput_ci(self) -> Interval:
        """Bootstrap over calls of batch size ÷ mean call time."""
        durations = np.asarray(self.method.durations_ms)
        return bootstrap(durations, lambda m: self.batch_size * 1000.0 / m[..., 0], over="calls")

    def record(self) -> dict[str, Any]:
        """Every timed call, for the timings file (later comparisons test these, not summaries)."""
        return {
            "batch_size": self.batch_size,
            "inputs": list(self.method.inputs),
            "method_ms": list(self.method.durations_ms),
            "dense_ms": list(self.dense.durations_ms),
            "method_flops": self.method_flops.tolist(),
            "dense_flops": self.dense_flops.tolist(),
        }


def _call_flops(flops: FlopsResult | None, ti: TimingInputs, calls: Sequence[int]) -> np.ndarray:
    """``(n,)`` FLOPs of the input of each timed call (NaN-free; empty without a FLOPs pass)."""
    if flops is None:
        return np.zeros(0)
    per_input = np.array([flops.per_sample[m].sum() for m in ti.members])
    return per_input[np.asarray(calls, dtype=np.int64)]


def time_speed(
    plan: RunPlan,
    model: DynamicModel,
    dense: DynamicModel,
    budget: float,
    ti: TimingInputs,
    flops: FlopsResult | None,
    dense_flops: FlopsResult | None,
) -> SpeedResult:
    """Time the method and dense, interleaved call by call, on the timed inputs of ``ti``."""
    cfg = plan.spec.measure
    inputs = ti.inputs
    warmup = list(dict.fromkeys(ti.warmup + ti.timed[: cfg.warmup_max]))
    calls: dict[str, Callable[[int], Any]] = {"method": lambda i: model(inputs[i], budget=budget)}
    is_dense = plan.method.name == "dense"
    if not is_dense:
        calls["dense"] = lambda i: dense(inputs[i], budget=1.0)
    stats = time_interleaved(calls, len(inputs), warmup, plan.hardware, cfg, timed=ti.timed)
    st = stats["method"]
    ref = stats["dense"] if not is_dense else st
    has_flops = flops is not None and dense_flops is not None
    method_f = _call_flops(flops if has_flops else None, ti, st.inputs)
    dense_f = _call_flops(dense_flops if has_flops else None, ti, st.inputs)
    return SpeedResult(st, ref, method_f, dense_f, int(inputs[0].shape[0]))


def timing_rows(
    plan: RunPlan,
    model: DynamicModel,
    dense: DynamicModel,
    budget: float,
    ti: TimingInputs,
    flops: FlopsResult | None,
    dense_flops: FlopsResult | None,
    make_row: RowMaker,
) -> tuple[list[dict], dict[str, Any]]:
    """Time the method and dense, interleaved, at one batch size.

    Returns:
        Latency, throughput, speedup, realization and controller rows, and the record of every timed
        call for the timings file. A realization above :data:`REALIZATION_LIMIT` is re-measured
        once; if it persists the speed rows carry ``suspect=True`` (and the record says so) instead
        of being dropped or trusted.
    """
    cfg = plan.spec.measure
    speed = time_speed(plan, model, dense, budget, ti, flops, dense_flops)
    attempts = 1
    if speed.method_flops.size and speed.realization > REALIZATION_LIMIT:
        speed = time_speed(plan, model, dense, budget, ti, flops, dense_flops)
        attempts = 2
    suspect = bool(speed.method_flops.size) and speed.realization > REALIZATION_LIMIT
    st, bs = speed.method, speed.batch_size
    flag = {"suspect": suspect}
    is_dense = plan.method.name == "dense"
    rows = [
        make_row(budget, bs, "latency_ms", st.median_ms, st.n, ci=median_interval(st.durations_ms), **flag),
        make_row(budget, bs, "latency_ms_p90", st.p90_ms, st.n, **flag),
        make_row(budget, bs, "latency_ms_iqr", st.iqr_ms, st.n, **flag),
        make_row(budget, bs, "throughput", speed.throughput(), st.n, ci=speed.throughput_ci(), **flag),
        make_row(
            budget, bs, "speedup_realized", speed.realized, st.n,
            ci=exact(1.0, st.n) if is_dense else speed.realized_ci(), **flag,
        ),
    ]  # fmt: skip
    if speed.method_flops.size:
        ci = exact(1.0, st.n) if is_dense else speed.realization_ci()
        rows.append(make_row(budget, bs, "realization", speed.realization, st.n, ci=ci, **flag))
    controllers = [] if is_dense else model.controller_modules()
    call = lambda i: model(ti.inputs[i], budget=budget)  # noqa: E731
    # a modeled target has no clock to split a call by (its controller FLOPs are in the rows)
    ctrl = None if plan.hardware.modeled else time_controllers(controllers, call, len(ti.inputs), plan.hardware, cfg)
    if ctrl is not None:  # the decision overhead, shown apart from the call it is part of
        rows += [
            make_row(budget, bs, "controller_ms", ctrl.median_ms, ctrl.n),
            make_row(budget, bs, "controller_share", ctrl.share, ctrl.n),
        ]
    return rows, {"budget": float(budget), **speed.record(), "attempts": attempts, "suspect": suspect}


def memory_rows(
    plan: RunPlan,
    model: DynamicModel,
    budget: float,
    ti: TimingInputs,
    q: QualityResult,
    make_row: RowMaker,
) -> list[dict]:
    """Memory of the method at one batch size, over the costliest inputs.

    ``peak_mem_bytes`` counts the weights of the budget's operating modules (what a deployment of
    this one operating point holds), ``resident_bytes`` those of the whole model (every budget's
    variant: what this process holds).
    """
    cfg = plan.spec.measure
    inputs = ti.inputs
    batch_size = int(inputs[0].shape[0])
    costs = [float(q.analytic_flops[m].sum()) for m in ti.members]
    order = sorted(range(len(inputs)), key=lambda i: -costs[i])[: cfg.memory_inputs]
    operating = model.operating_modules(budget)
    mem = measure_memory(model, lambda i: model(inputs[i], budget=budget), inputs, order, plan.hardware, operating)
    rows = [
        # the tensor peak of a path is deterministic (profiler events on CPU, the allocator on
        # CUDA): no spread
        make_row(budget, batch_size, "peak_mem_bytes", mem.peak_bytes, len(order), ci=exact(mem.peak_bytes, 1)),
        make_row(budget, batch_size, "transient_mem_bytes", mem.transient_bytes, len(order)),
        make_row(budget, batch_size, "resident_bytes", mem.resident_bytes, 1),  # one count of the state, not a sample
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
        "task": plan.spec.task.label,  # as the rows name it (RowMaker)
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
