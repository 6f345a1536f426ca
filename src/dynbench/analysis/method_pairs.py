"""Every method against every other at equal FLOPs: which methods a task tells apart.

:func:`dynbench.analysis.controls.compare_to_controls` compares a learned controller with its own
static and random controls; this module runs the same paired comparison
(:func:`~dynbench.analysis.controls.compare_at_equal_flops`: the other method's curve mixed to the
same mean FLOPs per sample, scored on the same samples) for every ordered pair of deployable
methods in a task, so a reader sees whether the task separates them at all. Upper bounds (the
oracle) and methods with only a full-budget point (dense) are left out: they have no curve to
compare. The low-compute regime — at most :data:`LOW_COMPUTE` of dense FLOPs — is where dynamic
methods earn their keep, so each pair also names its clearest separation there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynbench.analysis.controls import compare_at_equal_flops
from dynbench.analysis.tables import format_sig, quality_formats, quality_scale, upper_bound_mask

__all__ = ["LOW_COMPUTE", "PAIR_COLUMNS", "method_pairs", "pairs_markdown"]

LOW_COMPUTE = 0.6
"""FLOPs ratio (of dense) at or below which a point counts as low-compute."""
GAINS = frozenset({"better", "better, fewer FLOPs"})
LOSSES = frozenset({"worse", "worse, more FLOPs"})
TIES = frozenset({"tie", "as good, fewer FLOPs", "as good, more FLOPs"})
RESOLVED = GAINS | LOSSES
"""Verdicts whose quality interval excludes 0: the two methods are told apart (``as good, fewer
FLOPs`` is cheaper but a tie in quality, so it is counted with the ties)."""
PAIR_COLUMNS = (
    "method", "against", "points", "better", "worse", "tie", "not_comparable",
    "budget", "flops_ratio", "delta", "ci_low", "ci_high", "ci_over", "verdict",
)  # fmt: skip
"""One row per ordered pair: verdict counts over ``method``'s points below its full budget, then
the low-compute point with the largest resolved difference (else the lowest-FLOPs one)."""


def curve_labels(summary: pd.DataFrame, task: str) -> list[str]:
    """Labels of ``task`` with a curve: not an upper bound, and a point below their full budget."""
    frame = summary[summary["task"] == task]
    frame = frame[~upper_bound_mask(frame)]
    labels = []
    for label, grp in frame.groupby("method_label", sort=True):
        if (grp["budget"] < grp["budget"].max()).any():
            labels.append(str(label))
    return labels


def method_pairs(samples: pd.DataFrame, summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """A :data:`PAIR_COLUMNS` row per ordered pair of :func:`curve_labels` with compared points."""
    labels = curve_labels(summary, task)
    rows = []
    for method in labels:
        for against in labels:
            if method == against:
                continue
            table = compare_at_equal_flops(samples, summary, task, method, against)
            if table.empty:
                continue
            verdicts = table["verdict"]
            counts = (
                int(verdicts.isin(GAINS).sum()),
                int(verdicts.isin(LOSSES).sum()),
                int(verdicts.isin(TIES).sum()),
            )
            rows.append((method, against, len(table), *counts, len(table) - sum(counts), *_clearest_low(table)))
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def _clearest_low(table: pd.DataFrame) -> tuple:
    """``(budget, flops_ratio, delta, low, high, over, verdict)`` of the clearest low point."""
    low = table[table["flops_ratio"] <= LOW_COMPUTE]
    if low.empty:
        return (np.nan, np.nan, np.nan, np.nan, np.nan, "", "no point at ≤ 60% FLOPs")
    resolved = low[low["verdict"].isin(RESOLVED)]
    pick = (
        resolved.loc[resolved["delta"].abs().idxmax()] if not resolved.empty else low.loc[low["flops_ratio"].idxmin()]
    )
    return tuple(pick[c] for c in ("budget", "flops_ratio", "delta", "ci_low", "ci_high", "ci_over", "verdict"))


def pairs_markdown(samples: pd.DataFrame, summary: pd.DataFrame, task: str) -> str | None:
    """``task``'s pairs as a paragraph and a table; ``None`` with fewer than two curves."""
    table = method_pairs(samples, summary, task)
    if table.empty:
        return None
    frame = summary[summary["task"] == task]
    unit = str(frame["quality_unit"].dropna().iloc[0]) if frame["quality_unit"].notna().any() else "quality"
    factor, q_label = quality_scale(unit, table["delta"].dropna().abs())
    _, d_fmt = quality_formats(factor)
    separated = table[table["verdict"].isin(RESOLVED)]
    pairs = {frozenset(p) for p in zip(separated["method"], separated["against"], strict=True)}
    lines = [
        "Each method's operating points against every other method's curve at the same mean FLOPs per sample "
        "(the other curve mixed between its two nearest budgets, both scored on the same samples; Δ > 0: the "
        "first method better; 95% interval: paired bootstrap over samples with one seed, t over per-seed "
        f"differences with more; a verdict is better / worse only when the interval excludes 0). At ≤ "
        f"{LOW_COMPUTE:.0%} of dense FLOPs, **{len(pairs)} pair(s) of methods are told apart**; the last columns "
        f"show each pair's clearest such point; n/c: not comparable (one curve ends before the other's point, "
        f"and the cheaper side is also worse). Δ in {q_label}.",
        "",
        "| method | vs | points | better | worse | tie | n/c | budget | FLOPs ratio | Δ [95%] | over | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in table.itertuples():
        has_point = np.isfinite(row.delta)
        interval = f"{d_fmt(row.delta)} [{d_fmt(row.ci_low)}, {d_fmt(row.ci_high)}]" if has_point else "–"
        counts = (row.points, row.better, row.worse, row.tie, row.not_comparable)
        cells = [row.method, row.against, *map(str, counts)]
        cells += [f"{row.budget:.3g}" if has_point else "–", format_sig(row.flops_ratio) if has_point else "–"]
        cells += [interval, row.ci_over or "–", row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
