"""Execute one run: build the plugins, fit the method (cached), sweep its budgets, measure, store.

Each budget is measured in separate passes so no measurement disturbs another (DESIGN §4):

1. quality — the whole eval split in a fixed seeded order; per-sample scores and traces kept;
2. FLOPs — ``FlopCounterMode`` over the same samples, per batch, attributed to samples through the analytic
   count of each sample's trace (and checked against it: ``flops_count_gap``);
3. timing — batch-1 latency and batch-N throughput, dense interleaved with the method on real inputs;
4. memory — tensor peak and process footprint, costliest execution paths first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynbench.config import ConfigError, PluginSpec, RunSpec, build_dataclass
from dynbench.hardware.base import HARDWARE, HardwareTarget
from dynbench.harness import measure
from dynbench.harness.provenance import collect, now
from dynbench.harness.store import ResultStore
from dynbench.methods.base import METHODS, DynamicModel, Method
from dynbench.models.backbone import Backbone
from dynbench.models.training import atomic_torch_save, backbone_key, config_digest
from dynbench.registry import Registry, RegistryError
from dynbench.stats import Interval
from dynbench.tasks.base import TASKS, Task
from dynbench.types import METRICS, Batch

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)`` — budgets finished of this run, and what runs now."""


@dataclass
class RunPlan:
    """A validated run: the spec with its plugins built and budgets resolved."""

    spec: RunSpec
    task: Task
    method: Method
    hardware: HardwareTarget
    budgets: tuple[float, ...]
    run_key: str

    @property
    def title(self) -> str:
        """``task × method (seed s, hardware)`` for progress lines and errors."""
        return f"{self.spec.task.label} × {self.spec.method.label} (seed {self.spec.seed}, {self.hardware.label})"


def build_plugin(registry: Registry[Any], spec: PluginSpec, errors: list[str]) -> Any:
    """Instantiate ``spec`` from ``registry`` with validated options, appending problems to ``errors``."""
    try:
        cls = registry.get(spec.name)
    except RegistryError as exc:
        errors.append(str(exc))
        return None
    config, errs = build_dataclass(cls.Config, spec.options_dict(), f"{registry.kind} '{spec.name}'")
    errors.extend(errs)
    if errs:
        return None
    try:
        return cls(config)
    except ValueError as exc:  # a plugin's own check of its options (e.g. overlapping splits)
        errors.append(str(exc))
        return None


def run_key(spec: RunSpec, task: Task, method: Method, hardware: HardwareTarget) -> str:
    """Stable, readable key: names plus a digest of everything that defines the results."""
    identity = {**spec.identity(), "task_version": task.version, "method_version": method.version}
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return (
        f"{safe(spec.task.name)}__{safe(spec.method.name)}__s{spec.seed}__{safe(hardware.label)}__"
        f"{config_digest(identity)}"
    )


def plan_run(spec: RunSpec, errors: list[str]) -> RunPlan | None:
    """Validate one spec; problems go to ``errors`` (nothing is run or written)."""
    n_before = len(errors)
    task = build_plugin(TASKS, spec.task, errors)
    method = build_plugin(METHODS, spec.method, errors)
    hardware = build_plugin(HARDWARE, spec.hardware, errors)
    if task is not None and (problem := task.data_problem()):
        errors.append(problem)
    if hardware is not None and (reason := hardware.unavailable_reason()):
        errors.append(f"Hardware target '{spec.hardware.label}' is not available here: {reason}.")
    budgets: tuple[float, ...] = ()
    if method is not None and task is not None:
        try:
            budgets = method.resolve_budgets(spec.budgets, task.n_blocks())
        except ValueError as exc:
            errors.append(str(exc))
    bad_bs = [b for b in spec.batch_sizes if b < 1]
    if bad_bs or not spec.batch_sizes:
        errors.append(f"Batch sizes must be positive integers, got {list(spec.batch_sizes)}. Use e.g. 1,32.")
    if spec.limit is not None and spec.limit < 1:
        errors.append(f"--limit must be >= 1, got {spec.limit}.")
    if len(errors) > n_before:
        return None
    return RunPlan(spec, task, method, hardware, budgets, run_key(spec, task, method, hardware))


def plan_suite(specs: list[RunSpec]) -> list[RunPlan]:
    """Validate every run of a suite, reporting all problems at once.

    Raises:
        ConfigError: with every problem found (duplicates removed, order kept).
    """
    errors: list[str] = []
    plans = [plan_run(s, errors) for s in specs]
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return [p for p in plans if p is not None]


def fitted_model(plan: RunPlan, backbone: Backbone, cache_dir: Path | None) -> DynamicModel:
    """Wrap the backbone and fit the method, reusing a cached fit of the same (backbone, method config).

    The cache holds what the fit made or changed, not the backbone it started from: a layer ranking is a few bytes
    even on a 135 M-parameter model, while a method that retrains or fine-tunes the backbone keeps those weights.

    The fit runs with the task's evaluation split sealed (:meth:`Task.sealed`): it may read ``train`` and the
    validation split only, so nothing it chooses is chosen on the samples it is scored on. Only
    :func:`fitted_eval` (an upper bound's ``fit_eval``) sees the evaluation samples.

    Raises:
        EvalSplitAccessError: the method's fit read the evaluation split.
    """
    model = plan.method.wrap(backbone)
    if plan.method.learns():
        seed, task = plan.spec.seed, plan.task
        with task.sealed(task.eval_split, reader=f"the fit of method '{plan.method.name}'"):
            cached_fit(plan, model, "", cache_dir, lambda: plan.method.fit(model, task, seed=seed))
    return model.eval()


