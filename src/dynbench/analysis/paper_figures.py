"""Figures of the report's Papers pages drawn from a paper table's own rows (not the task's plots).

A paper table names one in its ``figure:`` field (:data:`PAPER_FIGURES`):

- ``quality_layers_oracle`` (Glavas T1 + T3): quality against the fraction of layers executed for
  every method of the paper's tables on that role that record ``mean_layers`` (static early exit,
  layer skipping in both patterns, the oracle), the oracle's matching point (``matching_budget``:
  the smallest budget at which it matches the full model) marked and labelled, and the paper's
  own number — the ``paper_value`` of the claim that measures ``matching_budget`` — as a labelled
  vertical reference line;
- ``isoflop_bars`` (MoD M1): quality per model size of the table's sweep, dense against MoD (each
  size's best MoD operating point below the full budget), with the 95% intervals as error bars.

Every number comes from :mod:`dynbench.papers.measures` over the suite's stored rows, as the
tables do; nothing is recomputed. Figures are :class:`matplotlib.figure.Figure` objects saved
directly (no pyplot, no GUI backend), in the style of :mod:`dynbench.analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dynbench.analysis.plots import PLOT_DPI, PLOT_MARKERS, PLOT_RC, scale_y
from dynbench.papers.measures import Measured, metric_point, task_params
from dynbench.papers.registry import Paper, PaperTable


def _budgets(rows: pd.DataFrame, task: str, label: str) -> list[float]:
    """The budgets ``label`` ran at on ``task``, largest first."""
    mine = rows[(rows["task"] == task) & (rows["method_label"] == label)]
    return sorted((float(b) for b in mine["budget"].unique()), reverse=True)


def _yerr(points: list[Measured]) -> np.ndarray | None:
    """``(2, n)`` error bars from the points' intervals; None when no point has one."""
    below = [p.value - p.low if p.low is not None else 0.0 for p in points]
    above = [p.high - p.value if p.high is not None else 0.0 for p in points]
    err = np.clip(np.array([below, above], dtype=float), 0.0, None)
    return err if (err > 0).any() else None


def _quality_label(rows: pd.DataFrame) -> str:
    """The quality axis' label: the unit and which way is better."""
    q = rows[rows["metric"] == "quality"]
    if q.empty:
        return "quality"
    unit = str(q["unit"].iloc[0]) if "unit" in q.columns else ""
    better = "higher" if bool(q["higher_is_better"].iloc[0]) else "lower"
    return f"quality ({unit}, {better} is better)" if unit else f"quality ({better} is better)"


