"""Executors run a suite: ``inline`` in this process, or ``subprocess``, one fresh process per run.

A fresh process per run keeps memory figures clean (the process footprint is that run's alone) and
isolates crashes. The results store is the only shared state: before computing a run the sweep
claims it there (:meth:`ResultStore.claim`), so sweeps sharing a results folder never compute a run
twice. A run that fails leaves a failure record (phase, one-line error, the path of a log holding
the traceback) that ``bench report`` lists, and stays not done, so the next sweep retries it.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dynbench.config import RunSpec, runspec_from_dict, runspec_to_dict
from dynbench.harness.claims import Claim
from dynbench.harness.execution import Progress, execute, failed_phase, phase, phase_listener
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.harness.store import ResultStore

logger = logging.getLogger(__name__)

# inline and subprocess run here (run_plans); dask runs the suite as a task graph on a cluster
# (harness/dask_executor.py: run_dask, which api.run_suite picks for it).
EXECUTORS = ("inline", "subprocess", "dask")

RunProgress = Callable[[RunPlan], Progress]
"""Given a run, the callback that receives its budget progress."""


@dataclass
class SuiteOutcome:
    """What happened to each run of a suite."""

    done: list[str] = field(default_factory=list)  # run keys measured now
    skipped: list[str] = field(default_factory=list)  # run keys already in the store
    failed: dict[str, str] = field(default_factory=dict)  # run key → one-line cause, phase and log path
    elsewhere: dict[str, str] = field(default_factory=dict)  # run key → the live process computing it now


class RunFailure(Exception):
    """A run failed: where, the one-line cause, and the full detail for the log."""

    def __init__(self, phase: str, error: str, detail: str) -> None:
        super().__init__(error)
        self.phase = phase  # one of execution.PHASES
        self.error = error  # one line: exception type and the first line of its message
        self.detail = detail  # the traceback (inline) or the worker's whole error output (subprocess)


ERROR_CHARS = 400  # a one-line cause longer than this is cut: the log holds the whole message


def one_line(exc: BaseException) -> str:
    """``Type: the first problem of the message (+N more)``, at most :data:`ERROR_CHARS` characters.

    An error that lists its problems (``ConfigError.errors``), or whose message opens with a header
    line ending in ``:`` ("Invalid configuration (3 problem(s)):") followed by one problem per line,
    shows the first problem and how many more there are; the header alone would hide the cause. An
    overlong problem is cut, never the ``(+N more)``.
    """
    name = type(exc).__name__
    listed = getattr(exc, "errors", None)
    if isinstance(listed, list) and listed and all(isinstance(e, str) for e in listed):
        problems = [" ".join(e.split()) for e in listed]
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if not lines:
            return name
        header = len(lines) > 1 and lines[0].endswith(":")
        problems = [line.lstrip("-*• ").strip() for line in lines[1:]] if header else lines[:1]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    text = f"{name}: {problems[0]}"
    room = ERROR_CHARS - len(more)
    return (text if len(text) <= room else text[: room - 1] + "…") + more


def run_inline(plan: RunPlan, store: ResultStore, cache_dir: Path | None, progress: Progress) -> None:
    """Run in this process.

    Raises:
        RunFailure: the run failed (the original error is its cause).
    """
    try:
        execute(plan, store=store, cache_dir=cache_dir, progress=progress)
    except Exception as exc:
        raise RunFailure(failed_phase(exc), one_line(exc), traceback.format_exc()) from exc


def run_subprocess(plan: RunPlan, store: ResultStore, cache_dir: Path | None, progress: Progress) -> None:
    """Run in a fresh Python process; progress, phases and failure arrive as lines on its stdout.

    The worker's error output goes to an anonymous temporary file (a pipe read only at the end could
    fill and block the worker); on failure all of it becomes the run's log.

    Raises:
        RunFailure: the worker failed or died; the cause is its one-line error, else its exit code.
    """
    job = {
        "parent_pid": os.getpid(),
        "spec": runspec_to_dict(plan.spec),
        "store": str(store.root),
        "cache_dir": cache_dir and str(cache_dir),
    }
    current, failure = "setup", None
    with (
        tempfile.TemporaryFile("w+") as err,
        subprocess.Popen(
            [sys.executable, "-m", "dynbench.harness.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        stdout, stdin = proc.stdout, proc.stdin
        if stdout is None or stdin is None:  # cannot happen with PIPE; keeps type checkers calm
            raise RuntimeError("worker pipes were not created")
        stdin.write(json.dumps(job))
        stdin.close()
        for line in stdout:
            kind, _, payload = line.partition(" ")
            if kind == "PROGRESS":
                msg = json.loads(payload)
                progress(msg["done"], msg["total"], msg["what"])
            elif kind == "PHASE":
                current = payload.strip()
            elif kind == "FAILED":
                failure = json.loads(payload)
        code = proc.wait()
        err.seek(0)
        detail = err.read()
    if code == 0:
        return
    if failure is not None:
        raise RunFailure(failure["phase"], failure["error"], detail)
    if code < 0:
        name = signal.Signals(-code).name
        cause = f"the worker was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        last = [line for line in detail.splitlines() if line.strip()][-1:]
        cause = f"the worker exited with code {code}" + (f": {last[0].strip()}" if last else "")
    raise RunFailure(current, cause[:ERROR_CHARS], detail)


def run_plans(
    plans: list[RunPlan],
    *,
    store: ResultStore,
    cache_dir: Path | None,
    executor: str = "inline",
    force: bool = False,
    progress: RunProgress | None = None,
) -> SuiteOutcome:
    """Run every plan not already in the store (all of them with ``force``).

    A failed run does not stop the rest: it leaves a failure record and stays not done. Each run is
    claimed first; a run a live process holds is left to it (``outcome.elsewhere``) and looked at
    again after the others: finished by then, it counts as skipped; its holder died, it runs here.

    Raises:
        ValueError: unknown executor name.
    """
    runners = {"inline": run_inline, "subprocess": run_subprocess}
    if executor not in runners:
        raise ValueError(f"Unknown executor '{executor}'. Available: {', '.join(EXECUTORS)}.")
    outcome = SuiteOutcome()
    for plan in plans:
        _run_claimed(plan, store, force, outcome, lambda p, cb: runners[executor](p, store, cache_dir, cb), progress)
    for plan in {p.run_key: p for p in plans if p.run_key in outcome.elsewhere}.values():
        del outcome.elsewhere[plan.run_key]  # a second look: finished, or left by a process that died
        _run_claimed(plan, store, False, outcome, lambda p, cb: runners[executor](p, store, cache_dir, cb), progress)
    return outcome


def _run_claimed(
    plan: RunPlan,
    store: ResultStore,
    force: bool,
    outcome: SuiteOutcome,
    runner: Callable[[RunPlan, Progress], None],
    progress: RunProgress | None,
) -> None:
    """Claim one run, run it unless finished or held elsewhere, record how it went, release it."""
    key = plan.run_key
    claim = claim_run(plan, store, force, outcome)
    if claim is None:
        return
    try:
        cb = progress(plan) if progress else (lambda done, total, what: None)
        try:
            runner(plan, cb)
        except RunFailure as failure:  # one broken run must not lose the others' results
            outcome.failed[key] = store_failure(plan, store, failure)
            return
        store.clear_failure(key)
        outcome.done.append(key)
    finally:
        claim.release()


def claim_run(plan: RunPlan, store: ResultStore, force: bool, outcome: SuiteOutcome) -> Claim | None:
    """Claim a run to compute; ``None`` after recording in ``outcome`` why not.

    A finished run is ``skipped``, one held by a live process goes to ``elsewhere``, an unclaimable
    one is ``failed``. The store is looked at again after the claim: another sweep may have finished
    the run in between.
    """
    key = plan.run_key
    if store.has(key) and not force:
        outcome.skipped.append(key)
        return None
    try:
        claim = store.claim(key)
    except OSError as exc:
        outcome.failed[key] = f"{plan.title}: cannot claim the run under {store.root}: {one_line(exc)}"
        return None
    if claim is None:
        outcome.elsewhere[key] = store.claim_holder(key)
        return None
    if store.has(key) and not force:  # finished by another sweep between our look and our claim
        claim.release()
        outcome.skipped.append(key)
        return None
    return claim


def store_failure(plan: RunPlan, store: ResultStore, failure: RunFailure) -> str:
    """Write the failure record and log of a run; the one-line message for the terminal."""
    spec = plan.spec
    about = {
        "title": plan.title,
        "task": spec.task.label,
        "method": spec.method.label,
        "seed": spec.seed,
        "hardware": spec.hardware.label,
    }
    try:
        record = store.record_failure(
            plan.run_key, phase=failure.phase, error=failure.error, detail=failure.detail, about=about
        )
        where = f"traceback in {record['log']}"
    except OSError as exc:
        logger.error("run %s failed:\n%s", plan.run_key, failure.detail)
        where = f"no failure record: {one_line(exc)}"
    return f"{plan.title}: {failure.error} [{failure.phase}; {where}]"


def die_with_parent(parent_pid: int | None) -> None:
    """Exit when the ``bench`` process that started this worker dies.

    This way a killed suite leaves nothing running. Ctrl-C reaches the whole process group, but a
    ``kill`` of the parent alone would leave an orphan worker measuring on (and slowing down
    whatever runs next). On Linux the kernel sends us SIGTERM when the parent dies
    (``PR_SET_PDEATHSIG``); elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl in this libc: keep the old behaviour
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def worker_main() -> int:
    """Entry point of ``python -m dynbench.harness.worker``: one run from a JSON job on stdin.

    Reports on stdout: ``PROGRESS {json}`` per step, ``PHASE name`` as each phase starts, and on
    failure ``FAILED {"phase", "error"}`` (the one-line cause); the traceback goes to stderr, which
    the parent keeps in the run's log. Returns 1 on failure.
    """
    faulthandler.enable()  # a crash in native code still leaves a Python traceback in the log
    job = json.loads(sys.stdin.read())
    die_with_parent(job.get("parent_pid"))

    def progress(done: int, total: int, what: str) -> None:
        print("PROGRESS " + json.dumps({"done": done, "total": total, "what": what}), flush=True)

    with phase_listener(lambda name: print(f"PHASE {name}", flush=True)):
        try:
            with phase("setup"):
                spec: RunSpec = runspec_from_dict(job["spec"])
                (plan,) = plan_suite([spec])
            cache = Path(job["cache_dir"]) if job["cache_dir"] else None
            execute(plan, store=ResultStore(Path(job["store"])), cache_dir=cache, progress=progress)
        except Exception as exc:
            traceback.print_exc()
            print("FAILED " + json.dumps({"phase": failed_phase(exc), "error": one_line(exc)}), flush=True)
            return 1
    return 0
