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

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dynbench.cache_dirs import model_cache_dir
from dynbench.config import PluginSpec, SuiteSpec
from dynbench.hardware.base import HARDWARE
from dynbench.harness.dask_executor import parallel_runs, parse_executor, run_dask
from dynbench.harness.eta import SuiteEta
from dynbench.harness.executors import RunProgress, SuiteOutcome, run_plans
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.harness.preflight import Destinations, write_failure
from dynbench.harness.store import ResultStore, export_format
from dynbench.methods.base import METHODS
from dynbench.tasks.base import TASKS

logger = logging.getLogger(__name__)


def default_tasks() -> tuple[PluginSpec, ...]:
    """Each modality's default task."""
    return tuple(PluginSpec(n) for n in TASKS.names() if TASKS.get(n).is_default)


def default_suite() -> SuiteSpec:
    """Every registered method, studies aside (``in_default_suite``), on each default task."""
    methods = tuple(PluginSpec(n) for n in METHODS.names() if METHODS.get(n).in_default_suite)
    return SuiteSpec(methods=methods, tasks=default_tasks(), name="default")


def plan(suite: SuiteSpec, destinations: Destinations | None = None) -> list[RunPlan]:
    """Validate a suite, and the folders it will write when given, without running anything.

    Raises:
        ConfigError: every problem found.
    """
    return plan_suite(suite.runs(), destinations=destinations, problems=suite.problems())


@dataclass(frozen=True)
class RunOptions:
    """How to execute a suite."""

    out: Path = Path("results")  # results directory
    cache_dir: Path | None = None  # backbone/fit cache; None = model_cache_dir() ($DYNBENCH_CACHE)
    executor: str = "inline"  # inline | subprocess | dask | dask[address=…,workers=…] (parse_executor)
    force: bool = False  # re-run finished runs


def run_suite(
    suite: SuiteSpec, options: RunOptions = RunOptions(), progress: RunProgress | None = None
) -> SuiteOutcome:
    """Validate, then run every run of ``suite`` that is not already in the results directory.

    Raises:
        ConfigError: the suite is invalid (nothing is run or written).
    """
    cache = options.cache_dir or model_cache_dir()
    plans = plan(suite, Destinations(options.out, cache))
    name, dask = parse_executor(options.executor)
    if dask is not None:
        return run_dask(
            plans, store=ResultStore(options.out), cache_dir=cache, config=dask, force=options.force, progress=progress
        )
    return run_plans(
        plans,
        store=ResultStore(options.out),
        cache_dir=cache,
        executor=name,
        force=options.force,
        progress=progress,
    )


