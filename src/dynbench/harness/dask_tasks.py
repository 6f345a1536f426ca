"""The tasks of the ``dask`` executor's graph: what runs on the workers, and what travels back.

:mod:`dynbench.harness.dask_executor` builds the graph and writes the results; this module holds
the three kinds of task it submits (:func:`backbone_task`, :func:`fit_task`, :func:`run_task`),
the setup sent with each (:class:`WorkerSetup`), the cache files a task hands to the tasks after it
(:class:`Shipped`, ``cache=ship``) and a finished run's records (:class:`RunResult`). Everything
here is pickled to a worker or back, so it imports nothing from ``distributed`` at module level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dynbench.cache_dirs import model_cache_dir
from dynbench.config import runspec_from_dict
from dynbench.harness.execution import Progress, execute, failed_phase, phase, phase_listener
from dynbench.harness.executors import (
    RunFailure,
    one_line,
    run_subprocess,
)
from dynbench.harness.fit_cache import fit_path, fitted_model
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.harness.store import ResultStore
from dynbench.tasks.base import Task, backbone_key

if TYPE_CHECKING:  # distributed is optional: imported when a suite runs on Dask, not with this module
    pass

logger = logging.getLogger(__name__)

PROGRESS_TOPIC = "dynbench-progress"
"""The Dask event topic on which worker tasks report progress to the client."""

# --------------------------------------------------------------------------------------------------
# What travels between tasks and back to the client


@dataclass(frozen=True)
class Shipped:
    """Model-cache files a backbone or fit task made, for the tasks after it (``cache=ship``)."""

    files: tuple[tuple[str, bytes], ...] = ()  # (path relative to the model cache, content)


@dataclass(frozen=True)
class WorkerSetup:
    """How every task of one suite treats the worker it lands on (sent with each task)."""

    cached: bool  # False: no model cache at all (backbones and fits made afresh in every run)
    cache_dir: str | None  # the model cache on the worker; None: model_cache_dir() there
    ship: bool  # return the cache files a task made, so later tasks on other machines get them
    threads: int | None  # torch intra-op threads for each task; None: the worker's setting
    isolate: Literal["auto", "process", "worker"]  # see DaskConfig.isolate


@dataclass
class RunResult:
    """A finished run as it travels back to the client, which writes it to the results store."""

    run_key: str  # the run's key in the store
    rows: list[dict[str, Any]] = field(default_factory=list)  # tidy rows
    samples: list[dict[str, Any]] = field(default_factory=list)  # per-sample records
    timings: list[dict[str, Any]] = field(default_factory=list)  # timed-call records


class MemorySink(ResultStore):
    """A results store that keeps the one run written to it in memory, for the client to write."""

    def __init__(self, run_key: str) -> None:
        super().__init__(Path(tempfile.gettempdir()) / "dynbench-dask-unused")  # never written to
        self.result = RunResult(run_key)

    def write(
        self,
        run_key: str,
        rows: list[dict[str, Any]],
        samples: list[dict[str, Any]],
        timings: list[dict[str, Any]] | None = None,
    ) -> None:
        """Keep the run's records (see :meth:`ResultStore.write`)."""
        self.result = RunResult(run_key, list(rows), list(samples), list(timings or []))


# --------------------------------------------------------------------------------------------------
# The graph's tasks (run on the workers)

_TASK_LOCK = threading.Lock()  # one dynbench task per worker process at a time, whatever its threads


class TaskError(Exception):
    """A task's failure as it travels to the client: the phase, the one-line cause, the traceback.

    Its arguments are all it holds, so it pickles whatever the original error was.
    """

    def __init__(self, phase: str, error: str, detail: str) -> None:
        super().__init__(phase, error, detail)
        self.phase = phase  # one of execution.PHASES
        self.error = error  # executors.one_line of the original error
        self.detail = detail  # the traceback on the worker (or a fresh process's error output)

    def __str__(self) -> str:
        return self.error


@contextlib.contextmanager
def _on_worker(setup: WorkerSetup, inputs: tuple[Shipped, ...] = ()) -> Iterator[Path | None]:
    """Hold the task lock, set torch's threads, copy shipped files in; yields the model cache.

    An error inside leaves as a :class:`TaskError`.
    """
    import torch

    with _TASK_LOCK:
        try:
            if setup.threads is not None:
                torch.set_num_threads(setup.threads)
            root = None
            if setup.cached:
                root = Path(setup.cache_dir) if setup.cache_dir else model_cache_dir()
                for shipped in inputs:
                    _materialise(root, shipped)
            yield root
        except RunFailure as failure:  # a fresh process's failure, already in its three parts
            raise TaskError(failure.phase, failure.error, failure.detail) from None
        except Exception as exc:
            raise TaskError(failed_phase(exc), one_line(exc), traceback.format_exc()) from None


