"""Preflight: what can be checked before anything trains, beyond each run's plugins and budgets.

:func:`dynbench.harness.planning.plan_suite` checks every run's plugins, options, budgets, data,
seeds and sizes; given :class:`Destinations`, it also asks :func:`destination_problems` whether the
results folder, the cache and the report folder can be written and hold the suite's estimated
output. Every problem of the whole suite is reported at once, and nothing is written: a folder is
tested by creating and removing a temporary file in the nearest folder that exists, never by
creating the folder. ``bench report`` and ``bench export`` check their ``--out`` the same way
(:func:`folder_problem`, :func:`file_problem`), and turn an error of the write itself (a disk that
fills up meanwhile) into one line with :func:`write_failure`.

The size estimate (:func:`estimate_bytes`) is deliberately rough — the dense checkpoints a suite
will train (their float32 parameters, from a meta-device build), one more checkpoint's worth per
fitted method, and a per-sample allowance for the result files — so that a nearly full disk fails
before hours of training rather than at the first write.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dynbench.config import RunSpec
from dynbench.harness.store import ResultStore
from dynbench.methods.base import Method
from dynbench.tasks.base import Task, backbone_key

SAMPLE_RECORD_BYTES = 512
"""Allowance per evaluation sample and budget in ``samples/<run_key>.jsonl``."""
RUN_BUDGET_BYTES = 256 * 1024
"""Allowance per run and budget for its rows and stored timed calls."""
EVAL_SAMPLES_UNKNOWN = 10_000
"""Evaluation samples assumed for a run on a whole split (counting would load the split)."""
PARAM_BYTES = 4
"""Bytes per cached parameter: checkpoints are float32."""


class PlannedRun(Protocol):
    """What the size estimate reads of a run: :class:`dynbench.harness.planning.RunPlan` has it."""

    spec: RunSpec
    task: Task
    method: Method
    budgets: tuple[float, ...]
    run_key: str


@dataclass(frozen=True)
class Destinations:
    """The folders a suite will write, for the preflight checks; ``None`` = not checked."""

    out: Path | None = None  # results folder (`--out`): rows, samples and timed calls
    cache_dir: Path | None = None  # backbone and fit cache (`--cache-dir`, $DYNBENCH_CACHE)
    report: Path | None = None  # report folder (`bench run --report`; the default suite: reports/)


@dataclass(frozen=True)
class SizeEstimate:
    """What a suite is expected to write, in bytes, per destination."""

    out: int  # result files of the runs not yet done
    cache: int  # checkpoints of backbones not yet cached, and method fits


def existing_ancestor(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (where it would be made)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path) -> OSError | None:
    """Create and remove a temporary file in an existing ``folder``; the error when that fails.

    ``os.access`` ignores read-only mounts and answers yes to root, so a real file is tried.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".dynbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc
    return None


