"""A learned controller against its static and random controls at equal FLOPs.

A learned per-sample controller (tinv's policy, dht's bandits, early exit's confidence rule, MoD's
router) shows that it adapts to the input only if it beats the *static* control (the best single
fixed configuration at the same mean FLOPs, chosen on validation data) and not only *random*
allocation. Each method names its controls in ``Method.controls`` (``kind → options``), so
``tinv[policy=static]`` is tinv's static control and ``mod[router=random]`` MoD's random one; the
harness records the relation on every control run (``control_of``, ``control_kind``), so nothing
here names or looks up a method.

A control is calibrated on fit data, so on the evaluation split it rarely lands on the learned
point's FLOPs. Each learned operating point is therefore compared with the control's curve at the
same mean FLOPs per sample: between two control budgets, the control is the *mixture* that runs a
share ``w`` of the samples at one and the rest at the other, which has exactly the interpolated
FLOPs; per sample its score is ``w·s₁ + (1−w)·s₂`` (in the task's score space — NLL for perplexity —
and transformed after) — unless one of the control's operating points that costs no more is better,
which it then is (a control whose quality falls as it spends more can run that point instead; on a
curve that rises with FLOPs, the usual one, the mixture is the better and nothing changes). Learned
and control are then scored on the same samples, so the difference has a paired interval: a
bootstrap over samples with one seed, a t-interval over the per-seed differences with two or more.
The verdict is :func:`dynbench.stats.verdict`'s better / worse / tie.

Outside the control's FLOPs range a point is compared with the nearest control point and counts only
where one side dominates: ``better, fewer FLOPs`` / ``as good, fewer FLOPs`` (a tie) when the
learned point is cheaper, ``worse, more FLOPs`` / ``as good, more FLOPs`` when it is costlier;
otherwise it is ``not comparable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dynbench.registry import RegistryError
from dynbench.stats import bootstrap, seed_interval, verdict

if TYPE_CHECKING:
    from dynbench.tasks.base import QualityMetric

__all__ = ["COMPARISON_COLUMNS", "WINS", "compare_at_equal_flops", "compare_to_controls", "control_pairs"]

WINS = frozenset({"better", "better, fewer FLOPs", "as good, fewer FLOPs"})
"""Verdicts in which the learned point wins.

