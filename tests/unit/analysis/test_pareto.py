from __future__ import annotations

import numpy as np
import pytest

from dynbench.analysis.pareto import pareto_front


def test_higher_is_better_front():
    x = [1.0, 2.0, 3.0, 2.5, 4.0]
    y = [0.5, 0.7, 0.9, 0.6, 0.85]
    # (2.5, 0.6) is dominated by (2.0, 0.7); (4.0, 0.85) by (3.0, 0.9).
    assert pareto_front(x, y, y_higher_is_better=True).tolist() == [True, True, True, False, False]


def test_lower_is_better_front():
    x = np.array([1.0, 2.0, 3.0, 2.5])
    ppl = np.array([30.0, 20.0, 15.0, 25.0])
    assert pareto_front(x, ppl, y_higher_is_better=False).tolist() == [True, True, True, False]
    # The same points read as higher-is-better: only the cheapest one survives.
    assert pareto_front(x, ppl, y_higher_is_better=True).tolist() == [True, False, False, False]


def test_exact_duplicates_keep_first_only():
    x = [2.0, 1.0, 2.0, 1.0]
    y = [0.8, 0.5, 0.8, 0.5]
    assert pareto_front(x, y, y_higher_is_better=True).tolist() == [True, True, False, False]


def test_equal_cost_or_equal_quality_is_dominated():
    # Same cost, worse quality -> dominated; same quality, higher cost -> dominated.
    x = [1.0, 1.0, 2.0]
    y = [0.5, 0.4, 0.5]
    assert pareto_front(x, y, y_higher_is_better=True).tolist() == [True, False, False]
    assert pareto_front(x, [10.0, 11.0, 10.0], y_higher_is_better=False).tolist() == [True, False, False]


def test_non_finite_points_are_never_on_front():
    x = [1.0, np.nan, 0.5, 3.0]
    y = [0.5, 0.9, np.inf, 0.9]
    assert pareto_front(x, y, y_higher_is_better=True).tolist() == [True, False, False, True]


def test_empty_input_and_shape_errors():
    assert pareto_front([], [], y_higher_is_better=True).tolist() == []
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1.0, 2.0], [1.0], y_higher_is_better=True)
    with pytest.raises(ValueError, match="1-D"):
        pareto_front(np.ones((2, 2)), np.ones((2, 2)), y_higher_is_better=True)