def fitted_eval(plan: RunPlan, model: DynamicModel, batches: list[Batch], cache_dir: Path | None) -> None:
    """Fit a method that sees the evaluation labels (an upper bound) on exactly ``batches``, cached.

    Nothing happens for other methods. The cache key adds to :func:`fitted_model`'s the evaluation set (split,
    ``--limit``, eval batch size) and the budgets, so a cached solution is only reused for the same samples.
    """
    method, spec = plan.method, plan.spec
    if not method.sees_eval_labels:
        return
    evaluation = {
        "split": plan.task.eval_split,
        "limit": spec.limit,
        "batch_size": spec.measure.eval_batch_size,
        "budgets": list(plan.budgets),
    }
    cached_fit(
        plan,
        model,
        f"__eval-{config_digest(evaluation)}",
        cache_dir,
        lambda: method.fit_eval(model, plan.task, batches, budgets=plan.budgets, seed=spec.seed),
    )


def cached_fit(
    plan: RunPlan, model: DynamicModel, suffix: str, cache_dir: Path | None, fit: Callable[[], None]
) -> None:
    """Load ``model``'s fitted state from the cache, or run ``fit`` (seeded) and store what it made or changed.

    The key: backbone key, method name, version and the digest of :meth:`Method.fit_identity`, plus ``suffix``.
    """
    method = plan.method
    key = (
        f"{backbone_key(plan.task, plan.spec.seed)}__{method.name}-v{method.version}-"
        f"{config_digest(method.fit_identity())}{suffix}"
    )
    path = None if cache_dir is None else Path(cache_dir) / "methods" / f"{key}.pt"
    if path is not None and path.exists():
        load_fitted_state(model, torch.load(path, map_location="cpu", weights_only=True), path)
        return
    before = tensor_versions(model)
    torch.manual_seed(plan.spec.seed)
    fit()
    if path is not None:
        atomic_torch_save(fitted_state(model, before), path)


def tensor_versions(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``name → (identity, in-place version)`` of every backbone tensor in the model's state dict."""
    return {k: (id(v), v._version) for k, v in model.state_dict(keep_vars=True).items() if k.startswith("backbone.")}


def fitted_state(model: nn.Module, before: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """The state dict without the backbone tensors the fit left untouched (same tensor, no in-place change)."""
    state = model.state_dict(keep_vars=True)
    kept = {k: v for k, v in state.items() if before.get(k) != (id(v), v._version)}
    return {k: v.detach() for k, v in kept.items()}


def load_fitted_state(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load a cached fit onto a freshly wrapped model; absent keys must be backbone tensors (kept as wrapped).

    Raises:
        ValueError: the cached file holds keys the model lacks or misses method state (a stale cache file).
    """
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"Cached fit {path} does not match the method's model (unexpected {result.unexpected_keys[:3]}, "
            f"missing {missing[:3]}). Delete it and run again."
        )


class RowMaker:
    """Stamps the shared columns (run identity, provenance) onto every row of one run."""

    def __init__(self, plan: RunPlan, started_at: str) -> None:
        prov = collect()
        info = ", ".join(f"{k}={v}" for k, v in plan.hardware.describe().items())
        m = plan.method
        self.plan = plan
        self.base = {
            "run_key": plan.run_key,
            "suite": plan.spec.suite,
            "task": plan.spec.task.name,
            "task_version": plan.task.version,
            "method": m.name,
            "method_version": m.version,
            "method_label": plan.spec.method.label,
            "reconstructed": m.reconstructed,
            "upper_bound": m.sees_eval_labels,  # fitted on the evaluation labels: not deployable
            # the network of the dense twin that Δ vs dense and the speedups compare with
            "reference": "dense backbone" if m.reference_network == "dense" else f"{m.name}'s {m.reference_network}",
            "seed": plan.spec.seed,
            "hardware": plan.hardware.label,
            "git_sha": prov.git_sha,
            "dirty": prov.dirty,
            "dynbench_version": prov.dynbench_version,
            "torch_version": prov.torch_version,
            "machine": f"{prov.machine} | {info}",
            "started_at": started_at,
        }

    def __call__(
        self,
        budget: float,
        batch_size: int,
        metric: str,
        value: float,
        n: int,
        *,
        ci: Interval | None = None,
        suspect: bool = False,
        **kw: Any,
    ) -> dict:
        """One row; ``unit`` and ``higher_is_better`` come from :data:`METRICS` unless given.

        Args:
            budget: the operating point.
            batch_size: the batch size it was measured at.
            metric: the metric's name.
            value: the measured value.
            n: observations behind it.
            ci: its 95% interval (``ci_low``, ``ci_high``, ``ci_over``); none = NaN ends and an empty ``ci_over``.
            suspect: the measurement broke physics even after a re-measure (a realization above the limit).
            **kw: ``unit`` and ``higher_is_better`` for metrics outside :data:`METRICS`.
        """
        unit, hib = METRICS.get(metric, (kw.get("unit", ""), kw.get("higher_is_better", False)))
        return {
            **self.base,
            "budget": float(budget),
            "is_full_budget": float(budget) == float(self.plan.method.full_budget),
            "batch_size": int(batch_size),
            "metric": metric,
            "value": float(value),
            "unit": kw.get("unit", unit),
            "higher_is_better": bool(kw.get("higher_is_better", hib)),
            "n": int(n),
            "ci_low": math.nan if ci is None else float(ci.low),
            "ci_high": math.nan if ci is None else float(ci.high),
            "ci_over": "" if ci is None else ci.over,
            "suspect": bool(suspect),
        }


def eval_batches(plan: RunPlan) -> list[Batch]:
    """The eval split in a fixed seeded order (the same samples for every seed and method), on the device."""
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
    """The dense model's passes over the same samples: the reference of every ratio and paired difference."""

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
