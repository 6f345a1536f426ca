"""The roofline model checked against measured latency: modeled ÷ measured per operating point.

A modeled target prices each call from its FLOPs and bytes (:mod:`dynbench.hardware.roofline`); its
goal is "within 2× of measured latency per operating point, and the same ranking of methods". Where
a results folder holds a modeled target's rows *and* the measured rows that check it — the target's
``checked_against``: ``cpu-roofline`` is checked by ``cpu`` at the same dtype, ``h100`` by ``cuda``
rows measured on an H100 — this sets the two side by side on the same runs (task, method, budget,
seed, batch size): latency, its ratio, the realized speedups, and whether the model orders the
operating points and the methods as the clock does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dynbench.analysis.tables import as_bool
from dynbench.config import parse_plugin
from dynbench.hardware.base import HARDWARE

WITHIN = 2.0
"""The model's goal: modeled latency within this factor of measured (issue 17, item 6)."""

_KEY = ["task", "method_label", "budget", "batch_size", "seed"]


@dataclass(frozen=True)
class CheckPair:
    """A modeled target's rows and the measured rows that check them."""

    modeled: str  # the modeled rows' ``hardware`` label, e.g. ``cpu-roofline[dtype=bf16]``
    measured: str  # the measured rows' ``hardware`` label, e.g. ``cpu[dtype=bf16]``
    dtype: str  # both rows' dtype


def _base(label: str) -> str:
    """``cpu[dtype=bf16]`` → ``cpu``."""
    return parse_plugin(str(label)).name


def check_pairs(rows: pd.DataFrame) -> list[CheckPair]:
    """Each (modeled, measured) pair of hardware labels in ``rows``: measured rows checking a model.

    A modeled label is paired with each measured label of its target's ``checked_against`` target
    whose rows have the same dtype and a device name (the ``machine`` column) holding the piece it
    names. Labels of targets no longer registered are skipped.
    """
    if rows.empty or not {"hardware", "modeled", "dtype", "machine"} <= set(rows.columns):
        return []
    modeled = rows["modeled"].map(as_bool)  # rows written before the column: NaN, measured
    pairs = []
    for (label, dtype), _ in rows[modeled].groupby(["hardware", "dtype"]):
        name = _base(label)
        if name not in HARDWARE:
            continue
        against = HARDWARE.get(name).checked_against
        if against is None:
            continue
        target, piece = against
        measured = rows[~modeled & (rows["dtype"] == dtype) & (rows["hardware"].map(_base) == target)]
        measured = measured[measured["machine"].astype(str).str.contains(piece, regex=False)]
        pairs += [CheckPair(str(label), str(m), str(dtype)) for m in sorted(set(measured["hardware"]))]
    return pairs


def roofline_check(rows: pd.DataFrame, pair: CheckPair) -> pd.DataFrame:
    """Per operating point both targets ran: latency and realized speedup, modeled and measured.

    Matched run by run (task, method label, budget, batch size, seed), then averaged over the seeds
    both have. Columns: ``task, method_label, budget, batch_size, seeds, measured_ms, modeled_ms,
    ratio`` (modeled ÷ measured mean latency), ``within`` (the ratio within :data:`WITHIN`×),
    ``speedup_measured, speedup_modeled``.
    """
    metrics = rows[rows["metric"].isin(["latency_ms", "speedup_realized"])]
    side = {}
    for name, label in (("modeled", pair.modeled), ("measured", pair.measured)):
        own = metrics[(metrics["hardware"] == label) & (metrics["dtype"] == pair.dtype)]
        side[name] = own.pivot_table(index=_KEY, columns="metric", values="value", aggfunc="mean").add_suffix(
            f"_{name}"
        )
    both = side["measured"].join(side["modeled"], how="inner")
    if both.empty:
        return pd.DataFrame(columns=[*_KEY[:-1], "seeds", "measured_ms", "modeled_ms", "ratio", "within"])
    both = both.reset_index()
    out = both.groupby(_KEY[:-1], as_index=False).agg(
        seeds=("seed", "nunique"),
        measured_ms=("latency_ms_measured", "mean"),
        modeled_ms=("latency_ms_modeled", "mean"),
        speedup_measured=("speedup_realized_measured", "mean"),
        speedup_modeled=("speedup_realized_modeled", "mean"),
    )
    out["ratio"] = out["modeled_ms"] / out["measured_ms"]
    out["within"] = (out["ratio"] >= 1 / WITHIN) & (out["ratio"] <= WITHIN)
    return out


def concordance(measured: np.ndarray, modeled: np.ndarray) -> tuple[int, int]:
    """Pairs of points both order alike, and pairs both order (a tie on either side is no pair)."""
    alike = ordered = 0
    for i in range(len(measured)):
        for j in range(i + 1, len(measured)):
            a, b = np.sign(measured[i] - measured[j]), np.sign(modeled[i] - modeled[j])
            if a != 0 and b != 0:
                ordered += 1
                alike += int(a == b)
    return alike, ordered


def method_order(points: pd.DataFrame, column: str) -> list[str]:
    """Method labels by their mean ``column`` over their operating points, highest first."""
    return list(points.groupby("method_label")[column].mean().sort_values(ascending=False, kind="stable").index)


def _fmt(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.3g}"


def check_markdown(rows: pd.DataFrame, task: str) -> str | None:
    """The report's "Roofline model vs measured" section for ``task``, or None without a pair."""
    rows = rows[rows["task"] == task]
    blocks = []
    for pair in check_pairs(rows):
        check = roofline_check(rows, pair)
        for batch, points in check.groupby("batch_size"):
            points = points.sort_values(["method_label", "budget"])
            alike, ordered = concordance(points["speedup_measured"].to_numpy(), points["speedup_modeled"].to_numpy())
            clock, model = method_order(points, "speedup_measured"), method_order(points, "speedup_modeled")
            ratios = points["ratio"]
            summary = (
                f"{int(points['within'].sum())} of {len(points)} operating points modeled within {WITHIN:g}× of "
                f"measured latency (modeled ÷ measured {ratios.min():.2f}–{ratios.max():.2f}); realized speedups "
                f"ordered alike in {alike} of {ordered} pairs of operating points; methods by mean speedup — "
                f"measured: {' > '.join(clock)}; modeled: {' > '.join(model)} "
                f"({'the same order' if clock == model else 'a different order'})."
            )
            table = [
                "| method | budget | seeds | measured ms | modeled ms | modeled ÷ measured "
                "| speedup measured | speedup modeled |",
                "|---|---|---|---|---|---|---|---|",
                *(
                    f"| {p.method_label} | {p.budget:g} | {p.seeds} | {_fmt(p.measured_ms)} | {_fmt(p.modeled_ms)} "
                    f"| {p.ratio:.2f}{'' if p.within else ' (outside 2×)'} | {_fmt(p.speedup_measured)} "
                    f"| {_fmt(p.speedup_modeled)} |"
                    for p in points.itertuples()
                ),
            ]
            title = f"#### `{pair.modeled}` vs `{pair.measured}` ({pair.dtype}), batch {int(batch)}"
            blocks.append("\n\n".join([title, summary, "\n".join(table)]))
    return "\n\n".join(blocks) or None
