"""How long a suite will take: phase times of finished runs, kept in the cache, and the estimate.

Every run appends one line to ``<cache>/phase_times.jsonl`` when it finishes (:func:`record_run`):
how long it spent loading or training the dense backbone, fitting the method (and, for an upper
bound, fitting on the evaluation samples), and measuring its budgets, and whether the backbone and
the fit were trained or loaded from the cache. :class:`SuiteEta` turns those lines — this machine's
own, then the reference machine's shipped in ``eta_prior.jsonl`` beside this module, scaled by how
fast this machine ran the phases both have seen — into the time left for a suite: for each run still
to come, the backbone only where no cached checkpoint exists and no earlier run of the suite trains
it, the fit only where the fit cache lacks it, and the measurement per budget.

Estimates match on what makes a phase cost what it does: the backbone on its cache key (task,
config, seed), the fit on its cache file name and else on (task, method, profile), the measurement
on (task, method, profile, evaluation samples, hardware), per budget, and else on the task's other
methods. A phase with no match anywhere counts as unknown, and the estimate says so instead of
guessing.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynbench.harness.fit_cache import fit_path
from dynbench.harness.planning import RunPlan
from dynbench.harness.provenance import now
from dynbench.tasks.base import backbone_key

logger = logging.getLogger(__name__)

HISTORY_FILE = "phase_times.jsonl"
"""The phase-time record in the cache folder: one JSON line per finished run."""
PRIOR_FILE = Path(__file__).with_name("eta_prior.jsonl")
"""Phase times measured on the reference machine (2 CPU cores): the estimate before local runs."""
OVERHEAD_S = 4.0
"""A run's time outside what it records: a worker's start and imports, its share of the report
rewrites (about 4 s a run on the reference machine), added to what the records leave unexplained."""


@dataclass
class PhaseTimes:
    """The phases of one run, as :func:`record_run` stores them."""

    backbone_s: float = 0.0  # loading or training the dense backbone
    backbone_trained: bool = False  # trained (no cached checkpoint) rather than loaded
    fit_s: float = 0.0  # the method's fit, loaded or made, and an upper bound's evaluation fit
    fit_trained: bool = False  # some fit was made rather than loaded
    measure_s: float = 0.0  # the dense twin's passes and every budget's four passes


def run_facts(plan: RunPlan) -> dict[str, Any]:
    """What a phase record is matched on: the run's task, method, profile, samples and keys."""
    spec = plan.spec
    fit = fit_path(plan, Path("."))
    return {
        "task": spec.task.label,
        "method": spec.method.label,
        "profile": spec.profile,
        "eval_limit": spec.eval_limit,
        "hardware": plan.hardware.label,
        "batch_sizes": list(spec.batch_sizes),
        "backbone_key": backbone_key(plan.task, spec.seed),
        "fit_key": fit.name if fit is not None and plan.method.learns() else "",
        "eval_fit": plan.method.sees_eval_labels,  # fitted on the evaluation samples too (an upper bound)
        "budgets": len(plan.budgets),
    }


def record_run(cache_dir: Path | None, plan: RunPlan, times: PhaseTimes, total_s: float) -> None:
    """Append one finished run's phase times to the cache's record (nothing without a cache).

    One line written with a single ``O_APPEND`` write, so runs finishing in parallel processes do
    not interleave; a record that cannot be written is only logged: it feeds an estimate, never a
    result.
    """
    if cache_dir is None:
        return
    line = {"time": now(), "run_key": plan.run_key, **run_facts(plan), **vars(times), "total_s": total_s}
    path = Path(cache_dir) / HISTORY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        logger.warning("could not record phase times in %s: %s", path, exc)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The phase records of a file; lines that are not records (a cut-off last line) are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and {"task", "method", "budgets", "measure_s"} <= rec.keys():
            out.append(rec)
    return out


def _median(values: Iterable[float]) -> float | None:
    found = [float(v) for v in values]
    return statistics.median(found) if found else None


