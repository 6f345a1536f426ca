"""The ``dask`` executor: a suite as a Dask task graph, on a local cluster or an existing one.

``bench run --executor dask`` starts a ``distributed.LocalCluster`` of worker processes on this
machine; ``--executor 'dask[address=tcp://host:8786]'`` sends the graph to a running scheduler
instead. The graph has three kinds of task (defined in :mod:`dynbench.harness.dask_tasks`):

1. one **backbone** task per (task configuration, seed): trains the dense backbone, or loads it
   from the model cache;
2. one **fit** task per distinct method fit (backbone, method, version, fit options), after its
   backbone: runs :func:`dynbench.harness.fit_cache.fitted_model`, which caches what the fit made.
   Methods that learn nothing have none;
3. one **run** task per run not yet in the results, after its backbone and fit: the measurement
   passes of :func:`dynbench.harness.execution.execute`, whose rows, per-sample records and timed
   calls travel back to the client as the task's result.

The client writes the results store as each run's result arrives, so the workers need no access to
the results folder. The model cache (backbones, fits) is, per ``cache``:

- ``shared`` (the default on a local cluster): every worker uses the client's cache folder, and the
  graph's order makes each run find its backbone and fit there;
- ``ship`` (the default with an ``address``): each worker keeps its own cache
  (:func:`dynbench.cache_dirs.model_cache_dir` on that machine), and a backbone or fit task
  returns the checkpoint file it made, which the tasks after it write into their own cache before
  they start.
  A pretrained backbone (a task that overrides ``Task.backbone``, e.g. ``smollm2``) is not shipped:
  each worker converts it from its own copy of the task's data, which every worker needs anyway.

A worker that finds nothing in its cache (``shared`` on machines that do not share a disk) trains
or fits again: the results stay right, the work is done twice.

Isolation: a worker process runs one task at a time (a local cluster has one thread per worker; on
an existing cluster a per-process lock serialises tasks of this executor), so a run's timing and
memory passes never share their process with another task. Runs that measure memory go further,
as ``bench run`` does when it picks the ``subprocess`` executor: each runs in a fresh Python process
started by its worker (``isolate=auto``). Workers on one machine still share its cores and memory
bandwidth: for timings to quote, run one worker per machine, or give each worker its own cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dynbench.config import ConfigError, build_dataclass, parse_plugin, runspec_to_dict
from dynbench.harness.claims import Claim
from dynbench.harness.dask_tasks import (
    PROGRESS_TOPIC,
    RunResult,
    TaskError,
    WorkerSetup,
    backbone_task,
    fit_file,
    fit_task,
    run_task,
)
from dynbench.harness.execution import Progress
from dynbench.harness.executors import (
    EXECUTORS,
    RunFailure,
    RunProgress,
    SuiteOutcome,
    claim_run,
    one_line,
    store_failure,
)
from dynbench.harness.planning import RunPlan
from dynbench.harness.store import ResultStore
from dynbench.tasks.base import backbone_key
from dynbench.validation import check_choices, check_range

if TYPE_CHECKING:  # distributed is optional: imported when a suite runs on Dask, not with this module
    from distributed import Client, Future

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often the client looks for finished runs and progress events while it waits


@dataclass(frozen=True)
class DaskConfig:
    """The options of ``--executor 'dask[key=value,…]'``."""

    # An existing scheduler (tcp://host:8786); None starts a LocalCluster on this machine.
    address: str | None = None
    # LocalCluster worker processes; None: one per core this process may use.
    workers: int | None = None
    # torch intra-op threads of each task; None: cores ÷ workers on a LocalCluster, the worker's own
    # setting on an existing cluster. A hardware target's threads (cpu[threads=N]) win for its runs.
    threads: int | None = None
    # Where backbones and fits live (see the module docstring); auto: shared on a LocalCluster, ship
    # with an address (its workers may not see this machine's disk).
    cache: Literal["auto", "shared", "ship"] = "auto"
    # process: each run in a fresh process started by its worker (clean memory figures); worker: in
    # the worker process itself; auto: process for runs that measure memory.
    isolate: Literal["auto", "process", "worker"] = "auto"
    # Seconds to wait for the scheduler at `address` (and for a LocalCluster's workers to start).
    connect_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.workers is not None:
            check_range("dask option workers", self.workers, 1, advice="Use e.g. dask[workers=2].")
        if self.threads is not None:
            check_range("dask option threads", self.threads, 1, advice="Use e.g. dask[threads=1].")
        check_range("dask option connect_timeout_s", self.connect_timeout_s, 0, low_open=True, advice="Use 60.")
        if self.address is not None and self.workers is not None:
            raise ValueError(
                f"dask option workers={self.workers} applies to the local cluster only, but address="
                f"{self.address} names an existing one, whose workers are started with `dask worker`. "
                "Drop one of the two."
            )


def parse_executor(text: str) -> tuple[str, DaskConfig | None]:
    """``inline``, ``subprocess``, ``dask`` or ``dask[key=value,…]`` → (name, Dask options or None).

    Raises:
        ConfigError: an unknown executor, an option for one that takes none, or a bad Dask option.
    """
    spec = parse_plugin(text)
    if spec.name not in EXECUTORS:
        raise ConfigError([f"Unknown executor '{text}'. Use one of: {', '.join(EXECUTORS)} (dask[key=value,…])."])
    if spec.name != "dask":
        if spec.options:
            raise ConfigError([f"Executor '{spec.name}' takes no options, got '{text}'. Write {spec.name}."])
        return spec.name, None
    config, errors = build_dataclass(DaskConfig, spec.options_dict(), "executor 'dask'")
    if errors:
        raise ConfigError(errors)
    return "dask", config


def run_dask(
    plans: list[RunPlan],
    *,
    store: ResultStore,
    cache_dir: Path | None,
    config: DaskConfig,
    force: bool = False,
    progress: RunProgress | None = None,
) -> SuiteOutcome:
    """Run every plan not already in the store (all with ``force``) as one Dask graph.

    As with :func:`dynbench.harness.executors.run_plans`: each run is claimed first (here, by the
    client, which writes its results); a run a live process holds is left to it and looked at again
    once the graph is done; a failed run leaves a failure record and stays not done. A failed
    backbone or fit task fails the runs after it, each with that task's error and phase. The
    cluster (a LocalCluster started here) is closed when the suite ends, however it ends.

    Raises:
        ValueError: dask or distributed is not installed, or the scheduler cannot be reached
            (nothing has been written then).
    """
    outcome = SuiteOutcome()
    if not force and all(store.has(p.run_key) for p in plans):
        outcome.skipped.extend(p.run_key for p in plans)
        return outcome
    claims: dict[str, Claim] = {}
    with connect(config) as (client, resolved):  # first: a cluster that cannot be had leaves no trace
        setup = WorkerSetup(
            cached=cache_dir is not None,
            cache_dir=None if resolved.ship else (cache_dir and str(cache_dir)),
            ship=resolved.ship,
            threads=resolved.threads,
            isolate=config.isolate,
        )
        graph = Graph(client, store, outcome, claims, progress)
        try:
            graph.run(_claim(plans, store, force, outcome, claims), setup)
            second = [p for p in plans if p.run_key in outcome.elsewhere]
            for plan in second:
                del outcome.elsewhere[plan.run_key]  # a second look: finished, or left by a process that died
            graph.run(_claim(second, store, False, outcome, claims), setup)
        finally:
            for claim in claims.values():
                claim.release()
    return outcome


def _claim(
    plans: list[RunPlan], store: ResultStore, force: bool, outcome: SuiteOutcome, claims: dict[str, Claim]
) -> list[RunPlan]:
    """Claim the runs to compute (into ``claims``) and return them; the rest go to ``outcome``."""
    todo = []
    for plan in plans:
        claim = claim_run(plan, store, force, outcome)
        if claim is not None:
            claims[plan.run_key] = claim
            todo.append(plan)
    return todo


class Graph:
    """Submits runs to the cluster as a task graph and records each as its result arrives.

    The display (``progress``) follows one run at a time, as with the other executors: runs are
    shown in the order they were submitted, the oldest unfinished one live (its progress steps as
    they come), each told ``done`` once it and every run before it have finished. The store and the
    failure records are written as each result arrives, whatever the order.
    """

    def __init__(
        self,
        client: Client,
        store: ResultStore,
        outcome: SuiteOutcome,
        claims: dict[str, Claim],
        progress: RunProgress | None,
    ) -> None:
        self.client, self.store, self.outcome, self.claims = client, store, outcome, claims
        self.progress = progress
        self.callbacks: dict[str, Progress] = {}  # run key → its progress callback, made when shown
        self.phases: dict[str, str] = {}  # run key → the phase it is in (for a worker that dies)
        self.order: list[RunPlan] = []  # this round's runs in the order they are shown
        self.shown = 0  # index in `order` of the run shown live now
        self.ended: dict[str, bool] = {}  # run key → stored (True) or failed (False)

    def run(self, plans: list[RunPlan], setup: WorkerSetup) -> None:
        """Run the claimed ``plans``: each stored or recorded as failed, its claim released."""
        if not plans:
            return
        events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.client.subscribe_topic(PROGRESS_TOPIC, lambda event: events.put(event[1]))
        pending = submit_graph(self.client, plans, setup)
        self.order, self.shown = list(pending.values()), 0
        by_key = {plan.run_key: plan for plan in plans}
        try:
            while pending:
                while not events.empty():
                    self._event(events.get(), by_key)
                finished = [f for f in pending if f.done()]
                for future in finished:
                    self._finish(pending.pop(future), future)
                if pending and not finished:
                    time.sleep(POLL_S)
        finally:
            self.client.cancel(list(pending))  # an interrupted suite leaves no work queued on the cluster
            self.client.unsubscribe_topic(PROGRESS_TOPIC)

    def _callback(self, plan: RunPlan) -> Progress:
        if plan.run_key not in self.callbacks:
            self.callbacks[plan.run_key] = self.progress(plan) if self.progress else (lambda done, total, what: None)
        return self.callbacks[plan.run_key]

    def _event(self, msg: dict[str, Any], by_key: dict[str, RunPlan]) -> None:
        """Relay a worker's progress step to the display (on this thread), or note its phase."""
        plan = by_key.get(msg.get("run_key", ""))
        if plan is None:
            return
        if "phase" in msg:
            self.phases[plan.run_key] = msg["phase"]
        elif self.shown < len(self.order) and plan is self.order[self.shown] and msg["what"] != "done":
            self._callback(plan)(msg["done"], msg["total"], msg["what"])  # "done" comes from _advance

    def _finish(self, plan: RunPlan, future: Future) -> None:
        """Store a finished run, or record its failure; release its claim either way."""
        key = plan.run_key
        try:
            try:
                result: RunResult = future.result()
            except TaskError as exc:
                raise RunFailure(exc.phase, exc.error, exc.detail) from None
            except Exception as exc:  # the worker died (KilledWorker), the task was cancelled …
                detail = "".join(traceback.format_exception(exc))
                raise RunFailure(self._lost_phase(key, exc), one_line(exc), detail) from None
            try:
                self.store.write(key, result.rows, result.samples, result.timings)
            except Exception as exc:
                raise RunFailure("store", one_line(exc), traceback.format_exc()) from None
        except RunFailure as failure:  # one broken run must not lose the others' results
            self.outcome.failed[key] = store_failure(plan, self.store, failure)
            self.ended[key] = False
        else:
            self.store.clear_failure(key)
            self.outcome.done.append(key)
            self.ended[key] = True
        finally:
            claim = self.claims.pop(key, None)
            if claim is not None:
                claim.release()
        self._advance()

    def _advance(self) -> None:
        """Tell the display about every finished run up to the first unfinished one, in order."""
        while self.shown < len(self.order) and self.order[self.shown].run_key in self.ended:
            plan = self.order[self.shown]
            say = self._callback(plan)  # a failed run says nothing more: the display marks it failed
            if self.ended[plan.run_key]:
                say(len(plan.budgets), len(plan.budgets), "done")
            self.shown += 1

    def _lost_phase(self, run_key: str, exc: BaseException) -> str:
        """The phase of a run whose task died: the dead task's kind, else the run's last phase."""
        dead = str(getattr(exc, "task", ""))
        for kind in ("backbone", "fit"):
            if dead.startswith(f"dynbench-{kind}-"):
                return kind
        return self.phases.get(run_key, "setup")