def folder_problem(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be used as a folder to write in, or ``None``; nothing is left behind.

    Args:
        path: the folder (it may not exist yet: then its nearest existing parent must be a
            writable folder).
        flag: the option that named it (``--out``), for the message.
    """
    if path.exists() and not path.is_dir():
        return f"{flag} {path} is a file, not a folder. Give a folder path (it is created if missing)."
    base = existing_ancestor(path)
    if not base.is_dir():
        return f"{flag} {path} lies under {base}, which is a file. Give a folder path."
    if (exc := _probe(base)) is not None:
        where = "" if base == path.expanduser().absolute() else f" (its existing parent {base})"
        return f"{flag} {path} is not writable{where}: {exc.strerror or exc}. Choose a folder you can write to."
    return None


def file_problem(path: Path, flag: str) -> str | None:
    """Why a file cannot be written at ``path``, or ``None``; nothing is left behind.

    The file may exist (it is replaced); its folder may not exist yet (it is created), but its
    nearest existing parent must be a writable folder.

    Args:
        path: the file to write.
        flag: the option that named it (``--out``), for the message.
    """
    if path.is_dir():
        return f"{flag} {path} is a folder, not a file. Give a file path, e.g. {path / 'rows.csv'}."
    base = existing_ancestor(path.parent)
    if not base.is_dir():
        return f"{flag} {path} lies under {base}, which is a file. Give a path inside a folder."
    if (exc := _probe(base)) is not None:
        return (
            f"{flag} {path} cannot be written: its folder {base} is not writable ({exc.strerror or exc}). "
            "Choose a folder you can write to."
        )
    return None


def write_failure(path: Path, exc: OSError, flag: str) -> str:
    """The one-line message for a write to ``path`` that failed with ``exc`` (a full disk, …).

    Args:
        path: what was being written (a file or a report folder).
        exc: the error of the write.
        flag: the option that named ``path`` (``--out``), for the message.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    advice = "Free some space or choose" if exc.errno == errno.ENOSPC else "Choose"
    return f"Could not write {flag} {path}: {reason}{where}. {advice} another place; nothing partial was left there."


def estimate_bytes(plans: Sequence[PlannedRun], destinations: Destinations) -> SizeEstimate:
    """A rough size of what ``plans`` will write (see the module docstring).

    Runs already in the results folder and backbones already in the cache count nothing.
    """
    out = cache = 0
    sizes: dict[str, int] = {}  # backbone key → checkpoint bytes, each backbone built (on meta) once
    counted: set[str] = set()
    store = None if destinations.out is None else ResultStore(destinations.out)
    cache_dir = destinations.cache_dir
    for plan in plans:
        if store is not None and store.has(plan.run_key):
            continue
        n_eval = plan.spec.eval_limit or EVAL_SAMPLES_UNKNOWN  # --limit, or the quick profile's sample
        out += len(plan.budgets) * (n_eval * SAMPLE_RECORD_BYTES + RUN_BUDGET_BYTES)
        if not plan.task.trains_backbone():
            continue  # a pretrained backbone is converted, not trained; its task caches it its own way
        key = backbone_key(plan.task, plan.spec.seed)
        if key not in sizes:
            sizes[key] = sum(p.numel() for p in plan.task.meta_backbone().parameters()) * PARAM_BYTES
        size = sizes[key]
        cached = cache_dir is not None and (Path(cache_dir) / "backbones" / f"{key}.pt").exists()
        if key not in counted and not cached:
            counted.add(key)
            cache += size
        if plan.method.learns():
            cache += size  # a fit stores at most about one backbone's worth (MoD: a copy per capacity)
    return SizeEstimate(out=out, cache=cache)


def space_problems(estimate: SizeEstimate, destinations: Destinations) -> list[str]:
    """One message per disk that lacks the free space ``estimate`` asks of it."""
    need: dict[int, list[tuple[str, Path, int]]] = {}
    wanted = (("--out", destinations.out, estimate.out), ("--cache-dir", destinations.cache_dir, estimate.cache))
    for flag, path, size in wanted:
        if path is None or size == 0:
            continue
        base = existing_ancestor(path)
        need.setdefault(base.stat().st_dev, []).append((flag, path, size))
    problems = []
    for entries in need.values():
        total = sum(size for _, _, size in entries)
        free = shutil.disk_usage(existing_ancestor(entries[0][1])).free
        if free < total:
            names = " and ".join(f"{flag} {path} (~{_mb(size)})" for flag, path, size in entries)
            problems.append(
                f"Not enough free space: {names} need about {_mb(total)}, but only {_mb(free)} is free on that "
                "disk. Free some space, choose another folder, or run fewer runs (--limit shrinks the results)."
            )
    return problems


def destination_problems(plans: Sequence[PlannedRun], destinations: Destinations) -> list[str]:
    """Folders that cannot be written, and disks too full for the suite; one message each."""
    folders = (("--out", destinations.out), ("--cache-dir", destinations.cache_dir), ("--report", destinations.report))
    problems = [problem for flag, path in folders if path is not None and (problem := folder_problem(Path(path), flag))]
    if problems:
        return problems
    return space_problems(estimate_bytes(plans, destinations), destinations)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"
