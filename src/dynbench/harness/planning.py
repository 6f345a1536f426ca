"""Plan a suite: build each run's plugins, check its options and budgets, name it by a stable key.

Planning runs nothing and writes nothing, so a suite with a typo fails before any run starts, with
every problem of every run listed at once (:func:`plan_suite`). A :class:`RunPlan` is what the rest
of the harness works on: the fit cache (:mod:`dynbench.harness.fit_cache`), the measurement passes
(:mod:`dynbench.harness.measure`) and the execution of a run (:mod:`dynbench.harness.execution`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynbench.config import ConfigError, PluginSpec, Profile, RunSpec, build_dataclass
from dynbench.file_digest import files_digest
from dynbench.hardware.base import HARDWARE, HardwareTarget
from dynbench.harness.preflight import Destinations, destination_problems
from dynbench.methods.base import METHODS, Method, thin_budgets
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


def profile_options(cls: type, options: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """``options`` under ``profile``: quick adds the plugin's ``quick_options`` the user left unset.

    A user option covers a quick option of the same key and any dotted key under it or above it
    (``train`` covers ``train.steps``), so nothing the user chose is overridden.
    """
    quick = getattr(cls, "quick_options", {}) if profile == "quick" else {}

    def unset(key: str) -> bool:
        return not any(k == key or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in options)

    return {**{k: v for k, v in quick.items() if unset(k)}, **options}


def build_plugin(registry: Registry[Any], spec: PluginSpec, errors: list[str], profile: Profile = "full") -> Any:
    """Instantiate ``spec`` from ``registry`` with checked options; problems go to ``errors``.

    Under the quick profile the plugin's ``quick_options`` fill the options the spec leaves unset
    (:func:`profile_options`).
    """
    try:
        cls = registry.get(spec.name)
    except RegistryError as exc:
        errors.append(str(exc))
        return None
    options = profile_options(cls, spec.options_dict(), profile)
    config, errs = build_dataclass(cls.Config, options, f"{registry.kind} '{spec.name}'")
    errors.extend(errs)
    if errs:
        return None
    try:
        return cls(config)
    except ValueError as exc:  # a plugin's own check of its options (e.g. overlapping splits)
        errors.append(str(exc))
        return None


def run_key(spec: RunSpec, task: Task, method: Method, hardware: HardwareTarget, budgets: Sequence[float] = ()) -> str:
    """Stable, readable key: names plus a digest of everything that defines the results.

    A quick run's key says ``quick`` and its digest covers the configs and budgets the profile made
    (so changing a plugin's quick options re-runs it); a full run's key is what it always was. A
    task that reads its backbone from files (pretrained weights) adds their content's digest:
    replacing the file at the same path re-runs, as it refits (tasks/base.py, ``backbone_key``).
    """
    identity = {**spec.identity(), "task_version": task.version, "method_version": method.version}
    sources = task.source_files()
    if sources:  # tasks that train their backbone have none and keep their keys
        identity["sources"] = files_digest(sources)
    profile = ""
    if spec.profile != "full":
        identity["profiled"] = [config_digest(task.config), config_digest(method.config), list(budgets)]
        profile = f"{spec.profile}__"
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return (
        f"{safe(spec.task.name)}__{safe(spec.method.name)}__s{spec.seed}__{safe(hardware.label)}__{profile}"
        f"{config_digest(identity)}"
    )


def plan_run(spec: RunSpec, errors: list[str]) -> RunPlan | None:
    """Validate one spec; problems go to ``errors`` (nothing is run or written).

    Checked: the spec's own values (:meth:`RunSpec.problems`), each plugin's options, the task's
    data (:meth:`Task.data_problem`) and options (:meth:`Task.problems`), the hardware, and — when
    the data is there — the budgets and the method's options against the backbone's shape
    (:meth:`Method.shape_problems`).
    """
    n_before = len(errors)
    errors.extend(spec.problems())
    task = build_plugin(TASKS, spec.task, errors, spec.profile)
    method = build_plugin(METHODS, spec.method, errors, spec.profile)
    hardware = build_plugin(HARDWARE, spec.hardware, errors, spec.profile)
    if task is not None and spec.profile == "quick" and spec.eval_samples is None:
        spec = dataclasses.replace(spec, eval_samples=type(task).quick_eval_samples)
    if task is not None:
        errors.extend(task.problems())
    data_problem = task.data_problem() if task is not None else None
    if data_problem:
        errors.append(data_problem)  # shapes may come from the data's files: checked once it is there
    if hardware is not None and (reason := hardware.unavailable_reason()):
        errors.append(f"Hardware target '{spec.hardware.label}' is not available here: {reason}.")
    budgets: tuple[float, ...] = ()
    if method is not None and task is not None and not data_problem:
        errors.extend(f"task '{task.name}': {problem}" for problem in method.shape_problems(task))
        try:
            budgets = method.resolve_budgets(spec.budgets, task.n_blocks())
        except ValueError as exc:
            errors.append(str(exc))
        if spec.profile == "quick" and spec.budgets is None:
            budgets = thin_budgets(budgets, type(method).quick_budgets)
    if len(errors) > n_before:
        return None
    return RunPlan(spec, task, method, hardware, budgets, run_key(spec, task, method, hardware, budgets))


def plan_suite(
    specs: list[RunSpec], *, destinations: Destinations | None = None, problems: Sequence[str] = ()
) -> list[RunPlan]:
    """Validate every run of a suite, and where it will write, reporting all problems at once.

    Args:
        specs: the suite's runs.
        destinations: the results folder and cache to check (writable, with room for the
            estimated output: :mod:`dynbench.harness.preflight`); ``None`` checks no folder.
        problems: problems found before (the suite's own, :meth:`SuiteSpec.problems`), listed
            first.

    Raises:
        ConfigError: with every problem found (duplicates removed, order kept).
    """
    errors: list[str] = list(problems)
    if not specs and not errors:
        errors.append("The suite has no runs. Give at least one method, task, seed and hardware target.")
    plans = [p for p in (plan_run(s, errors) for s in specs) if p is not None]
    if destinations is not None:
        errors.extend(destination_problems(plans, destinations))
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return plans