class PhaseBook:
    """Phase records, looked up by what a phase's cost depends on (see the module docstring).

    Args:
        records: the records, most trusted first is not required: every match is a median.
    """

    def __init__(self, records: list[Mapping[str, Any]]) -> None:
        self.records = list(records)

    def _first(self, value: str, flag: str | None, facts: Mapping[str, Any], *matches: tuple[str, ...]) -> float | None:
        """The median ``value`` of the first match that has records (``flag`` set, when given)."""
        for keys in matches:
            found = [
                r for r in self.records if all(r.get(k) == facts[k] for k in keys) and (flag is None or r.get(flag))
            ]
            if found:
                return _median(r[value] / (max(1, r["budgets"]) if flag is None else 1) for r in found)
        return None

    def backbone(self, facts: Mapping[str, Any]) -> float | None:
        """Seconds to train the backbone of ``facts``.

        Its cache key, else its task and profile, else any backbone trained here: a rough guess
        that the next finished run replaces.
        """
        return self._first("backbone_s", "backbone_trained", facts, ("backbone_key",), ("task", "profile"), ())

    def fit(self, facts: Mapping[str, Any]) -> float | None:
        """Seconds to make the fit of ``facts``.

        Its cache file, else its task, method and profile, else the method on other tasks, else
        any fit made on its task, else any fit.
        """
        return self._first(
            "fit_s",
            "fit_trained",
            facts,
            ("fit_key",),
            ("task", "method", "profile"),
            ("method", "profile"),
            ("task", "profile"),
            (),
        )

    def measure_per_budget(self, facts: Mapping[str, Any]) -> float | None:
        """Seconds per budget: the same run's kind, else any method on the same task and samples."""
        same = ("task", "profile", "eval_limit", "hardware", "batch_sizes")
        return self._first("measure_s", None, facts, ("method", *same), same, ("profile",), ())

    def overhead(self) -> float:
        """A run's seconds outside its phases: :data:`OVERHEAD_S` plus the records' remainder.

        The remainder is the median of a run's recorded total less its phases (the store write,
        setting up the evaluation batches).
        """
        rest = _median(
            r["total_s"] - r.get("backbone_s", 0) - r.get("fit_s", 0) - r["measure_s"]
            for r in self.records
            if "total_s" in r
        )
        return OVERHEAD_S + max(0.0, rest or 0.0)


def speed_factor(local: PhaseBook, prior: PhaseBook) -> float:
    """How much slower (> 1) or faster this machine ran the runs both books hold, per budget.

    The median ratio of measurement seconds per budget over the run kinds both have; 1 when none.
    Clamped to [0.25, 4]: a loaded machine is slower, not another machine.
    """
    ratios = []
    for rec in local.records:
        theirs = prior.measure_per_budget(rec)
        if theirs:
            ratios.append(rec["measure_s"] / max(1, rec["budgets"]) / theirs)
    return min(4.0, max(0.25, statistics.median(ratios))) if ratios else 1.0


