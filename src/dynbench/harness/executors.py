"""Executors run a suite: ``inline`` in this process, or ``subprocess``, one fresh process per run.

A fresh process per run keeps memory figures clean (the process footprint is that run's alone) and
isolates crashes. The results store is the only shared state, so executors need no coordination
beyond it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dynbench.config import RunSpec, runspec_from_dict, runspec_to_dict
from dynbench.harness.execution import Progress, execute
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.harness.store import ResultStore

logger = logging.getLogger(__name__)

EXECUTORS = ("inline", "subprocess")

RunProgress = Callable[[RunPlan], Progress]
"""Given a run, the callback that receives its budget progress."""


@dataclass
class SuiteOutcome:
    """What happened to each run of a suite."""

    done: list[str] = field(default_factory=list)  # run keys measured now
    skipped: list[str] = field(default_factory=list)  # run keys already in the store
    failed: dict[str, str] = field(default_factory=dict)  # run key → error message


def run_inline(plan: RunPlan, store: ResultStore, cache_dir: Path | None, progress: Progress) -> None:
    """Run in this process."""
    execute(plan, store=store, cache_dir=cache_dir, progress=progress)


def run_subprocess(plan: RunPlan, store: ResultStore, cache_dir: Path | None, progress: Progress) -> None:
    """Run in a fresh Python process; progress arrives as JSON lines on its stdout.

    Raises:
        RuntimeError: the worker failed; the message carries the end of its error output.
    """
    job = {
        "parent_pid": os.getpid(),
        "spec": runspec_to_dict(plan.spec),
        "store": str(store.root),
        "cache_dir": cache_dir and str(cache_dir),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "dynbench.harness.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout, stderr, stdin = proc.stdout, proc.stderr, proc.stdin
        if stdout is None or stderr is None or stdin is None:  # cannot happen with PIPE; keeps type checkers calm
            raise RuntimeError("worker pipes were not created")
        stdin.write(json.dumps(job))
        stdin.close()
        for line in stdout:
            if line.startswith("PROGRESS "):
                msg = json.loads(line[len("PROGRESS ") :])
                progress(msg["done"], msg["total"], msg["what"])
        err = stderr.read()
        code = proc.wait()
    if code != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"worker exited with code {code}:\n{tail}")


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

    A failed run does not stop the rest.

    Raises:
        ValueError: unknown executor name.
    """
    runners = {"inline": run_inline, "subprocess": run_subprocess}
    if executor not in runners:
        raise ValueError(f"Unknown executor '{executor}'. Available: {', '.join(EXECUTORS)}.")
    outcome = SuiteOutcome()
    for plan in plans:
        if store.has(plan.run_key) and not force:
            outcome.skipped.append(plan.run_key)
            continue
        cb = progress(plan) if progress else (lambda done, total, what: None)
        try:
            runners[executor](plan, store, cache_dir, cb)
            outcome.done.append(plan.run_key)
        except Exception as exc:  # one broken run must not lose the others' results
            logger.debug("run %s failed:\n%s", plan.run_key, traceback.format_exc())
            outcome.failed[plan.run_key] = f"{plan.title}: {type(exc).__name__}: {exc}"
    return outcome


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
    """Entry point of ``python -m dynbench.harness.worker``: one run from a JSON job on stdin."""
    job = json.loads(sys.stdin.read())
    die_with_parent(job.get("parent_pid"))
    spec: RunSpec = runspec_from_dict(job["spec"])
    (plan,) = plan_suite([spec])

    def progress(done: int, total: int, what: str) -> None:
        print("PROGRESS " + json.dumps({"done": done, "total": total, "what": what}), flush=True)

    cache = Path(job["cache_dir"]) if job["cache_dir"] else None
    execute(plan, store=ResultStore(Path(job["store"])), cache_dir=cache, progress=progress)
    return 0
