"""The Python API that the CLI and notebooks share: run suites, load results, write reports.

Two methods on the toy text task, on 16 evaluation samples, without the timing and memory passes (a
smoke run of seconds; leave ``measure`` out to measure everything):

>>> import shutil, tempfile
>>> from pathlib import Path
>>> from dynbench.api import RunOptions, load_results, run_suite
>>> from dynbench.config import MeasureConfig, SuiteSpec, parse_plugin_list
>>> work = Path(tempfile.mkdtemp())
>>> suite = SuiteSpec(
...     methods=parse_plugin_list("dense,layer_skip"),
...     tasks=parse_plugin_list("toy-text"),
...     batch_sizes=(1,),
...     limit=16,
...     measure=MeasureConfig(timing=False, memory=False),
... )
>>> outcome = run_suite(suite, RunOptions(out=work / "results", cache_dir=work / "cache"))
>>> len(outcome.done), outcome.failed
(2, {})
>>> rows, samples = load_results(work / "results")
>>> sorted(rows["method"].unique())
['dense', 'layer_skip']
>>> shutil.rmtree(work)

``cache_dir`` left out means :func:`dynbench.cache_dirs.model_cache_dir` (``$DYNBENCH_CACHE``, else
the user's cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dynbench.cache_dirs import model_cache_dir
from dynbench.config import PluginSpec, SuiteSpec
from dynbench.hardware.base import HARDWARE
from dynbench.harness.executors import RunProgress, SuiteOutcome, run_plans
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.harness.store import ResultStore
from dynbench.methods.base import METHODS
from dynbench.tasks.base import TASKS


def default_tasks() -> tuple[PluginSpec, ...]:
    """Each modality's default task."""
    return tuple(PluginSpec(n) for n in TASKS.names() if TASKS.get(n).is_default)


def default_suite() -> SuiteSpec:
    """Every registered method on each modality's default task, seed 0, on the CPU."""
    return SuiteSpec(methods=tuple(PluginSpec(n) for n in METHODS.names()), tasks=default_tasks(), name="default")


def plan(suite: SuiteSpec) -> list[RunPlan]:
    """Validate a suite without running anything.

    Raises:
        ConfigError: every problem found.
    """
    return plan_suite(suite.runs())


@dataclass(frozen=True)
class RunOptions:
    """How to execute a suite."""

    out: Path = Path("results")  # results directory
    cache_dir: Path | None = None  # backbone/fit cache; None = model_cache_dir() ($DYNBENCH_CACHE)
    executor: str = "inline"  # inline | subprocess
    force: bool = False  # re-run finished runs


def run_suite(
    suite: SuiteSpec, options: RunOptions = RunOptions(), progress: RunProgress | None = None
) -> SuiteOutcome:
    """Validate, then run every run of ``suite`` that is not already in the results directory.

    Raises:
        ConfigError: the suite is invalid (nothing is run or written).
    """
    plans = plan(suite)
    cache = options.cache_dir or model_cache_dir()
    return run_plans(
        plans,
        store=ResultStore(options.out),
        cache_dir=cache,
        executor=options.executor,
        force=options.force,
        progress=progress,
    )


def load_results(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, samples)`` of every finished run under ``results_dir``."""
    store = ResultStore(results_dir)
    return store.rows(), store.samples()


def write_report(results_dir: Path, out_dir: Path) -> list[Path]:
    """Pareto plots, histograms, tables and an index page for the results under ``results_dir``.

    Raises:
        ValueError: no results there.
    """
    from dynbench.analysis.report import write_report as _write

    rows, samples = load_results(results_dir)
    if rows.empty:
        raise ValueError(f"No result rows under {results_dir}. Run `bench run --out {results_dir}` first.")
    return _write(rows, samples, out_dir)


def export(results_dir: Path, path: Path, fmt: str) -> Path:
    """All rows as one CSV or Parquet table."""
    return ResultStore(results_dir).export(path, fmt)


def plugin_table(kind: str) -> list[dict[str, str]]:
    """Rows for ``bench ls``: one dict per registered plugin.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "methods":
        return [_method_info(n) for n in METHODS.names()]
    if kind == "tasks":
        return [_task_info(n) for n in TASKS.names()]
    if kind == "hardware":
        return [_hardware_info(n) for n in HARDWARE.names()]
    raise ValueError(f"Unknown plugin kind '{kind}'. Use one of: methods, tasks, hardware.")


def _method_info(name: str) -> dict[str, str]:
    cls = METHODS.get(name)
    return {
        "name": name,
        "aliases": ", ".join(METHODS.aliases_of(name)),
        "version": cls.version,
        "budgets": cls.budget_doc,
        "paper": cls.paper or "",
        "note": "reconstruction" if cls.reconstructed else "",
    }


def _task_info(name: str) -> dict[str, str]:
    cls = TASKS.get(name)
    t = cls()
    return {
        "name": name,
        "modality": cls.modality,
        "default": "yes" if cls.is_default else "",
        "size": cls.size,
        "data": t.data_status(),
        "description": cls.description,
    }


def _hardware_info(name: str) -> dict[str, str]:
    target = HARDWARE.get(name)()
    reason = target.unavailable_reason()
    return {"name": name, "available": "yes" if reason is None else f"no: {reason}"}
