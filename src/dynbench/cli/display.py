"""Terminal output of the CLI: progress over runs and budgets, the end-of-run summary, plugins."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from types import TracebackType

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dynbench.harness.eta import SuiteEta, format_duration
from dynbench.harness.execution import Progress as BudgetProgress
from dynbench.harness.planning import RunPlan

console = Console()
if not console.is_terminal:  # pipes and CI logs: wide enough that the summary table stays readable
    console.width = 160


PLAIN_STEP_S = 10.0
"""Seconds between two plain progress lines about training steps (pipes and CI logs)."""
_STEP = re.compile(r": step (\d+)/(\d+)$")  # execution's training-step messages: "fitting x: step i/n"


class RunDisplay:
    """Progress of a suite: a bar over runs with the time left, one over the current run's budgets.

    Prints a line when the suite starts (runs already done, runs to come, the estimate), a line per
    finished or failed run (its phases and the time left), and, where the output is not a terminal
    (pipes, CI logs), a plain line per progress message instead of live bars (training steps at
    most every :data:`PLAIN_STEP_S` seconds).

    Args:
        plans: every run of the suite, in order.
        done: run keys already in the results folder (skipped, unless ``--force``).
        eta: the suite's time estimate (:class:`~dynbench.harness.eta.SuiteEta`); ``None`` shows
            none.
        on_finished: called with each run's plan after it finished and was stored (the live
            report).
    """

    def __init__(
        self,
        plans: list[RunPlan],
        done: set[str] | None = None,
        eta: SuiteEta | None = None,
        on_finished: Callable[[RunPlan], None] | None = None,
    ) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.plans, self.eta, self.on_finished = plans, eta, on_finished
        self.already = [p for p in plans if p.run_key in (done or set())]
        self.to_run = len(plans) - len(self.already)
        self.runs = self.progress.add_task("runs", total=self.to_run)
        self.current: int | None = None
        self.plan: RunPlan | None = None
        self.finished: list[str] = []  # run keys finished or failed in this session
        self.started = self.last_plain = 0.0

    def __enter__(self) -> RunDisplay:
        self.progress.__enter__()
        done = f"{len(self.already)} already done, " if self.already else ""
        self.say(f"{len(self.plans)} run(s): {done}{self.to_run} to run · {self.eta_text()}")
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self._close_current()
        self.progress.__exit__(et, ev, tb)

    def say(self, line: str) -> None:
        """Print one line above the bars (plain text: titles hold brackets, not Rich markup)."""
        self.progress.console.print(escape(line), highlight=False)

    def eta_text(self) -> str:
        """``ETA 12 min 30 s`` (with how many runs it could not count), or why there is none."""
        if self.eta is None:
            return "no estimate"
        elapsed = time.monotonic() - self.started if self.plan is not None else 0.0
        seconds, unknown = self.eta.remaining(self.plan, elapsed, self.finished)
        if unknown and not seconds:
            return "ETA after the first run of each kind"
        more = f" + {unknown} run(s) not yet estimated" if unknown else ""
        return f"ETA {format_duration(seconds)}{more}"

    def _close_current(self) -> None:
        """A run that ended without saying ``done`` failed (its message comes at the end)."""
        if self.plan is not None and self.plan.run_key not in self.finished:
            self.finished.append(self.plan.run_key)
            self.progress.advance(self.runs)
            self.say(f"✗ [{len(self.finished)}/{self.to_run}] {self.plan.title}: failed · {self.eta_text()}")
        self.plan = None

    def _finished(self, plan: RunPlan) -> None:
        self.finished.append(plan.run_key)
        self.progress.advance(self.runs)
        if self.eta is not None:
            self.eta.reload()  # the run's phase times are in the cache's record now
        phases = self.eta.phases_text(plan.run_key) if self.eta is not None else ""
        took = format_duration(time.monotonic() - self.started)
        self.plan = None
        self.say(f"✓ [{len(self.finished)}/{self.to_run}] {plan.title}: {took}{phases} · {self.eta_text()}")
        self.progress.update(self.runs, description=escape(f"runs · {self.eta_text()}"))
        if self.on_finished is not None:
            self.on_finished(plan)

    def run_progress(self, plan: RunPlan) -> BudgetProgress:
        """The budget callback for one run (advances the runs bar when the run finishes)."""
        self._close_current()
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(escape(f"  {plan.title}"), total=len(plan.budgets))
        self.plan, self.started = plan, time.monotonic()

        def update(done: int, total: int, what: str) -> None:
            if self.current is None:
                return
            # titles hold brackets (dht[policy=random]): not Rich markup
            label = escape(f"  {plan.title}: {what}")
            self.progress.update(self.current, completed=done, total=total, description=label)
            if done == total and what == "done":
                self._finished(plan)
                return
            self.progress.update(self.runs, description=escape(f"runs · {self.eta_text()}"))
            step = _STEP.search(what)
            due = step is None or step[1] == step[2] or time.monotonic() - self.last_plain >= PLAIN_STEP_S
            if not console.is_terminal and due:  # a training loop's last step always shows
                self.last_plain = time.monotonic()
                elapsed = time.monotonic() - self.started
                print(f"[{elapsed:7.1f} s] {plan.title}: {what} ({done}/{total}) · {self.eta_text()}", flush=True)

        return update


def _fmt(value: float, kind: str) -> str:
    """A summary cell, formatted as the report's tables format it (``analysis/tables.py``)."""
    from dynbench.analysis.tables import format_sig

    if pd.isna(value):
        return "–"
    if kind == "mem":
        return format_sig(value / 2**20)
    if kind == "x":
        return f"{value:.2f}×"
    return format_sig(value)  # ratios, milliseconds, layers: 3 significant digits, no exponent


