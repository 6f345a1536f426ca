"""Pareto fronts of (cost, quality) operating points.

Cost (FLOPs, latency, memory) is always lower-is-better; the direction of quality comes from the
task (``higher_is_better`` on the result rows) and is passed in explicitly, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front"]


def pareto_front(
    x: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    *,
    y_higher_is_better: bool,
) -> np.ndarray:
    """Mark the points that no other point dominates.

    A point dominates another when it costs no more (``x`` lower or equal), is no worse in quality
    (``y``) and is strictly better in at least one of the two. Points equal in both coordinates do
    not dominate each other; of such a group exactly one is kept, the one that comes first in the
    input, so the result is deterministic. Points with a non-finite coordinate are never on the
    front.

    Args:
        x: cost of each point, lower is better (FLOPs, latency, memory).
        y: quality of each point.
        y_higher_is_better: direction of ``y``: ``True`` for accuracy-like metrics, ``False`` for
            perplexity-like ones.

    Returns:
        Boolean array, one entry per input point, ``True`` where the point is on the front.

    Raises:
        ValueError: if ``x`` and ``y`` are not 1-D or differ in length.
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.ndim != 1 or ys.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(
            f"pareto_front needs two 1-D arrays of equal length, got shapes {xs.shape} and {ys.shape}; "
            "pass one cost and one quality value per point."
        )
    on_front = np.zeros(xs.shape, dtype=bool)
    finite = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
    if finite.size == 0:
        return on_front
    # Work with "higher is better" internally so one sweep covers both directions.
    gain = ys[finite] if y_higher_is_better else -ys[finite]
    # Sort by cost ascending, then quality best-first, then input position: within equal points the
    # earliest one is visited first and is the one kept.
    order = np.lexsort((finite, -gain, xs[finite]))
    best = -np.inf
    for pos in order:
        # A point survives only if it beats every cheaper-or-equal point already seen; equal quality
        # at equal or higher cost is dominated (or a duplicate of a point already kept).
        if gain[pos] > best:
            on_front[finite[pos]] = True
            best = gain[pos]
    return on_front