def submit_graph(client: Client, plans: list[RunPlan], setup: WorkerSetup) -> dict[Future, RunPlan]:
    """Submit backbone, fit and run tasks; returns each run task's future with its plan."""
    token = uuid.uuid4().hex[:8]  # task keys stay unique when one cluster serves several suites
    backbones: dict[str, Future] = {}
    fits: dict[str, Future] = {}
    runs: dict[Future, RunPlan] = {}
    for plan in plans:
        spec = runspec_to_dict(plan.spec)
        inputs: list[Future] = []
        if setup.cached:
            bkey = backbone_key(plan.task, plan.spec.seed)
            if bkey not in backbones:
                backbones[bkey] = client.submit(
                    backbone_task, spec, setup, plan.run_key, key=f"dynbench-backbone-{bkey}-{token}"
                )
            inputs.append(backbones[bkey])
            if plan.method.learns():
                fkey = Path(fit_file(plan)).stem
                if fkey not in fits:
                    fits[fkey] = client.submit(
                        fit_task, spec, setup, plan.run_key, backbones[bkey], key=f"dynbench-fit-{fkey}-{token}"
                    )
                inputs.append(fits[fkey])
        runs[client.submit(run_task, spec, setup, *inputs, key=f"dynbench-run-{plan.run_key}-{token}")] = plan
    return runs


