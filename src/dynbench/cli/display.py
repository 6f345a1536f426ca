"""Terminal output of the CLI: progress over runs and budgets, the end-of-run summary, plugins."""

from __future__ import annotations

import time
from types import TracebackType

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dynbench.harness.execution import Progress as BudgetProgress
from dynbench.harness.planning import RunPlan

console = Console()
if not console.is_terminal:  # pipes and CI logs: wide enough that the summary table stays readable
    console.width = 160


class RunDisplay:
    """Two progress bars: runs of the suite, and budgets of the current run."""

    def __init__(self, n_runs: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.runs = self.progress.add_task("runs", total=n_runs)
        self.current: int | None = None

    def __enter__(self) -> RunDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(et, ev, tb)

    def run_progress(self, plan: RunPlan) -> BudgetProgress:
        """The budget callback for one run (advances the runs bar when the run finishes)."""
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(escape(f"  {plan.title}"), total=len(plan.budgets))

        started = time.monotonic()

        def update(done: int, total: int, what: str) -> None:
            assert self.current is not None  # noqa: S101 — set just above
            # titles hold brackets (dht[policy=random]): not Rich markup
            label = escape(f"  {plan.title}: {what}")
            self.progress.update(self.current, completed=done, total=total, description=label)
            if not console.is_terminal:  # CI logs and pipes get no live bars: a plain line per step
                print(f"[{time.monotonic() - started:7.1f} s] {plan.title}: {what} ({done}/{total})", flush=True)
            if done == total and what == "done":
                self.progress.advance(self.runs)

        return update


def _fmt(value: float, kind: str) -> str:
    if pd.isna(value):
        return "–"
    if kind == "flops":
        return f"{value / 1e6:.3g} M"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "ms":
        return f"{value:.3g}"
    if kind == "mem":
        return f"{value / 2**20:.3g}"
    if kind == "x":
        return f"{value:.2f}×"
    return f"{value:.4g}"


def print_summary(rows: pd.DataFrame) -> None:
    """A table: task × method × budget → quality, FLOPs, latency, speedup, memory, 95% intervals."""
    if rows.empty:
        return
    from dynbench.analysis.tables import interval_note, summary_frame, with_interval

    s = summary_frame(rows)
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
            r["task"],
            r["hardware"],
            escape(str(r["method_label"])),  # labels hold brackets (dht[policy=random]): not markup
            f"{r['budget']:.3g}",
            escape(f"{with_interval(r, 'quality', lambda v: _fmt(v, ''))} {r['quality_unit']}"),
            _fmt(r["flops_per_sample"], "flops"),
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
