"""Per-sample layer allocation under an average-layers budget: a knapsack on a score table.

Given every evaluation sample's task score under every candidate layer configuration,
:func:`allocate` picks one configuration per sample to maximise the task's quality under an
average-layers budget: a multiple-choice knapsack (groups = samples, items = configurations,
weight = executed layers, value = the sample's score), solved exactly for every budget at once by
:mod:`dynbench.methods._knapsack`. At the full budget every sample runs the whole network; below it,
of the allocations with the optimal total quality the lightest is used. Samples with identical
inputs cannot be told apart at inference, so they form one knapsack group.

Selection bias: the best of many candidates on the very samples it is scored on is optimistic, so
the same allocation is also scored on a disjoint half. The table holds two halves, ``a`` and ``b``
(for text: the loss of even and of odd positions; for classification: the original inputs and a
second, augmented view); the control selects on one half and scores on the other, and the reverse.
Without a second view (``a`` equal to ``b`` for classification) the control is absent: NaN, never
reported as equal to the selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dynbench.methods._knapsack import ordered_sum, solve
from dynbench.tasks.base import Perplexity, Task, TopOneAccuracy
from dynbench.types import Budget

__all__ = ["BUDGET_TOL", "KINDS", "aggregate", "allocate", "metric_kind"]

KINDS: dict[int, tuple[type, str, bool]] = {0: (TopOneAccuracy, "mean", True), 1: (Perplexity, "exp_mean", False)}
"""Metric kind code → (metric class, aggregation of per-sample scores, higher is better)."""
BUDGET_TOL = 1e-9
"""Two budgets closer than this are the same operating point."""


def aggregate(scores: Tensor | np.ndarray, how: str) -> float:
    """Task quality from per-sample scores: their mean, or exp of the mean (perplexity from NLL)."""
    mean = float(np.mean(np.asarray(scores, dtype=np.float64)))
    return math.exp(mean) if how == "exp_mean" else mean


def metric_kind(task: Task) -> int:
    """The :data:`KINDS` code of ``task``'s metric.

    Raises:
        ValueError: a metric the oracle cannot turn into per-sample knapsack values.
    """
    for code, (cls, _, _) in KINDS.items():
        if isinstance(task.metric, cls):
            return code
    raise ValueError(
        f"oracle: task '{task.name}' scores with {type(task.metric).__name__}; the oracle supports "
        f"{[k[0].__name__ for k in KINDS.values()]} (per-sample values that add up to the task's quality)."
    )


def allocate(
    table: dict[str, np.ndarray],
    hashes: np.ndarray,
    layers: Sequence[int],
    n_blocks: int,
    budgets: Sequence[Budget],
    kind: int,
    checkpoint_every: int = 0,
) -> dict[str, Tensor]:
    """Solve the knapsacks: allocation per budget, selection-bias control, matching budgets.

    Args:
        table: ``(N, M)`` per-sample task scores of every candidate: ``score`` (the whole sample),
            ``a`` and ``b`` (the two disjoint halves of the control).
        hashes: ``(N,)`` input hashes; identical inputs form one knapsack group.
        layers: ``(M,)`` blocks each candidate runs; candidate 0 is the whole network.
        n_blocks: depth L.
        budgets: fractions of L to solve; the full budget 1.0 runs the whole network for everyone.
        kind: key of :data:`KINDS`.
        checkpoint_every: DP checkpoint spacing in groups (0 = sqrt).

    Returns:
        The oracle's solution buffers (:class:`~dynbench.methods.oracle.OracleModel`) except
        ``configs``.

    Raises:
        ValueError: a budget below one block per sample.
    """
    _, how, hib = KINDS[kind]
    sign = 1.0 if hib else -1.0  # knapsack values are maximised: -NLL for perplexity
    # , (N,), (G,)
    uniq, group, counts = np.unique(hashes, return_inverse=True, return_counts=True)  # (G,)
    N, G = len(hashes), len(uniq)

    def per_group(x: np.ndarray) -> np.ndarray:
        """``(N, ...)`` → ``(G, ...)``: sums over identical inputs."""
        out = np.zeros((G, *x.shape[1:]))
        np.add.at(out, group, x)
        return out

    weights = counts[:, None] * np.asarray(layers)[None, :]  # (G, M) executed layers
    total = N * n_blocks
    ordered = sorted({float(b) for b in budgets}, reverse=True)
    partial = [b for b in ordered if abs(b - 1.0) >= BUDGET_TOL]
    caps = [int(math.floor(b * total + BUDGET_TOL)) for b in partial]
    if any(c < N for c in caps):
        raise ValueError(
            f"oracle: budget {min(partial)} is below one block per sample (1/L = {1 / n_blocks:.4g}); "
            f"use budgets >= {1 / n_blocks:.4g}."
        )
    chunk = checkpoint_every or None
    values = sign * per_group(table["score"])  # (G, M)
    # the total capacity: the curve up to L
    main = solve(weights, values, [*caps, total], chunk=chunk)
    full_total = ordered_sum(values[:, 0])  # as the DP adds the groups
    reach = np.flatnonzero(main.best >= full_total - 1e-9 * (1.0 + abs(full_total)))
    matching = int(reach[0]) / total if reach.size else 1.0
    pick_a = pick_b = main.choices
    # select on half A, score on B, and the reverse (classification's half A is the main solve)
    if caps:
        if kind != 0:
            pick_a = solve(weights, sign * per_group(table["a"]), caps, chunk=chunk).choices
        pick_b = solve(weights, sign * per_group(table["b"]), caps, chunk=chunk).choices
    rows = np.arange(N)
    a, b = table["a"], table["b"]  # (N, M)
    # the second view of an identity augment is the first
    control = kind != 0 or not np.array_equal(a, b)
    choices, sel, held = [], [], []
    for budget in ordered:
        if budget in partial:
            i = partial.index(budget)
            ca, cb, cm = pick_a[i], pick_b[i], main.choices[i]
        else:
            ca = cb = cm = np.zeros(G, dtype=np.int64)  # the whole network
        sa, sb = ca[group], cb[group]  # (N,)
        # mean over identical inputs
        sel.append(per_group(0.5 * (a[rows, sa] + b[rows, sb])) / counts)  # (G,)
        held.append(per_group(0.5 * (b[rows, sa] + a[rows, sb])) / counts)
        choices.append(cm)
    full_held = aggregate(0.5 * (a[:, 0] + b[:, 0]), how)
    held_quality = [aggregate(np.repeat(h, counts), how) for h in held]
    matches = [bud for bud, q in zip(ordered, held_quality) if (q >= full_held if hib else q <= full_held)]
    return {
        "sample_hashes": torch.from_numpy(uniq.astype(np.int64)),
        "solved_budgets": torch.tensor(ordered, dtype=torch.float64),
        "choices": torch.from_numpy(np.stack(choices).astype(np.int64)),
        "selection_half": torch.from_numpy(np.stack(sel)),
        "heldout_half": torch.from_numpy(np.stack(held) if control else np.full((len(held), G), np.nan)),
        "matching_budget": torch.tensor(matching, dtype=torch.float64),
        "matching_budget_heldout": torch.tensor(
            min(matches, default=1.0) if control else math.nan, dtype=torch.float64
        ),
        "metric_kind": torch.tensor(kind, dtype=torch.long),
    }
