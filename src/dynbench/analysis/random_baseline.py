"""A learned controller against its random-allocation baseline at equal FLOPs per sample.

Dynamic-compute papers claim that a learned controller beats random allocation "at equal compute". A random
baseline is calibrated on fit data (the learned policy's mean depth there), so on the evaluation split it rarely
lands on exactly the learned point's FLOPs. Here each learned operating point is compared with the random
baseline's quality-vs-FLOPs curve, linearly interpolated at the learned point's FLOPs per sample. Outside the
random curve's FLOPs range a comparison is made only where one side dominates (fewer FLOPs and better quality,
or more FLOPs and worse quality); otherwise the point is "not comparable".

A random baseline is the same plugin spec with one of :data:`RANDOM_OPTIONS` added, e.g. ``tinv`` and
``tinv[policy=random]``, ``mod[capacity=0.125]`` and ``mod[capacity=0.125,router=random]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from dynbench.config import ConfigError, PluginSpec, parse_plugin

__all__ = ["RANDOM_OPTIONS", "WINS", "baseline_pairs", "compare_to_random"]

RANDOM_OPTIONS: tuple[tuple[str, str], ...] = (("policy", "random"), ("router", "random"))
"""Options that turn a method into its random-allocation baseline (dht/tinv ``policy``, mod ``router``)."""
BASELINE_ONLY_OPTIONS: tuple[str, ...] = ("random_scale",)
"""Options that only configure the random baseline (mod's ``random_scale``): dropped when finding the learned twin."""

WINS = frozenset({"better", "better, fewer FLOPs", "as good, fewer FLOPs"})
"""Verdicts where the learned point is at least as good at no more FLOPs and strictly ahead on one of the two."""
COMPARISON_COLUMNS = (
    "learned", "random", "budget", "flops_per_sample", "flops_ratio", "quality", "random_quality", "delta", "verdict",
)  # fmt: skip


def _learned_twin(label: str) -> str | None:
    """The label of the learned configuration a random-baseline label stands beside, or ``None``."""
    try:
        spec = parse_plugin(label)
    except ConfigError:
        return None
    options = spec.options_dict()
    for key, value in RANDOM_OPTIONS:
        if str(options.get(key, "")).lower() == value:
            del options[key]
            for extra in BASELINE_ONLY_OPTIONS:
                options.pop(extra, None)
            return PluginSpec.make(spec.name, options).label
    return None


def baseline_pairs(labels: Iterable[str]) -> list[tuple[str, str]]:
    """``(learned, random)`` label pairs among ``labels``, sorted; a random label without its twin pairs nothing."""
    present = set(labels)
    pairs = {(twin, label) for label in present if (twin := _learned_twin(label)) is not None and twin in present}
    return sorted(pairs)


def compare_to_random(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """Every learned operating point below the full budget against its random baseline at equal FLOPs.

    Args:
        summary: :func:`dynbench.analysis.tables.summary_frame` output (quality and FLOPs are hardware-free:
            the first hardware's rows are used).
        task: the task to compare on.

    Returns:
        One row per learned point (:data:`COMPARISON_COLUMNS`): ``random_quality`` is the interpolated random
        quality (NaN where not comparable), ``delta`` is learned minus random in the "better" direction (positive
        = learned better), ``verdict`` one of ``better``, ``worse``, ``equal`` (inside the random curve's range),
        ``better, fewer FLOPs``, ``as good, fewer FLOPs``, ``worse, more FLOPs``, ``as good, more FLOPs`` and
        ``not comparable`` (outside it). :data:`WINS` are the verdicts that count as a win for the learned side.
    """
    frame = summary[summary["task"] == task]
    if frame.empty:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    frame = frame[frame["hardware"] == frame["hardware"].min()]
    out = []
    for learned, random in baseline_pairs(frame["method_label"].astype(str)):
        mine = frame[frame["method_label"] == learned]
        theirs = frame[frame["method_label"] == random].dropna(subset=["flops_per_sample", "quality"])
        if theirs.empty:
            continue
        sign = 1.0 if bool(mine["quality_higher_is_better"].iloc[0]) else -1.0
        theirs = theirs.sort_values("flops_per_sample")
        xs = theirs["flops_per_sample"].to_numpy(dtype=float)
        ys = theirs["quality"].to_numpy(dtype=float)
        full = mine["budget"].max()
        for row in mine.itertuples():
            if row.budget >= full or not (np.isfinite(row.flops_per_sample) and np.isfinite(row.quality)):
                continue  # the full budget is the dense model on both sides
            x, q = float(row.flops_per_sample), float(row.quality)
            if xs[0] <= x <= xs[-1]:
                ref = float(np.interp(x, xs, ys))
                delta = sign * (q - ref)
                verdict = "better" if delta > 0 else "worse" if delta < 0 else "equal"
            else:
                edge = float(ys[0] if x < xs[0] else ys[-1])
                gain = sign * (q - edge)
                ref, delta = float("nan"), float("nan")
                if x < xs[0] and gain >= 0:
                    verdict = "better, fewer FLOPs" if gain > 0 else "as good, fewer FLOPs"
                elif x > xs[-1] and gain <= 0:
                    verdict = "worse, more FLOPs" if gain < 0 else "as good, more FLOPs"
                else:
                    verdict = "not comparable"
            out.append((learned, random, row.budget, x, row.flops_ratio, q, ref, delta, verdict))
    return pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))