class SuiteEta:
    """The time left in a suite, from recorded phase times.

    Args:
        plans: every run of the suite, in execution order.
        cache_dir: the backbone and fit cache (its record file and its checkpoints).
        done: run keys already finished (skipped: they cost nothing).
        parallel: runs that go at once (a Dask cluster's workers); the time left is the work left
            shared among them, and never less than the longest run still to come. Each run's
            estimate comes from recorded phase times, which a Dask suite records under its own
            conditions (its workers' threads), so after one suite they are the cluster's.
    """

    def __init__(
        self, plans: list[RunPlan], cache_dir: Path | None, done: Iterable[str] = (), *, parallel: int = 1
    ) -> None:
        self.cache_dir = cache_dir
        self.parallel = max(1, parallel)
        finished = set(done)
        self.todo = [p for p in plans if p.run_key not in finished]
        self.facts = {p.run_key: run_facts(p) for p in self.todo}
        self.trains_backbone, self.makes_fit = self._work_to_do()
        self.prior = PhaseBook(read_records(PRIOR_FILE))
        self.reload()

    def _work_to_do(self) -> tuple[set[str], set[str]]:
        """Runs that will train a backbone, and runs that will make a fit (first users only)."""
        backbones: set[str] = set()
        fits: set[str] = set()
        seen_b: set[str] = set()
        seen_f: set[str] = set()
        for p in self.todo:
            facts = self.facts[p.run_key]
            key = facts["backbone_key"]
            if p.task.trains_backbone() and key not in seen_b and not self._cached("backbones", f"{key}.pt"):
                backbones.add(p.run_key)
            seen_b.add(key)
            fit = facts["fit_key"]
            if (fit and fit not in seen_f and not self._cached("methods", fit)) or p.method.sees_eval_labels:
                fits.add(p.run_key)
            seen_f.add(fit)
        return backbones, fits

    def _cached(self, folder: str, name: str) -> bool:
        return self.cache_dir is not None and (Path(self.cache_dir) / folder / name).exists()

    def reload(self) -> None:
        """Read the cache's record again (after a run finished, it holds that run's line)."""
        path = None if self.cache_dir is None else Path(self.cache_dir) / HISTORY_FILE
        self.local = PhaseBook(read_records(path) if path is not None else [])
        self.factor = speed_factor(self.local, self.prior)
        self._estimates: dict[str, float | None] = {}

    def phases_text(self, run_key: str) -> str:
        """`` (backbone trained 61 s, fit made 20 s, …)`` from a run's record, or ``""``."""
        recs = [r for r in self.local.records if r.get("run_key") == run_key]
        if not recs:
            return ""
        r = recs[-1]
        parts = [
            f"backbone {'trained' if r.get('backbone_trained') else 'loaded'} {format_duration(r['backbone_s'])}",
            f"fit {'made' if r.get('fit_trained') else 'loaded'} {format_duration(r['fit_s'])}"
            if r.get("fit_key") or r.get("eval_fit")
            else "nothing to fit",
            f"{r['budgets']} budget(s) measured {format_duration(r['measure_s'])}",
        ]
        return f" ({', '.join(parts)})"

    def _phase(self, lookup: str, facts: Mapping[str, Any]) -> float | None:
        mine = getattr(self.local, lookup)(facts)
        if mine is not None:
            return mine
        theirs = getattr(self.prior, lookup)(facts)
        return None if theirs is None else theirs * self.factor

    def run_seconds(self, plan: RunPlan) -> float | None:
        """The estimated duration of one run still to come; ``None`` when a phase is unknown."""
        if plan.run_key not in self._estimates:
            self._estimates[plan.run_key] = self._estimate(plan)
        return self._estimates[plan.run_key]

    def _estimate(self, plan: RunPlan) -> float | None:
        facts = self.facts[plan.run_key]
        per_budget = self._phase("measure_per_budget", facts)
        parts = [None if per_budget is None else per_budget * facts["budgets"]]
        if plan.run_key in self.trains_backbone:
            parts.append(self._phase("backbone", facts))
        if plan.run_key in self.makes_fit:
            parts.append(self._phase("fit", facts))
        if any(p is None for p in parts):
            return None
        return sum(p for p in parts if p is not None) + self.local.overhead()

    def remaining(self, current: RunPlan | None, elapsed_s: float, done: Iterable[str]) -> tuple[float, int]:
        """Seconds left in the suite, and how many runs to come had no estimate (not counted).

        Args:
            current: the run in progress (its estimate less ``elapsed_s``, at least 0), or None.
            elapsed_s: how long the current run has been going.
            done: run keys finished (or failed) in this session.
        """
        finished = set(done)
        total, longest, unknown = 0.0, 0.0, 0
        for p in self.todo:
            if p.run_key in finished:
                continue
            est = self.run_seconds(p)
            if est is None:
                unknown += 1
                continue
            left = max(0.0, est - elapsed_s) if current is not None and p.run_key == current.run_key else est
            total, longest = total + left, max(longest, left)
        return max(total / self.parallel, longest), unknown


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
