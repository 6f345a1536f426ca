"""Execute one run: load the backbone, fit the method (cached), sweep its budgets, measure, store.

Each budget is measured in separate passes so no measurement disturbs another (docs/architecture.md,
"A run"):

1. quality — the whole eval split in a fixed seeded order; per-sample scores and traces kept;
2. FLOPs — ``FlopCounterMode`` over the same samples, per batch, attributed to samples through the
   analytic count of each sample's trace (and checked against it: ``flops_count_gap``);
3. timing — batch-1 latency and batch-N throughput, dense interleaved with the method on real
   inputs;
4. memory — tensor peak and process footprint, costliest execution paths first.

Each step runs inside :func:`phase`, so an error leaving :func:`execute` names the phase it came
from (:func:`failed_phase`: ``setup``, ``backbone``, ``fit``, ``quality``, ``flops``, ``timing``,
``memory`` or ``store``), which the failure record of the run keeps.

The run was validated beforehand (:mod:`dynbench.harness.planning`); the fit comes from
:mod:`dynbench.harness.fit_cache` and the passes from :mod:`dynbench.harness.measure`.
"""

from __future__ import annotations

import contextvars
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from dynbench.harness import measure
from dynbench.harness.eta import PhaseTimes, record_run
from dynbench.harness.eval_batches import EvalBatches
from dynbench.harness.fit_cache import fitted_eval, fitted_model
from dynbench.harness.planning import RunPlan
from dynbench.harness.provenance import now
from dynbench.harness.rows import RowMaker
from dynbench.harness.store import ResultStore
from dynbench.methods.base import METHODS, DynamicModel
from dynbench.models.training import step_listener

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)`` — budgets finished of this run, and what runs now."""

PHASES = ("setup", "backbone", "fit", "quality", "flops", "timing", "memory", "store")
"""The phases of a run, in order; a failure record names the one the run failed in."""

_PHASE_LISTENER: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "phase_listener", default=None
)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Run a step of a run as phase ``name``: an error raised inside is tagged with it.

    The innermost phase wins, so an error keeps the phase it was raised in as it propagates. A
    listener set with :func:`phase_listener` hears each phase as it starts.
    """
    listener = _PHASE_LISTENER.get()
    if listener is not None:
        listener(name)
    try:
        yield
    except Exception as exc:
        if getattr(exc, "run_phase", None) is None:
            try:
                exc.run_phase = name  # type: ignore[attr-defined]
            except AttributeError:  # an exception type that takes no attributes keeps no phase
                pass
        raise


@contextmanager
def phase_listener(listener: Callable[[str], None]) -> Iterator[None]:
    """Call ``listener(name)`` as each :func:`phase` starts.

    The subprocess worker reports them, so a worker that dies without a word still has a phase.
    """
    token = _PHASE_LISTENER.set(listener)
    try:
        yield
    finally:
        _PHASE_LISTENER.reset(token)


def failed_phase(exc: BaseException) -> str:
    """The phase an error left :func:`execute` from; ``unknown`` when raised outside every phase."""
    return getattr(exc, "run_phase", None) or "unknown"


def eval_batches(plan: RunPlan) -> EvalBatches:
    """The eval split in a fixed seeded order (the same for every seed and method), on device.

    Kept in memory between passes when it fits ``measure.eval_memory_mb``, streamed from the task
    otherwise (:mod:`dynbench.harness.eval_batches`).
    """
    task, spec = plan.task, plan.spec
    size = spec.measure.eval_batch_size
    n = task.n_samples(task.eval_split)
    return EvalBatches(
        lambda: task.batches(task.eval_split, batch_size=size, seed=0, shuffle=True, limit=spec.eval_limit),
        n_samples=n if spec.eval_limit is None else min(n, spec.eval_limit),
        batch_size=size,
        device=plan.hardware.device,
        keep_bytes=spec.measure.eval_memory_mb * 2**20,
    )