def print_summary(rows: pd.DataFrame) -> None:
    """A table: task × method × budget → quality, FLOPs, latency, speedup, memory, 95% intervals.

    Quality and FLOPs read as in the report's tables: each task's quality in its unit, accuracy as a
    percentage (``analysis/tables.py``: ``quality_scale``, ``quality_formats``), FLOPs as
    ``format_flops`` writes them (``35.6 G``); labels such as ``cpu[dtype=bf16]`` escaped.
    """
    if rows.empty:
        return
    from dynbench.analysis.tables import (
        format_flops,
        interval_note,
        profile_note,
        quality_formats,
        quality_scale,
        summary_frame,
        synthetic_tasks,
        with_interval,
    )

    console.print(escape(profile_note(rows)))
    s = summary_frame(rows)
    synthetic = synthetic_tasks(rows)
    quality: dict[str, tuple[Callable[[float], str], str]] = {}  # task → (format, unit label)
    for task, part in s.groupby("task"):
        unit = part["quality_unit"].dropna()
        factor, label = quality_scale(str(unit.iloc[0]) if len(unit) else "quality", part["quality"])
        quality[str(task)] = (quality_formats(factor)[0], label)
    table = Table(title="dynbench summary (latency, speedup and memory at batch 1; means over seeds, [95% interval])")
    for col in (
        "task",
        "hardware",
        "method",
        "budget",
        "quality",
        "FLOPs/sample",
        "FLOPs ratio",
        "latency ms",
        "speedup",
        "peak MiB",
        "layers",
    ):
        table.add_column(col, justify="left" if col in ("task", "hardware", "method") else "right")
    for _, r in s.iterrows():
        speedup = with_interval(r, "speedup_realized", lambda v: _fmt(v, "x"), lambda v: f"{v:.2f}")
        table.add_row(
            escape(f"{r['task']} (synthetic)" if r["task"] in synthetic else str(r["task"])),
            escape(str(r["hardware"])),
            escape(str(r["method_label"])),
            f"{r['budget']:.3g}",
            escape(f"{with_interval(r, 'quality', quality[str(r['task'])][0])} {quality[str(r['task'])][1]}"),
            format_flops(r["flops_per_sample"]),
            escape(with_interval(r, "flops_ratio", lambda v: _fmt(v, "ratio"))),
            escape(with_interval(r, "latency_ms", lambda v: _fmt(v, "ms"))),
            escape(speedup + (" ⚠ suspect" if r["suspect"] else "")),
            escape(with_interval(r, "peak_mem_bytes", lambda v: _fmt(v, "mem"))),
            _fmt(r["mean_layers"], ""),
        )
    console.print(table)
    console.print(escape(interval_note(s)))


def print_plugins(kind: str, items: list[dict[str, str]]) -> None:
    """``bench ls`` output."""
    table = Table(title=f"registered {kind}")
    if not items:
        console.print(f"No {kind} registered.")
        return
    for col in items[0]:
        table.add_column(col)
    for item in items:
        table.add_row(*(escape(str(v)) for v in item.values()))
    console.print(table)