def load_results(results_dir: Path, *, strict: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, samples)`` of every finished run under ``results_dir``.

    A bad file (truncated, foreign) is skipped with a warning naming it; with ``strict`` it raises
    :class:`dynbench.harness.store.BadResultFile`.
    """
    store = ResultStore(results_dir, strict=strict)
    return store.rows(), store.samples()


def write_report(results_dir: Path, out_dir: Path, *, strict: bool = False) -> list[Path]:
    """Pareto plots, histograms, tables and an index page for the results under ``results_dir``.

    Runs that failed and have not finished since are listed in a "Failed runs" section. The report
    is written into a temporary folder inside ``out_dir`` and its files are then renamed into
    place, index pages last; a write that fails (a full disk) removes the temporary folder and
    leaves the files of an earlier report as they were.

    Raises:
        ValueError: no results there; with ``strict``, a bad file there (``BadResultFile``).
        OSError: ``out_dir`` cannot be written, or the write failed.
    """
    return _report_from(ResultStore(results_dir, strict=strict), out_dir)


def _report_from(store: ResultStore, out_dir: Path) -> list[Path]:
    """:func:`write_report` from a store (whose parsed files it reuses when asked again)."""
    from dynbench.analysis.report import write_report as _write

    rows, samples, failures = store.rows(), store.samples(), store.failures()
    if rows.empty:
        failed = f" ({len(failures)} run(s) failed: see {store.root / 'failures'})" if failures else ""
        raise ValueError(f"No result rows under {store.root}{failed}. Run `bench run --out {store.root}` first.")
    return _staged(Path(out_dir), lambda stage: _write(rows, samples, stage, failures=failures))


def _staged(out_dir: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Run ``write`` into a temporary folder inside ``out_dir``, then rename its files into place.

    Returns the files' final paths, in ``write``'s order (index pages last), so a reader never sees
    a half-written file and a failed write leaves no temporary file behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".report-", suffix=".tmp", dir=out_dir))  # same disk: renames are atomic
    try:
        final = []
        for path in write(stage):
            target = out_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class LiveReport:
    """The report of a results folder, rewritten while a suite runs, not only at its end.

    :meth:`update` rewrites it after a run finished, unless the last rewrite is recent: a rewrite
    waits at least ``min_interval_s`` and ``cost_factor`` times the last rewrite's duration, so
    plotting never takes more than about 1/``cost_factor`` of the suite's time. One store serves
    every rewrite, so a finished run's files are parsed once (the store keeps what it read).

    Args:
        results_dir: the results folder.
        out_dir: the report folder.
        min_interval_s: the shortest time between two rewrites.
        cost_factor: how many rewrite durations must pass before the next one.
    """

    def __init__(self, results_dir: Path, out_dir: Path, *, min_interval_s: float = 30.0, cost_factor: float = 20.0):
        self.store = ResultStore(results_dir)
        self.out_dir = out_dir
        self.min_interval_s, self.cost_factor = min_interval_s, cost_factor
        self.next_at = 0.0  # monotonic time of the earliest next rewrite (0: the first run rewrites)
        self.files: list[Path] = []
        self.reported: list[str] = []  # the finished runs the last rewrite showed

    def update(self, *, final: bool = False) -> list[Path]:
        """Rewrite the report now when due (``final``: unless it shows every finished run already).

        Returns the files of the last rewrite. A rewrite that fails mid-suite (a bad row, a full
        disk) is logged and the suite goes on; the final one raises.

        Raises:
            ValueError: the final rewrite failed: bad rows, or (as one line saying where the results
                are kept) a write error such as a full disk.
        """
        runs = self.store.run_keys()
        if (not final and time.monotonic() < self.next_at) or (final and self.files and runs == self.reported):
            return self.files
        started = time.monotonic()
        try:
            self.files = _report_from(self.store, self.out_dir)
            self.reported = runs
        except (ValueError, OSError) as exc:
            if final and isinstance(exc, OSError):  # the results are safe: say so in one line, no traceback
                raise ValueError(
                    f"{write_failure(self.out_dir, exc, '--report')} The results are kept in {self.store.root}: "
                    f"`bench report {self.store.root} --out {self.out_dir}` writes the report later."
                ) from exc
            if final:
                raise
            logger.warning("could not update the report in %s: %s", self.out_dir, exc)
        took = time.monotonic() - started
        self.next_at = time.monotonic() + max(self.min_interval_s, self.cost_factor * took)
        return self.files


def finished_runs(plans: list[RunPlan], results_dir: Path) -> set[str]:
    """Run keys of ``plans`` already in ``results_dir`` (a resumed suite skips them)."""
    store = ResultStore(results_dir)
    return {p.run_key for p in plans if store.has(p.run_key)}


def estimate(plans: list[RunPlan], cache_dir: Path | None, done: set[str], executor: str = "inline") -> SuiteEta:
    """The time-left estimate of a suite (:class:`dynbench.harness.eta.SuiteEta`).

    Args:
        plans: the suite's runs.
        cache_dir: the cache the runs use; ``None`` = :func:`dynbench.cache_dirs.model_cache_dir`.
        done: run keys that will be skipped.
        executor: how the suite runs (``RunOptions.executor``): a local Dask cluster's workers
            share the work left.
    """
    _, dask = parse_executor(executor)
    parallel = 1 if dask is None else parallel_runs(dask)
    return SuiteEta(plans, cache_dir or model_cache_dir(), done, parallel=parallel)


def export(results_dir: Path, path: Path, fmt: str | None = None, *, strict: bool = False) -> Path:
    """All rows as one CSV or Parquet table; a bad file is skipped (raised with ``strict``).

    Args:
        results_dir: the results folder.
        path: the file to write, replaced through a temporary file (none is left on failure).
        fmt: ``csv`` or ``parquet``; ``None`` = from ``path``'s extension (``.csv``, ``.parquet``,
            ``.pq``).
        strict: raise on a bad file under ``results_dir`` instead of skipping it.

    Raises:
        ValueError: unknown or mismatched format (checked before anything is read), no rows, or
            with ``strict`` a bad file.
        OSError: the write failed.
    """
    fmt = export_format(path, fmt)
    return ResultStore(results_dir, strict=strict).export(path, fmt)


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
        "note": "; ".join(
            n
            for n, on in (
                ("reconstruction", cls.reconstructed),
                ("study: not in the default suite", not cls.in_default_suite),
            )
            if on
        ),
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
    available = "yes" if reason is None else f"no: {reason}"
    kind = "modeled (priced, not timed)" if target.modeled else "measured"
    checked = ""  # the measured rows a report sets beside a modeled target's (`analysis.roofline_check`)
    if target.checked_against is not None:
        against, piece = target.checked_against
        checked = f"{against} ({piece})" if piece else against
    return {"name": name, "available": available, "kind": kind, "checked against": checked}