def _materialise(root: Path, shipped: Shipped) -> None:
    """Write the shipped files this worker lacks, each through a temp file."""
    for rel, data in shipped.files:
        path = root / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _ship(root: Path | None, setup: WorkerSetup, rel: str, what: str) -> Shipped:
    """The cache file ``rel`` as a :class:`Shipped`, when this suite ships files; else nothing.

    Raises:
        FileNotFoundError: the file is not where this module expects the cache to put it.
    """
    if root is None or not setup.ship:
        return Shipped()
    path = root / rel
    if not path.exists():
        raise FileNotFoundError(
            f"The {what} should be cached at {path}, but it is not there: the dask executor's idea of "
            "the cache layout (harness/dask_tasks.py: backbone_file, fit_file) no longer matches "
            "tasks/base.py or harness/fit_cache.py. Update it, or run with dask[cache=shared]."
        )
    return Shipped(((rel, path.read_bytes()),))


def _plan(spec: dict[str, Any]) -> RunPlan:
    """Plan the run on the worker (this also checks that the worker has the task's data)."""
    with phase("setup"):
        (plan,) = plan_suite([runspec_from_dict(spec)])
    return plan


def _relay(run_key: str) -> tuple[Progress, Callable[[str], None]]:
    """Callbacks that send a run's progress steps and phases to the client as Dask events."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # called outside a worker (the unit tests call tasks directly)
        return (lambda done, total, what: None), (lambda name: None)

    def say(done: int, total: int, what: str) -> None:
        worker.log_event(PROGRESS_TOPIC, {"run_key": run_key, "done": done, "total": total, "what": what})

    def enter(name: str) -> None:
        worker.log_event(PROGRESS_TOPIC, {"run_key": run_key, "phase": name})

    return say, enter


def pretrained(task: Task) -> bool:
    """Whether the task makes its backbone its own way (converted weights), not by training it."""
    return type(task).backbone is not Task.backbone


def backbone_file(plan: RunPlan) -> str:
    """Where :func:`dynbench.tasks.base.trained_backbone` caches the run's backbone."""
    return f"backbones/{backbone_key(plan.task, plan.spec.seed)}.pt"


def fit_file(plan: RunPlan) -> str:
    """Where :func:`dynbench.harness.fit_cache.cached_fit` caches the run's method fit."""
    return str(fit_path(plan, Path("")))


def backbone_task(spec: dict[str, Any], setup: WorkerSetup, report_to: str) -> Shipped:
    """Train (or load) the run's dense backbone into the worker's model cache.

    Raises:
        TaskError: it failed (every run after it fails with this error).
    """
    with _on_worker(setup) as root:
        plan = _plan(spec)
        say, enter = _relay(report_to)
        with phase_listener(enter), phase("backbone"):
            plan.hardware.setup()
            say(0, len(plan.budgets), "training / loading the dense backbone")
            plan.task.backbone(plan.spec.seed, cache_dir=root, device=plan.hardware.device)
            return Shipped() if pretrained(plan.task) else _ship(root, setup, backbone_file(plan), "dense backbone")


def fit_task(spec: dict[str, Any], setup: WorkerSetup, report_to: str, backbone: Shipped) -> Shipped:
    """Fit the run's method on its backbone into the worker's model cache.

    Raises:
        TaskError: it failed (every run after it fails with this error).
    """
    with _on_worker(setup, (backbone,)) as root:
        plan = _plan(spec)
        say, enter = _relay(report_to)
        with phase_listener(enter):
            with phase("backbone"):
                plan.hardware.setup()
                model = plan.task.backbone(plan.spec.seed, cache_dir=root, device=plan.hardware.device)
            with phase("fit"):
                say(0, len(plan.budgets), f"fitting {plan.method.name}")
                fitted_model(plan, model, root)
                return _ship(root, setup, fit_file(plan), f"fit of {plan.method.name}")


def run_task(spec: dict[str, Any], setup: WorkerSetup, *inputs: Shipped) -> RunResult:
    """Measure one run (its backbone and fit are in the worker's cache by now); return its records.

    Raises:
        TaskError: the run failed.
    """
    with _on_worker(setup, inputs) as root:
        plan = _plan(spec)
        say, enter = _relay(plan.run_key)
        if setup.isolate == "process" or (setup.isolate == "auto" and plan.spec.measure.memory):
            return _run_in_fresh_process(plan, root, say)
        sink = MemorySink(plan.run_key)
        with phase_listener(enter):
            execute(plan, store=sink, cache_dir=root, progress=say)
        return sink.result


def _run_in_fresh_process(plan: RunPlan, cache: Path | None, say: Progress) -> RunResult:
    """The ``subprocess`` executor's fresh process, into a temporary store read back here."""
    with tempfile.TemporaryDirectory(prefix="dynbench-dask-") as tmp:
        store = ResultStore(Path(tmp))
        run_subprocess(plan, store, cache, say)
        key = plan.run_key
        timings = _read_jsonl(store.timings_path(key))
        for t in timings:
            t.pop("run_key", None)  # the client's store adds it again
        return RunResult(key, _read_jsonl(store.rows_path(key)), _read_jsonl(store.samples_path(key)), timings)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------------
# The client
