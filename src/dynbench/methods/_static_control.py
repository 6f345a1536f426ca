"""The *static* control of a learned controller: one fixed configuration at matched mean FLOPs.

A learned controller shows it adapts to the input only if it beats the best configuration that
ignores the input. dht and tinv pick that configuration with one rule, here, from numbers measured
on the task's validation split.

:data:`VERSION` feeds the recorded version of every method that lists this module in
:attr:`~dynbench.methods.base.Method.shared_parts`: bump it when a change here changes any result.
"""

from __future__ import annotations

import math

from torch import Tensor

VERSION = "1"
"""Version of the choice rule; part of the recorded version of every method that uses it."""
COST_RTOL = 1e-12
"""Relative slack on the FLOPs cap: the costs and the cap are sums of float64 analytic counts."""


def best_fixed_config(quality: Tensor, cost: Tensor, cap: float) -> int:
    """The best-quality configuration among those costing at most ``cap``; none fits: the cheapest.

    Ties in quality go to the cheaper configuration, then to the lower index, so the choice is
    deterministic and, as ``cap`` falls, never moves to a costlier configuration (the control's
    compute stays monotone in the budget).

    Args:
        quality: ``(A,)`` validation quality per configuration, higher is better (a NaN counts as
            the worst).
        cost: ``(A,)`` mean FLOPs per sample of each configuration on the validation split.
        cap: the learned policy's mean FLOPs per sample on the validation split at the budget.

    Returns:
        The chosen configuration's index.
    """
    q = [-math.inf if math.isnan(v) else v for v in quality.double().tolist()]
    c = cost.double().tolist()
    fits = [i for i in range(len(c)) if c[i] <= cap * (1 + COST_RTOL)]
    if not fits:
        return min(range(len(c)), key=lambda i: (c[i], i))
    return min(fits, key=lambda i: (-q[i], c[i], i))
