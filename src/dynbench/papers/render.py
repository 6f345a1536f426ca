"""A paper's tables and claims from stored rows, as Markdown, LaTeX (booktabs) or CSV.

Nothing is recomputed: every number comes from :mod:`dynbench.papers.measures` over the rows of one
of the paper's suites (full when its runs are there, else quick: the output says which). A claim's
verdict is :func:`dynbench.papers.verdict.judge` of each measured point, combined over points.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dynbench.analysis.tables import format_sig
from dynbench.papers.measures import Measured, measure, metric_point, on_hardware, suite_rows, task_params
from dynbench.papers.registry import Claim, Paper, PaperTable
from dynbench.papers.verdict import PaperVerdict, combine, judge

FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class ClaimResult:
    """A claim, what we measured for it, and the verdict."""

    claim: Claim
    points: tuple[Measured, ...]
    verdict: PaperVerdict


def claim_results(paper: Paper, suite: str, rows: pd.DataFrame, samples: pd.DataFrame) -> list[ClaimResult]:
    """Every claim of ``paper`` judged on ``rows`` (one suite's) and ``samples``."""
    out = []
    for claim in paper.claims:
        points = tuple(measure(paper, claim.measure, suite, rows, samples))
        verdicts = [judge(claim.expect, p.low, p.high, comparable=claim.comparable) for p in points]
        verdict = combine(verdicts) if points else judge(claim.expect, None, None, comparable=claim.comparable,
                                                          measured=False)  # fmt: skip
        out.append(ClaimResult(claim, points, verdict))
    return out


def _number(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else format_sig(float(x))


def ours_text(result: ClaimResult) -> str:
    """Our value ± interval, per budget when the claim is measured at several."""
    if not result.points:
        return result.claim.measure.reason or _NONE.get(result.claim.measure.kind, "not in these results")
    parts = []
    for p in result.points:
        interval = f" [{_number(p.low)}, {_number(p.high)}]" if p.low is not None else " (no interval)"
        where = f"b={p.budget:g}: " if len(result.points) > 1 or result.claim.measure.kind == "paired" else ""
        of = f" ({p.where} at b={p.budget:g})" if p.where else ""
        parts.append(f"{where}{_number(p.value)}{interval}{of}")
    over = result.points[0].over
    return "; ".join(parts) + (f" (over {over})" if over else "")


_NONE = {"isoflop": "no MoD model as good as the best dense one in these results"}
"""Why a measure kind has no point when its runs are there (the isoflop rule found no MoD)."""


def paper_text(claim: Claim) -> str:
    """The paper's value with its unit, or the claim's shape."""
    return f"{claim.paper_value:g} {claim.unit}".strip() if claim.paper_value is not None else claim.shape


def table_frame(paper: Paper, table: PaperTable, suite: str, rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (method, budget) of ``table``, each column ``value [low, high]`` as text.

    A sweep's table has a block per swept task (model size) that ran, each headed by the task's
    label and its backbone's parameter count (from the task's configuration). A table reads the
    measured targets' rows, or only those of the modeled device it names (``hardware``).
    """
    tasks = paper.sweep_tasks(table.sweep, suite) if table.sweep else (paper.task(table.task, suite),)
    rows = on_hardware(rows, table.hardware)
    lead = ["model", "params"] if table.sweep else []
    lines = []
    for task in tasks:
        if table.sweep and not (rows["task"] == task).any():
            continue  # a size that has not run: no block
        size = {"model": task, "params": f"{task_params(task):,}"} if table.sweep else {}
        for label in table.methods:
            budgets = sorted(rows.loc[(rows["task"] == task) & (rows["method_label"] == label), "budget"].unique())
            for budget in reversed(budgets):
                cells = {**size, "method": label, "budget": f"{budget:g}"}
                for metric in table.columns:
                    point = metric_point(rows, task, label, repr(float(budget)), metric)
                    cells[metric] = "–" if point is None else _cell(point)
                lines.append(cells)
    return pd.DataFrame(lines, columns=[*lead, "method", "budget", *table.columns])


def _cell(point: Measured) -> str:
    return _number(point.value) + (f" [{_number(point.low)}, {_number(point.high)}]" if point.low is not None else "")


@dataclass(frozen=True)
class PaperOutput:
    """What one paper renders: the suite its numbers come from, claims judged, tables filled."""

    paper: Paper
    suite: str
    claims: list[ClaimResult]
    tables: list[tuple[PaperTable, pd.DataFrame]]
    made_from: str = ""  # which runs: how many, on which machines, at which commits, when (provenance())


def provenance(rows: pd.DataFrame) -> str:
    """What made ``rows`` (one paper's suite): runs, machines, commits and dates, as one sentence.

    A committed table must say where its numbers came from; every field is read from the rows
    (``machine``, ``git_sha``, ``dirty``, ``started_at``), so nothing here can drift from them. A
    machine is named without its target's description (``| device=…``: the hardware column says
    which target ran), so one host reads as one machine.
    """
    if rows.empty or "run_key" not in rows.columns:
        return ""
    runs = rows.drop_duplicates("run_key")

    def values(column: str) -> list[str]:
        return sorted({str(v) for v in runs[column].dropna()}) if column in runs.columns else []

    hosts = sorted({m.split(" | device=")[0] for m in values("machine")})
    machines = "; ".join(f"`{m}`" for m in hosts) or "an unrecorded machine"
    shas = [sha[:7] for sha in values("git_sha")]
    dirty = " (some with uncommitted changes)" if "dirty" in runs.columns and runs["dirty"].fillna(False).any() else ""
    commits = f" at commit{'s' if len(shas) > 1 else ''} {', '.join(shas)}{dirty}" if shas else ""
    days = sorted({d[:10] for d in values("started_at")})
    when = f", started {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "") if days else ""
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} on {machines}{commits}{when}"


def build(paper: Paper, rows: pd.DataFrame, samples: pd.DataFrame) -> PaperOutput:
    """Judge every claim and fill every table of ``paper`` from the results (rows, samples)."""
    suite, mine = suite_rows(paper, rows)
    keys = set(mine["run_key"]) if "run_key" in mine.columns else set()
    theirs = samples[samples["run_key"].isin(keys)] if not samples.empty and "run_key" in samples.columns else samples
    claims = claim_results(paper, suite, mine, theirs)
    tables = [(t, table_frame(paper, t, suite, mine)) for t in paper.tables]
    ran = mine
    if {"method_label", "hardware"} <= set(mine.columns):  # runs of this paper's methods on its targets only
        targets = {h.name for h in paper.suites[suite].hardware}
        on = mine["hardware"].astype(str).str.extract(r"^([^\[:]+)", expand=False).isin(targets)  # cuda:0[…] → cuda
        ran = mine[mine["method_label"].isin(paper.suite_methods(suite)) & on]
    return PaperOutput(paper, suite, claims, tables, provenance(ran))


def _quick_note(out: PaperOutput) -> str:
    """Quick suite: which small tasks stood in (the settings column describes the full suite)."""
    if out.suite != "quick":
        return ""
    roles = ", ".join(f"{role}: `{pair['quick']}` for `{pair['full']}`" for role, pair in out.paper.tasks.items())
    return f" — a first look on small tasks ({roles}); the settings column describes the full suite"


def _settings(claim: Claim) -> str:
    text = f"paper: {claim.paper_setting}; ours: {claim.our_setting}"
    return text + ("" if claim.comparable else f" — not comparable: {claim.not_comparable_because}")


def markdown(outputs: list[PaperOutput], figures: dict[str, str] | None = None) -> str:
    """Every paper's claims and tables as Markdown; ``figures``: table id → image link under it."""
    parts = []
    for out in outputs:
        p = out.paper
        parts += [f"## {p.id}: {p.title}", "",
                  f"{p.authors}, {p.venue}, <{p.url}>. Read: {p.sources}. Numbers from the **{out.suite}** suite "
                  f"(`bench paper run {p.id}{' --quick' if out.suite == 'quick' else ''}`){_quick_note(out)}."
                  + (f" Made from {out.made_from}." if out.made_from else ""), "",
                  "| claim | tag | paper | ours [95%] | settings | verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in out.claims:
            cells = [f"**{r.claim.id}**: {r.claim.text}", r.claim.tag, paper_text(r.claim), ours_text(r),
                     _settings(r.claim), f"**{r.verdict}**"]  # fmt: skip
            parts.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        for table, frame in out.tables:
            public = "" if table.regenerable else " The paper's table is not public: ours only."
            tasks = p.sweep_tasks(table.sweep, out.suite) if table.sweep else (p.task(table.task, out.suite),)
            parts += ["", f"### {table.id}: {table.title}", "", f"Paper: {table.paper_ref}.{public} "
                      f"Task{'s' if len(tasks) > 1 else ''}: {', '.join(f'`{t}`' for t in tasks)}."
                      f"{hardware_note(table.hardware)}", ""]  # fmt: skip
            parts.append(_md_table(frame) if not frame.empty else "_No runs of this table in the results._")
            if figures and table.id in figures:
                parts += ["", f"![{p.id} {table.id}: {table.figure}]({figures[table.id]})"]
        parts.append("")
    return "\n".join(parts)


def hardware_note(hardware: str) -> str:
    """What a table's rows were timed on, when it names a target; a modeled one says so."""
    from dynbench.hardware.base import HARDWARE

    if not hardware:
        return ""
    if HARDWARE.get(hardware).modeled:
        return (f" Hardware: {hardware}, modeled (dynbench's roofline model of the device from the counted FLOPs "
                "and bytes and its datasheet, not a measurement on it).")  # fmt: skip
    return f" Hardware: {hardware}."


def _md_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame``'s text cells."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
UNICODE = {"–": "--", "—": "---", "−": "-", "±": r"$\pm$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
           "Δ": r"$\Delta$", "β": r"$\beta$", "τ": r"$\tau$", "²": r"$^2$", "ó": r"\'o", "’": "'", "…": r"\dots{}",
           "→": r"$\rightarrow$", "^-1": r"$^{-1}$"}  # fmt: skip


def latex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX document (pdflatex, no unicode packages needed)."""
    out = "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    for char, macro in UNICODE.items():
        out = out.replace(char, macro)
    return out


def latex(outputs: list[PaperOutput]) -> str:
    """Every paper's claims and tables as booktabs tables (for an ``article`` with ``booktabs``)."""
    parts = []
    for out in outputs:
        p = out.paper
        if out.made_from:
            parts.append(f"% {p.id}: made from {out.made_from}".replace("\n", " "))
        parts += [r"\begin{table}[ht]", r"\centering\small",
                  rf"\caption{{{latex_escape(p.title)} (arXiv {p.arxiv}): claims, {out.suite} suite}}",
                  r"\begin{tabular}{p{4.2cm}lp{2.4cm}p{3.4cm}l}", r"\toprule",
                  r"claim & tag & paper & ours [95\%] & verdict \\", r"\midrule"]  # fmt: skip
        for r in out.claims:
            cells = [r.claim.text, r.claim.tag, paper_text(r.claim), ours_text(r), r.verdict]
            parts.append(" & ".join(latex_escape(c) for c in cells) + r" \\")
        parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        for table, frame in out.tables:
            if frame.empty:
                continue
            spec = "l" * len(frame.columns)
            parts += [r"\begin{table}[ht]", r"\centering\small",
                      rf"\caption{{{latex_escape(p.id)} {latex_escape(table.id)}: {latex_escape(table.title)}"
                      rf"{latex_escape(hardware_note(table.hardware))}}}",
                      rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                      " & ".join(latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]  # fmt: skip
            for row in frame.itertuples(index=False):
                parts.append(" & ".join(latex_escape(str(c)) for c in row) + r" \\")
            parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(parts)


def csv_text(outputs: list[PaperOutput]) -> str:
    """Long rows: one per claim point (with its verdict) and one per table cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["paper", "suite", "kind", "id", "method", "budget", "metric", "value", "ci_low", "ci_high",
                     "paper_value", "tag", "verdict", "hardware", "task"])  # fmt: skip
    for out in outputs:
        for r in out.claims:
            m = r.claim.measure
            paper_value = "" if r.claim.paper_value is None else r.claim.paper_value
            for point in r.points or (None,):
                values = ("", "", "", "") if point is None else (point.budget, point.value, point.low, point.high)
                task = "" if point is None else point.where
                writer.writerow([out.paper.id, out.suite, "claim", r.claim.id, m.method, values[0], m.metric or m.kind,
                                 *values[1:], paper_value, r.claim.tag, r.verdict, m.hardware, task])  # fmt: skip
        for table, frame in out.tables:
            task = out.paper.task(table.task, out.suite)
            for row in frame.itertuples(index=False):
                for metric in table.columns:
                    writer.writerow([out.paper.id, out.suite, "table", table.id, row.method, row.budget, metric,
                                     getattr(row, metric), "", "", "", "", "", table.hardware,
                                     getattr(row, "model", task)])  # fmt: skip
    return buffer.getvalue()


def render(outputs: list[PaperOutput], fmt: str) -> str:
    """``outputs`` in ``fmt`` (one of :data:`FORMATS`)."""
    return {"md": markdown, "latex": latex, "csv": csv_text}[fmt](outputs)