At least as good at no more FLOPs, and resolved ahead on one of the two.
"""
COMPARISON_COLUMNS = (
    "learned", "control", "kind", "budget", "seeds", "flops_ratio", "quality", "control_quality",
    "delta", "ci_low", "ci_high", "ci_over", "verdict",
)  # fmt: skip


@dataclass(frozen=True)
class ControlPair:
    """A learned configuration and one of its controls, both present in the results."""

    learned: str  # method label of the learned configuration
    control: str  # method label of the control
    kind: str  # "static" or "random" (a key of Method.controls)


def control_pairs(points: pd.DataFrame) -> list[ControlPair]:
    """Every (learned, control) pair among the operating points.

    The pairs come from the rows' ``control_of``/``control_kind``: the harness records on each
    control run which learned configuration it controls (the method's class declares its controls in
    ``Method.controls``), so nothing here looks a method up. A control whose learned twin did not
    run pairs nothing.

    Args:
        points: rows or a summary with ``method_label`` and, for control runs, ``control_of`` and
            ``control_kind``.
    """
    if points.empty or not {"control_of", "control_kind"} <= set(points.columns):
        return []
    present = set(points["method_label"].astype(str))
    marked = points[points["control_of"].fillna("").astype(str) != ""]
    pairs = {
        ControlPair(str(learned), str(label), str(kind))
        for label, learned, kind in zip(marked["method_label"], marked["control_of"], marked["control_kind"])
        if str(learned) in present
    }
    return sorted(pairs, key=lambda p: (p.learned, p.kind != "static", p.control))


def _points(samples: pd.DataFrame, label: str) -> dict[int, dict[float, pd.DataFrame]]:
    """``seed → budget → per-sample (score, flops)`` indexed by sample id, for one method label."""
    mine = samples[samples["method_label"] == label]
    out: dict[int, dict[float, pd.DataFrame]] = {}
    for (seed, budget), grp in mine.groupby(["seed", "budget"]):
        out.setdefault(int(seed), {})[float(budget)] = grp.set_index("sample_id")[["score", "flops"]].sort_index()
    return out


def _control_at(
    curve: dict[float, pd.DataFrame], x: float, goodness: Callable[[pd.Series], float]
) -> tuple[pd.Series, str]:
    """The control's per-sample scores at mean FLOPs ``x``, and where ``x`` lies.

    The control at ``x`` is the mixture of its two budgets around ``x`` — unless one of its
    operating points that costs no more than ``x`` is better (``goodness``: higher is better), which
    it then is: a control whose quality falls as it spends more (MoD's random routing, each capacity
    trained for the same training FLOPs) can always run that cheaper point instead. On a curve that
    rises with FLOPs the mixture is the better, so nothing changes there.

    Where: inside, below or above the control's range.
    """
    pts = sorted(curve.values(), key=lambda f: float(f["flops"].mean()))
    xs = [float(f["flops"].mean()) for f in pts]
    if x < xs[0]:
        return pts[0]["score"], "below"
    j = min(int(np.searchsorted(xs, x, side="right")) - 1, len(xs) - 1)  # the costliest point <= x
    if x > xs[-1]:
        at, where = pts[-1]["score"], "above"
    elif j == len(xs) - 1 or xs[j + 1] == xs[j]:
        at, where = pts[j]["score"], "inside"
    else:
        w = (xs[j + 1] - x) / (xs[j + 1] - xs[j])  # share of samples run at the cheaper budget j
        at, where = w * pts[j]["score"] + (1.0 - w) * pts[j + 1]["score"], "inside"
    cheaper = max((p["score"] for p in pts[: j + 1]), key=goodness)  # the best point costing <= x
    return (cheaper if goodness(cheaper) > goodness(at) else at), where


def _edge_verdict(where: str, v: str) -> str:
    if where == "below":
        return {"better": "better, fewer FLOPs", "tie": "as good, fewer FLOPs"}.get(v, "not comparable")
    if where == "above":
        return {"worse": "worse, more FLOPs", "tie": "as good, more FLOPs"}.get(v, "not comparable")
    return v


def _metric_of(task: str) -> QualityMetric | None:
    from dynbench.config import ConfigError, parse_plugin
    from dynbench.tasks.base import TASKS

    try:  # rows name a task with options by its label, ``shakespeare[model.d_model=64]``
        return TASKS.get(parse_plugin(task).name).metric
    except (RegistryError, ConfigError):
        return None


def compare_to_controls(
    samples: pd.DataFrame, summary: pd.DataFrame, task: str, *, metric: QualityMetric | None = None
) -> pd.DataFrame:
    """Every learned operating point below the full budget against each control at equal FLOPs.

    Args:
        samples: per-sample records (``method_label``, ``budget``, ``seed``, ``hardware``,
            ``sample_id``, ``score``, ``flops``); one hardware target's records are used (quality
            and FLOPs do not depend on it).
        summary: :func:`dynbench.analysis.tables.summary_frame` of the same results: the quality's
            direction, the FLOPs ratios, and which budget is each method's full one (the largest it
            ran).
        task: the task to compare on.
        metric: how a mean per-sample score becomes the task's quality (``from_mean``); default: the
            registered task's metric (identity when the task is not registered).

    Returns:
        One row per (learned point, control) with :data:`COMPARISON_COLUMNS`: ``quality`` and
        ``control_quality`` are means over the seeds both ran, ``delta`` the mean difference
        oriented so that positive means the learned point is better, ``ci_low``/``ci_high`` its 95%
        interval (``ci_over``: ``samples`` with one seed, ``N seeds`` with more) and ``verdict``
        better / worse / tie, or an outside-the-range verdict of the module docstring. :data:`WINS`
        are the verdicts that count for the learned side.
    """
    need = {"task", "method_label", "budget", "seed", "sample_id", "score", "flops"}
    empty = pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    if samples is None or samples.empty or not need <= set(samples.columns):
        return empty
    frame = samples[samples["task"] == task]
    points = summary[summary["task"] == task]
    if frame.empty or points.empty:
        return empty
    if "hardware" in frame.columns:
        frame = frame[frame["hardware"] == frame["hardware"].min()]
    metric = metric or _metric_of(task)
    transform = metric.from_mean if metric is not None else (lambda m: m)
    sign = 1.0 if bool(points["quality_higher_is_better"].dropna().iloc[0]) else -1.0
    out = []
    for pair in control_pairs(points):
        out += _compare_labels(frame, points, pair.learned, pair.control, pair.kind, transform, sign)
    return pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))


def compare_at_equal_flops(
    samples: pd.DataFrame,
    summary: pd.DataFrame,
    task: str,
    method: str,
    against: str,
    *,
    metric: QualityMetric | None = None,
) -> pd.DataFrame:
    """Every operating point of ``method`` below its full budget against ``against``'s curve.

    The same paired comparison at equal mean FLOPs as :func:`compare_to_controls`, for any two
    method labels (early exit against layer skipping, say); ``kind`` is empty. Arguments and result
    as there.
    """
    frame = samples[(samples["task"] == task) & samples["method_label"].isin([method, against])]
    points = summary[summary["task"] == task]
    if frame.empty or points.empty:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    if "hardware" in frame.columns:
        frame = frame[frame["hardware"] == frame["hardware"].min()]
    metric = metric or _metric_of(task)
    transform = metric.from_mean if metric is not None else (lambda m: m)
    sign = 1.0 if bool(points["quality_higher_is_better"].dropna().iloc[0]) else -1.0
    rows = _compare_labels(frame, points, method, against, "", transform, sign)
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _compare_labels(
    frame: pd.DataFrame,
    points: pd.DataFrame,
    learned_label: str,
    control_label: str,
    kind: str,
    transform: Callable[[np.ndarray], np.ndarray],
    sign: float,
) -> list[tuple]:
    """A :data:`COMPARISON_COLUMNS` row per point of ``learned_label`` below its full budget."""
    learned, control = _points(frame, learned_label), _points(frame, control_label)
    ratios = points.groupby(["method_label", "budget"])["flops_ratio"].first()
    full = float(points.loc[points["method_label"] == learned_label, "budget"].max())
    out = []
    for budget in sorted({b for curve in learned.values() for b in curve if b < full}, reverse=True):
        row = _compare_point(learned, control, budget, transform, sign)
        if row is not None:
            ratio = float(ratios.get((learned_label, budget), math.nan))
            out.append((learned_label, control_label, kind, budget, row[0], ratio, *row[1:]))
    return out


def _compare_point(
    learned: dict[int, dict[float, pd.DataFrame]],
    control: dict[int, dict[float, pd.DataFrame]],
    budget: float,
    transform: Callable[[np.ndarray], np.ndarray],
    sign: float,
) -> tuple | None:
    """``(seeds, quality, control quality, delta, low, high, over, verdict)`` of a learned point."""
    deltas, quals, ctrl_quals, wheres = [], [], [], []
    last_pair = np.zeros((0, 2))
    for seed in sorted(set(learned) & set(control)):
        mine = learned[seed].get(budget)
        if mine is None or not control[seed]:
            continue
        theirs, where = _control_at(
            control[seed], float(mine["flops"].mean()), lambda s: sign * float(transform(float(s.mean())))
        )
        pair = pd.concat([mine["score"], theirs], axis=1, join="inner").to_numpy(dtype=float)  # (N, 2) same samples
        if len(pair) == 0:
            continue
        q, c = (float(transform(v)) for v in pair.mean(axis=0))
        deltas.append(sign * (q - c))
        quals.append(q)
        ctrl_quals.append(c)
        wheres.append(where)
        last_pair = pair
    if not deltas:
        return None
    if len(deltas) == 1:  # one seed: how far sampling other evaluation items could move the difference
        ci = bootstrap(last_pair, lambda m: sign * (transform(m[..., 0]) - transform(m[..., 1])))
        over = "samples"
    else:  # several seeds: the per-seed paired differences (fit and backbone noise included)
        ci = seed_interval(deltas)
        over = f"{ci.n} seeds"
    where = wheres[0] if len(set(wheres)) == 1 else "inside"  # mixed across seeds: at the range's edge anyway
    return (
        len(deltas), float(np.mean(quals)), float(np.mean(ctrl_quals)), float(np.mean(deltas)),
        ci.low, ci.high, over, _edge_verdict(where, verdict(ci.low, ci.high)),
    )  # fmt: skip