def execute(plan: RunPlan, *, store: ResultStore, cache_dir: Path | None, progress: Progress | None = None) -> None:
    """Run one plan end to end and store its rows and samples.

    Args:
        plan: the validated run.
        store: where the finished run is written (atomically, at the end).
        cache_dir: backbone and method-fit cache; ``None`` disables caching.
        progress: called after each budget.
    """
    started, clock = now(), _Laps(cache_dir)
    spec = plan.spec
    with phase("setup"):
        plan.hardware.setup()
    say = progress or (lambda done, total, what: None)
    say(0, len(plan.budgets), "training / loading the dense backbone")
    with phase("backbone"), _steps(say, len(plan.budgets), "training the dense backbone"):
        backbone = plan.task.backbone(spec.seed, cache_dir=cache_dir, device=plan.hardware.device)
    clock.times.backbone_s, clock.times.backbone_trained = clock.lap("backbones")
    say(0, len(plan.budgets), f"fitting {plan.method.name}")
    with phase("fit"), _steps(say, len(plan.budgets), f"fitting {plan.method.name}"):
        model = fitted_model(plan, backbone, cache_dir)  # on the run's device
    backbone = model.backbone.eval()
    with phase("quality"):
        batches = eval_batches(plan)
        if batches.n_samples == 0:
            raise ValueError(
                f"The {plan.task.eval_split} split of task '{plan.task.name}' is empty; nothing to evaluate."
            )
    if plan.method.sees_eval_labels:
        say(0, len(plan.budgets), f"fitting {plan.method.name} on the evaluation samples (an upper bound)")
    with phase("fit"):
        fitted_eval(plan, model, batches, cache_dir)
    # fits run at fp32 whatever the target's dtype (one fit cache for all); the cast is the
    # deployment step
    plan.hardware.cast(model)  # in place: `backbone` is cast with it
    batches.cast(plan.hardware.torch_dtype)
    clock.times.fit_s, clock.times.fit_trained = clock.lap("methods")
    make_row = RowMaker(plan, started, eval_samples=batches.n_samples)
    dense = METHODS.get("dense")().wrap(backbone).eval()
    rows: list[dict] = []
    samples: list[dict] = []
    timings: list[dict] = []
    with torch.inference_mode():
        with phase("quality"):
            dense_q = None if plan.method.name == "dense" else measure.quality_pass(dense, 1.0, batches, plan.task)
        with phase("flops"):
            twin = DenseTwin(
                quality=dense_q, flops=measure.flops_pass(dense, 1.0, batches) if spec.measure.flops else None
            )
        for done, budget in enumerate(plan.budgets):
            say(done, len(plan.budgets), f"budget {budget:.3g}")
            r, s, t = measure_budget(plan, model, dense, budget, batches, twin, make_row)
            rows.extend(r)
            samples.extend(s)
            timings.extend(t)
    clock.times.measure_s = clock.lap("")[0]
    with phase("store"):
        store.write(plan.run_key, rows, samples, timings)
    record_run(cache_dir, plan, clock.times, clock.total())
    say(len(plan.budgets), len(plan.budgets), "done")


STEP_REPORT_S = 1.0
"""Seconds between two progress messages about training steps (the last step always reports)."""


def _steps(say: Progress, n_budgets: int, what: str) -> AbstractContextManager[None]:
    """Report the training steps of every ``fit_loop`` inside the block as ``what: step i/n``."""
    last = -math.inf

    def listener(step: int, steps: int) -> None:
        nonlocal last
        if step == steps or time.monotonic() - last >= STEP_REPORT_S:
            last = time.monotonic()
            say(0, n_budgets, f"{what}: step {step}/{steps}")

    return step_listener(listener)


class _Laps:
    """The phase times of one run: seconds since the last lap, and whether the lap filled the cache.

    A lap that added a file to a cache folder (``backbones``, ``methods``) trained what it cached;
    without a cache every backbone and fit is trained.
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir
        self.times = PhaseTimes()
        self.start = self.mark = time.perf_counter()
        self.files = {folder: self._listing(folder) for folder in ("backbones", "methods")}

    def _listing(self, folder: str) -> set[str]:
        path = None if self.cache_dir is None else Path(self.cache_dir) / folder
        return set(os.listdir(path)) if path is not None and path.is_dir() else set()

    def lap(self, folder: str) -> tuple[float, bool]:
        """Seconds since the last lap, and whether the cache's ``folder`` gained a file since."""
        seconds, self.mark = time.perf_counter() - self.mark, time.perf_counter()
        if not folder:
            return seconds, False
        before, self.files[folder] = self.files[folder], self._listing(folder)
        return seconds, self.cache_dir is None or bool(self.files[folder] - before)

    def total(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start


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
    batches: EvalBatches,
    twin: DenseTwin,
    make_row: RowMaker,
) -> tuple[list[dict], list[dict], list[dict]]:
    """All passes at one budget → (rows, per-sample records, timed-call records)."""
    spec, task = plan.spec, plan.task
    ebs = spec.measure.eval_batch_size
    with phase("quality"):
        q = measure.quality_pass(model, budget, batches, task)
        n = len(q.scores)
        rows = measure.quality_rows(make_row, budget, ebs, task, q, twin.quality)
        rows.append(make_row(budget, ebs, "mean_layers", float(q.trace.layers_executed.double().mean()), n))
        extras = {**task.metric.secondary(q.correct), **model.trace_metrics(q.trace)}
        for name, (value, unit, hib) in extras.items():
            rows.append(make_row(budget, ebs, name, value, n, unit=unit, higher_is_better=hib))
    flops = None
    if spec.measure.flops and twin.flops is not None:
        with phase("flops"):
            flops = measure.flops_pass(model, budget, batches)
            rows += measure.flops_rows(make_row, budget, ebs, flops, twin.flops)
    timings: list[dict] = []
    for bs in spec.batch_sizes:
        with phase("timing"):
            inputs = measure.timing_inputs(q, batches, bs, spec.measure.timing_inputs)
        if spec.measure.timing:
            with phase("timing"):
                r, record = measure.timing_rows(plan, model, dense, budget, inputs, flops, twin.flops, make_row)
            rows += r
            timings.append(record)
        if spec.measure.memory:
            with phase("memory"):
                rows += measure.memory_rows(plan, model, budget, inputs, q, make_row)
    return rows, measure.sample_records(plan, budget, q, flops), timings
