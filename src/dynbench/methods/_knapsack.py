"""Exact multiple-choice knapsack by dynamic programming, for the oracle's per-sample allocation.

Each of ``G`` groups (samples) picks exactly one item (a configuration) with an integer weight
``w[g, j] >= 0`` (executed layers) and a value ``v[g, j]`` (quality; ``-inf`` = no such item). The
optimum for a capacity ``C`` is ``max Σ_g v[g, j(g)]`` subject to ``Σ_g w[g, j(g)] <= C``. This is
the solver of Glavas et al. (``KnapsackSolver`` in the authors' code), written for one process and
bounded memory.

The DP runs over groups: ``f_g(c)`` is the best value of groups ``0..g-1`` with total weight at most
``c``: ``f_0(c) = 0`` and ``f_{g+1}(c) = max_j f_g(c - w[g, j]) + v[g, j]``. One pass gives the
optimum for every capacity at once (the final ``f``). Each step is vectorised over capacity with
numpy and only touches the capacities the groups so far can reach: ``f_g`` is ``-inf`` below the sum
of the lightest weights and constant above the sum of the heaviest, so step ``g`` costs about
``g · (w_max − w_min)`` per item rather than ``C``.

Reconstruction needs every step's arg-max table (``G × C`` entries: 600 M for 10,000 samples × 6
layers). Instead the forward pass keeps ``f`` every ``chunk ≈ sqrt(G)`` groups, and the backward
pass recomputes one chunk's tables at a time from its checkpoint and walks back through it for all
requested capacities together: about two DP passes of time and ``(G / chunk + chunk)`` capacity
vectors of memory, with exactly the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KnapsackSolution", "ordered_sum", "reduce_items", "solve"]


@dataclass(frozen=True)
class KnapsackSolution:
    """The optimum for every capacity, and the chosen items at the requested ones.

    Attributes:
        best: ``(C + 1,)`` optimal total value for each capacity ``0..C`` (``C`` = the largest
            requested); ``-inf`` where no allocation fits. Non-decreasing.
        capacities: ``(K,)`` the capacities reconstructed: the requested ones, or, with
            ``cheapest``, the smallest capacity with the same optimum (whose allocation then weighs
            exactly that much).
        choices: ``(K, G)`` the chosen item (column of the input arrays) of every group at each
            capacity.
        weights: ``(K,)`` total weight of each reconstructed allocation.
        values: ``(K,)`` total value of each allocation, equal to ``best`` at its capacity.
    """

    best: np.ndarray
    capacities: np.ndarray
    choices: np.ndarray
    weights: np.ndarray
    values: np.ndarray


def reduce_items(weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep, per group, only the items an optimum can need: the best per weight, none dominated.

    An item is dropped when a lighter or equally heavy item of its group is at least as valuable
    (ties keep the lightest, then the lowest column). What remains is at most one item per distinct
    weight.

    Args:
        weights: ``(G, M)`` integer weights.
        values: ``(G, M)`` values; ``-inf`` marks a missing item.

    Returns:
        ``(weights, values, columns)``, each ``(G, J)`` with ``J <= M``: the kept items left-aligned
        by increasing weight, ``columns`` their index in the input, padded with value ``-inf``
        (weight 0, column -1).
    """
    weights = np.asarray(weights, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    G, M = values.shape
    columns = np.broadcast_to(np.arange(M), (G, M))
    # Sort each row by weight, then value descending, then column (stable sorts, last key first).
    order = np.argsort(-values, axis=1, kind="stable")
    order = np.take_along_axis(order, np.argsort(np.take_along_axis(weights, order, 1), axis=1, kind="stable"), 1)
    w, v, col = (np.take_along_axis(a, order, 1) for a in (weights, values, columns))  # (G, M) each
    lighter_best = np.maximum.accumulate(np.concatenate([np.full((G, 1), -np.inf), v[:, :-1]], 1), axis=1)  # (G, M)
    # strictly better than everything lighter (or as heavy and listed first)
    keep = v > lighter_best  # (G, M)
    J = max(int(keep.sum(1).max(initial=0)), 1)
    # kept items first, in weight order
    front = np.argsort(~keep, axis=1, kind="stable")[:, :J]  # (G, J)
    kept = np.take_along_axis(keep, front, 1)  # (G, J)
    w_out = np.where(kept, np.take_along_axis(w, front, 1), 0)
    v_out = np.where(kept, np.take_along_axis(v, front, 1), -np.inf)
    col_out = np.where(kept, np.take_along_axis(col, front, 1), -1)
    return w_out, v_out, col_out


@dataclass
class _Frontier:
    """``f_g`` over capacities ``0..hi`` (constant above ``hi``, ``-inf`` below ``lo``)."""

    f: np.ndarray  # (hi + 1,)
    lo: int
    hi: int


def _step(state: _Frontier, w: np.ndarray, v: np.ndarray, cap: int) -> tuple[_Frontier, np.ndarray]:
    """One group: ``f_{g+1}`` from ``f_g`` and the group's items, and the arg-max item per capacity.

    The arg-max covers the capacities ``c`` in ``[lo', hi']``.

    Args:
        state: ``f_g``.
        w: ``(J,)`` item weights.
        v: ``(J,)`` item values (``-inf`` = padding).
        cap: the largest capacity anyone asks for.
    """
    valid = np.isfinite(v)
    lo, hi, f = state.lo, state.hi, state.f
    lo_new = lo + int(w[valid].min())
    hi_new = min(hi + int(w[valid].max()), cap)
    new = np.full(hi_new + 1, -np.inf)  # (hi' + 1,)
    # item index per capacity
    arg = np.full(max(hi_new - lo_new + 1, 0), -1, dtype=np.int16)  # (hi' - lo' + 1,)
    for j in np.flatnonzero(valid):
        wj, vj = int(w[j]), float(v[j])
        start = lo + wj  # the smallest capacity this item fits in
        if start > hi_new:
            continue
        direct_end = min(hi_new, hi + wj)  # capacities whose remainder c - wj still lies in 0..hi
        cand = f[lo : direct_end - wj + 1] + vj  # (direct_end - start + 1,)
        seg = new[start : direct_end + 1]
        better = cand > seg  # strict: ties keep the lighter item (items come in weight order)
        np.copyto(seg, cand, where=better)
        arg[start - lo_new : direct_end - lo_new + 1][better] = j
        if direct_end < hi_new:  # remainders above hi: f_g is constant there, f_g(hi)
            tail = new[direct_end + 1 :]
            better = f[hi] + vj > tail
            tail[better] = f[hi] + vj
            arg[direct_end + 1 - lo_new :][better] = j
    return _Frontier(new, lo_new, hi_new), arg


def solve(
    weights: np.ndarray,
    values: np.ndarray,
    capacities: Sequence[int],
    *,
    chunk: int | None = None,
    cheapest: bool = True,
) -> KnapsackSolution:
    """Solve the multiple-choice knapsack exactly for every capacity up to ``max(capacities)``.

    Args:
        weights: ``(G, M)`` non-negative integer weights.
        values: ``(G, M)`` values; ``-inf`` marks a missing item. Every group needs at least one
            item.
        capacities: the capacities whose allocations are reconstructed (all in one backward pass).
        chunk: groups between two DP checkpoints; ``None`` = ``ceil(sqrt(G))``; ``>= G`` keeps every
            table (no recomputation, ``G × C`` memory).
        cheapest: reconstruct each capacity at the smallest capacity with the same optimum, so the
            allocation's weight equals its capacity and weights never fall as the capacity grows.

    Returns:
        The optimum curve and the reconstructed allocations.

    Raises:
        ValueError: bad shapes, negative weights, a group without items, or a capacity no allocation
            fits in.
    """
    weights = np.asarray(weights)
    values = np.asarray(values, dtype=np.float64)
    if weights.shape != values.shape or values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(
            f"knapsack: weights {weights.shape} and values {values.shape} must be equal (G, M) arrays with G >= 1."
        )
    if (weights < 0).any() or not np.issubdtype(weights.dtype, np.integer):
        raise ValueError("knapsack: weights must be non-negative integers (executed layers).")
    caps = np.asarray(list(capacities), dtype=np.int64)
    if caps.size == 0 or (caps < 0).any():
        raise ValueError(f"knapsack: capacities must be a non-empty list of integers >= 0, got {caps.tolist()}.")
    empty = np.flatnonzero(~np.isfinite(values).any(1) | np.isnan(values).any(1))
    if empty.size:
        raise ValueError(f"knapsack: group(s) {empty[:5].tolist()} have no item with a finite value (or a NaN).")
    w, v, col = reduce_items(weights, values)
    if w.shape[1] > np.iinfo(np.int16).max:
        raise ValueError(f"knapsack: {w.shape[1]} distinct weights per group is more than this solver supports.")
    G, cap = w.shape[0], int(caps.max())
    chunk = math.ceil(math.sqrt(G)) if chunk is None else max(1, int(chunk))
    starts = list(range(0, G, chunk))
    keep_tables = len(starts) == 1

    # Forward: f after every group; a checkpoint at the start of each chunk (f arrays are never
    # modified in place).
    state = _Frontier(np.zeros(1), 0, 0)
    checkpoints: list[_Frontier] = []
    tables: list[tuple[np.ndarray, int, int]] = []
    for s in starts:
        checkpoints.append(state)
        for g in range(s, min(s + chunk, G)):
            state, arg = _step(state, w[g], v[g], cap)
            if keep_tables:
                tables.append((arg, state.lo, state.hi))
    best = np.full(cap + 1, -np.inf)
    best[: state.hi + 1] = state.f
    best[state.hi + 1 :] = state.f[state.hi]
    infeasible = caps[~np.isfinite(best[caps])]
    if infeasible.size:
        raise ValueError(
            f"knapsack: capacity {int(infeasible.min())} is below the lightest allocation (total weight "
            f"{state.lo}); ask for capacities >= {state.lo}."
        )
    target = np.searchsorted(best, best[caps], side="left") if cheapest else caps.copy()  # (K,)

    # Backward: recompute each chunk's tables from its checkpoint, last chunk first, and walk back
    # through it.
    cur = target.copy()  # (K,) capacity left for the groups not yet walked
    choice = np.empty((len(caps), G), dtype=np.int64)  # (K, G) reduced item index
    for s, checkpoint in zip(reversed(starts), reversed(checkpoints)):
        end = min(s + chunk, G)
        if not keep_tables:
            tables, st = [], checkpoint
            for g in range(s, end):
                st, arg = _step(st, w[g], v[g], cap)
                tables.append((arg, st.lo, st.hi))
        for g in range(end - 1, s - 1, -1):
            arg, lo_g, hi_g = tables[g - s]
            c = np.minimum(cur, hi_g)  # above hi the optimum (and its arg-max) is that of hi
            j = arg[c - lo_g].astype(np.int64)  # (K,)
            choice[:, g] = j
            cur = c - w[g, j]
    rows = np.arange(G)[None, :]
    chosen_w = w[rows, choice].sum(1)  # (K,)
    # in group order, as the DP
    chosen_v = np.array([ordered_sum(v[np.arange(G), ch]) for ch in choice])  # (K,)
    return KnapsackSolution(best, target, col[rows, choice], chosen_w, chosen_v)


def ordered_sum(x: np.ndarray) -> float:
    """Left-to-right float sum (the DP's own summation order, so it equals ``best`` exactly)."""
    total = 0.0
    for value in x.tolist():
        total += value
    return total
