"""Plan a suite: build each run's plugins, check its options and budgets, name it by a stable key.

Planning runs nothing and writes nothing, so a suite with a typo fails before any run starts, with
every problem of every run listed at once (:func:`plan_suite`). A :class:`RunPlan` is what the rest
of the harness works on: the fit cache (:mod:`dynbench.harness.fit_cache`), the measurement passes
(:mod:`dynbench.harness.measure`) and the execution of a run (:mod:`dynbench.harness.execution`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynbench.config import ConfigError, PluginSpec, RunSpec, build_dataclass
from dynbench.hardware.base import HARDWARE, HardwareTarget
from dynbench.methods.base import METHODS, Method
from dynbench.models.training import config_digest
from dynbench.registry import Registry, RegistryError
from dynbench.tasks.base import TASKS, Task


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
    """Instantiate ``spec`` from ``registry`` with checked options; problems go to ``errors``."""
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