def _save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def quality_layers_oracle(paper: Paper, table: PaperTable, suite: str, rows: pd.DataFrame, out: Path) -> Path | None:
    """Quality against the fraction of layers executed, the oracle's matching point and the paper's.

    Returns:
        The PNG written, or None when no method of the figure has rows with ``mean_layers``.
    """
    task = paper.task(table.task, suite)
    labels = [m for t in paper.tables if t.task == table.task and "mean_layers" in t.columns for m in t.methods]
    labels = list(dict.fromkeys(labels))  # T1's methods then T3's oracle, once each
    curves: dict[str, tuple[np.ndarray, list[Measured]]] = {}
    for label in labels:
        xs, ys = [], []
        for b in _budgets(rows, task, label):
            layers = metric_point(rows, task, label, repr(b), "mean_layers")
            quality = metric_point(rows, task, label, repr(b), "quality")
            if layers is None or quality is None:
                continue
            xs.append(layers.value)
            ys.append(quality)
        if xs:
            curves[label] = (np.array(xs, dtype=float), ys)
    if not curves:
        return None
    n_layers = max(float(xs.max()) for xs, _ in curves.values())  # a full budget runs every block
    if n_layers <= 0:
        return None
    with mpl.rc_context(PLOT_RC):
        fig = Figure(figsize=(9.5, 5.5), dpi=PLOT_DPI, layout="constrained")
        ax = fig.add_subplot()
        all_y = []
        for i, (label, (xs, ys)) in enumerate(curves.items()):
            oracle = rows.loc[rows["method_label"] == label, "upper_bound"].astype(bool).any() \
                if "upper_bound" in rows.columns else label == "oracle"  # fmt: skip
            y = np.array([p.value for p in ys], dtype=float)
            all_y += list(y)
            ax.errorbar(xs / n_layers, y, yerr=_yerr(ys), marker=PLOT_MARKERS[i % len(PLOT_MARKERS)], capsize=3,
                        ls="--" if oracle else "-", label=f"{label}{' (upper bound)' if oracle else ''}")  # fmt: skip
        _mark_matching(ax, paper, table, task, rows)
        scale_y(ax, np.array(all_y))
        ax.set_xlabel("fraction of layers executed (mean over samples)")
        ax.set_ylabel(_quality_label(rows))
        ax.set_title(f"{paper.id}: quality against layers executed on {task} ({suite} suite)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
        return _save(fig, out)


def _mark_matching(ax: Axes, paper: Paper, table: PaperTable, task: str, rows: pd.DataFrame) -> None:
    """The oracle's matching point (from its rows) and the paper's number (from its claim)."""
    for claim in paper.claims:
        m = claim.measure
        if m.metric != "matching_budget" or m.task != table.task:
            continue
        point = metric_point(rows, task, m.method, m.budget, "matching_budget")
        if point is not None:
            quality = metric_point(rows, task, m.method, repr(point.value), "quality") or metric_point(
                rows, task, m.method, "1.0", "quality"
            )  # the matching budget's own point when it ran, else the full model's level it matches
            if quality is not None:
                ax.plot([point.value], [quality.value], marker="*", ms=18, color="black", zorder=6, ls="none")
                ax.annotate(f"{m.method} matches the full model at {point.value:.1%} of layers",
                            (point.value, quality.value), xytext=(10, 12), textcoords="offset points",
                            fontsize=9, arrowprops={"arrowstyle": "-", "color": "black"})  # fmt: skip
        if claim.paper_value is not None:
            ax.axvline(claim.paper_value, color="grey", ls=":", lw=1.5)
            ax.annotate(f"paper: {claim.paper_value:.1%} ({claim.paper_setting.split(',')[0]})",
                        (claim.paper_value, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                        xytext=(4, 0), textcoords="offset points", fontsize=8.5, color="dimgrey")  # fmt: skip


def isoflop_bars(paper: Paper, table: PaperTable, suite: str, rows: pd.DataFrame, out: Path) -> Path | None:
    """Quality per model size: dense against the best MoD point, each with its 95% interval.

    Returns:
        The PNG written, or None when no size of the sweep has a dense run.
    """
    if not table.sweep:
        return None
    q = rows[rows["metric"] == "quality"]
    higher = bool(q["higher_is_better"].iloc[0]) if not q.empty else True
    dense = "dense" if "dense" in table.methods else table.methods[0]
    sizes = []
    for task in paper.sweep_tasks(table.sweep, suite):
        base = metric_point(rows, task, dense, "1.0", "quality")
        if base is None:
            continue
        below = [(label, b) for label in table.methods if label != dense for b in _budgets(rows, task, label) if b < 1]
        mods = [(metric_point(rows, task, label, repr(b), "quality"), label, b) for label, b in below]
        mods = [m for m in mods if m[0] is not None]
        best = max(mods, key=lambda m: m[0].value if higher else -m[0].value) if mods else None
        sizes.append((task_params(task), task, base, best))
    if not sizes:
        return None
    sizes.sort()
    with mpl.rc_context(PLOT_RC):
        fig = Figure(figsize=(9.5, 5.5), dpi=PLOT_DPI, layout="constrained")
        ax = fig.add_subplot()
        x = np.arange(len(sizes), dtype=float)
        width = 0.38
        dense_pts = [s[2] for s in sizes]
        ax.bar(x - width / 2, [p.value for p in dense_pts], width, yerr=_yerr(dense_pts), capsize=4,
               color="0.55", label=f"{dense} (full budget)")  # fmt: skip
        have = [i for i, s in enumerate(sizes) if s[3] is not None]
        mod_pts = [sizes[i][3][0] for i in have]
        if have:
            ax.bar(x[have] + width / 2, [p.value for p in mod_pts], width, yerr=_yerr(mod_pts), capsize=4,
                   color="tab:blue", label="MoD, best capacity (same training FLOPs as its dense twin)")  # fmt: skip
            for i, p in zip(have, mod_pts):
                top = p.high if p.high is not None else p.value  # above the error bar
                ax.annotate(f"c={sizes[i][3][2]:g}", (x[i] + width / 2, top), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8.5)  # fmt: skip
        values = [p.value for p in dense_pts + mod_pts]
        lo, hi = min(values), max(values)
        pad = 0.6 * (hi - lo) if hi > lo else 0.05 * abs(hi) or 1.0
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)  # differences, not zero, are the story
        ax.set_xticks(x, [f"{_size_name(task)}\n{params:,} params" for params, task, *_ in sizes])
        ax.set_xlabel("model size (each trained with the task's recipe)")
        ax.set_ylabel(_quality_label(rows))
        ax.set_title(f"{paper.id} {table.id}: dense vs MoD per model size at equal training FLOPs ({suite} suite)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="best")
        return _save(fig, out)


def learner_hist(paper: Paper, table: PaperTable, suite: str, rows: pd.DataFrame, out: Path) -> Path | None:
    """ACM's per-token learner counts: the share of tokens running k learners, per budget (Fig. 5).

    One group of bars per budget below the full one, a bar per k, from the ``learner_share_k*`` rows
    (means over seeds); the paper's reading — most tokens need 2–3 of 4 — is shaded.

    Returns:
        The PNG written, or None when no run holds learner shares.
    """
    task = paper.task(table.task, suite)
    label = table.methods[0]
    frame = rows[(rows["task"] == task) & (rows["method_label"] == label)]
    shares = frame[frame["metric"].str.match(r"^learner_share_k\d+$")]
    shares = shares[shares["budget"] < 1.0]
    if shares.empty:
        return None
    ks = sorted({int(m.rsplit("k", 1)[1]) for m in shares["metric"]})
    budgets = sorted(shares["budget"].unique(), reverse=True)
    means = shares.groupby(["budget", "metric"])["value"].mean()
    with mpl.rc_context(PLOT_RC):
        fig = Figure(figsize=(9.5, 5.0), dpi=PLOT_DPI, layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(budgets)
        x = np.arange(len(ks), dtype=float)
        for i, b in enumerate(budgets):
            heights = [float(means.get((b, f"learner_share_k{k}"), 0.0)) for k in ks]
            ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=f"β = {b:g}")
        if {2, 3} <= set(ks):
            lo, hi = ks.index(2) - 0.5, ks.index(3) + 0.5
            ax.axvspan(lo, hi, color="0.9", zorder=0, label="the paper: most tokens need 2–3")
        ax.set_xticks(x, [f"{k} learner{'s' if k != 1 else ''}" for k in ks])
        ax.set_ylabel("share of tokens")
        ax.set_ylim(0, 1)
        ax.set_title(f"{paper.id} {table.id}: learners per token, {label} on {task} ({suite} suite)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="best")
        return _save(fig, out)


def _size_name(task: str) -> str:
    """A sweep task's options (``model.d_model=64``), or ``default`` for the role's own task."""
    return task.split("[", 1)[1].rstrip("]").replace(",", "\n") if "[" in task else "default"


FigureFn = Callable[[Paper, PaperTable, str, pd.DataFrame, Path], "Path | None"]
PAPER_FIGURES: dict[str, FigureFn] = {
    "quality_layers_oracle": quality_layers_oracle,
    "isoflop_bars": isoflop_bars,
    "learner_hist": learner_hist,
}
"""Figures drawn from a table's rows, by the ``figure:`` value that names them."""


def draw(paper: Paper, table: PaperTable, suite: str, rows: pd.DataFrame, out: Path) -> Path | None:
    """Draw ``table``'s figure from ``rows`` (one suite's) into ``out``; None when it has no data.

    Raises:
        ValueError: ``table.figure`` is not a figure of this module (the task plots are drawn by
            the report itself).
    """
    if table.figure not in PAPER_FIGURES:
        raise ValueError(
            f"Unknown paper figure '{table.figure}' for table {table.id}. Available: {', '.join(PAPER_FIGURES)}."
        )
    return PAPER_FIGURES[table.figure](paper, table, suite, rows, out)