def usable_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_runs(config: DaskConfig) -> int:
    """Runs that go at once on ``config``'s cluster, for the time estimate.

    A LocalCluster's workers (one run each); 1 for an existing cluster, whose size is only known
    once connected: its estimate is the serial one, an upper bound.
    """
    return 1 if config.address is not None else config.workers or usable_cores()


@dataclass(frozen=True)
class Resolved:
    """The choices of a :class:`DaskConfig` that depend on the cluster."""

    ship: bool  # cache=ship, or auto with an address
    threads: int | None  # torch threads per task


@contextlib.contextmanager
def connect(config: DaskConfig) -> Iterator[tuple[Client, Resolved]]:
    """A client of the scheduler at ``config.address``, or of a LocalCluster started here.

    Raises:
        ValueError: dask or distributed is missing, or the scheduler cannot be reached.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ValueError(
            f"The dask executor needs dask and distributed ({exc}). Install them with "
            "`pip install 'dynbench[dask]'`, or use --executor inline."
        ) from None
    ship = config.cache == "ship" or (config.cache == "auto" and config.address is not None)
    if config.address is not None:
        try:
            client = Client(config.address, timeout=config.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ValueError(
                f"Cannot reach the Dask scheduler at {config.address} within {config.connect_timeout_s:g} s "
                f"({type(exc).__name__}: {exc}). Start it (`dask scheduler`, then `dask worker "
                f"{config.address} --nthreads 1`), or leave address out for a local cluster."
            ) from None
        try:
            yield client, Resolved(ship, config.threads)
        finally:
            client.close()
        return
    cores = usable_cores()
    workers = config.workers or cores
    with _quiet_distributed() as level:
        # Workers start with distributed's own log level; bench's (-v or not) decides here too.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": level}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,  # one task per worker process at a time: runs never share a process
                processes=True,
                host="127.0.0.1",  # the scheduler and workers listen on loopback only
                dashboard_address=None,  # the dashboard needs bokeh; run a cluster of your own for it
                # The scheduler's HTTP routes on a free loopback port: the default, 8787, may
                # be taken (two suites at once), which distributed answers with a warning.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
        try:
            client = Client(cluster, timeout=config.connect_timeout_s)
            try:
                yield client, Resolved(ship, config.threads or max(1, cores // workers))
            finally:
                client.close()
        finally:
            # A worker slower than 4 s to exit (a loaded machine) is killed with a warning; by now
            # every result is in, so that is no news for the user.
            nanny = logging.getLogger("distributed.nanny")
            before = nanny.level
            nanny.setLevel(max(logging.ERROR, before))
            try:
                cluster.close()
            finally:
                nanny.setLevel(before)


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[str]:
    """Log distributed at bench's level (WARNING, INFO with ``-v``), not at its chatty INFO.

    Yields the level's name for the worker processes.
    """
    level = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    log = logging.getLogger("distributed")
    before = log.level
    log.setLevel(level)
    try:
        yield logging.getLevelName(level).lower()
    finally:
        log.setLevel(before)
