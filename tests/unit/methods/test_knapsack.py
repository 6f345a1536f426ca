"""Exact multiple-choice knapsack vs brute force over many capacities and checkpoint spacings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dynbench.methods._knapsack import ordered_sum, reduce_items, solve


def brute_force(weights: np.ndarray, values: np.ndarray, capacity: int) -> float:
    """Best total value over every allocation that fits (``-inf`` when none does)."""
    best = -np.inf
    G, M = values.shape
    for pick in itertools.product(range(M), repeat=G):
        w = sum(int(weights[g, j]) for g, j in enumerate(pick))
        v = ordered_sum(np.array([values[g, j] for g, j in enumerate(pick)]))
        if w <= capacity and v > best:
            best = v
    return best


def instance(seed: int, G: int = 4, M: int = 3, max_w: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights in 1..max_w and integer values (exact float sums), some items missing."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, max_w + 1, size=(G, M))
    values = rng.integers(-5, 10, size=(G, M)).astype(float)
    values[rng.random((G, M)) < 0.2] = -np.inf
    values[:, 0] = np.where(np.isfinite(values[:, 0]), values[:, 0], 0.0)  # every group keeps an item
    return weights, values


@pytest.mark.parametrize("seed", range(12))
def test_optimum_equals_brute_force_for_every_capacity(seed: int) -> None:
    weights, values = instance(seed)
    lightest = int(np.where(np.isfinite(values), weights, 99).min(1).sum())
    caps = list(range(lightest, int(weights.sum()) + 1))
    sol = solve(weights, values, caps, cheapest=False)
    for k, c in enumerate(caps):
        expected = brute_force(weights, values, c)
        assert sol.best[c] == expected  # exact: integer values
        chosen = sol.choices[k]
        assert np.isfinite(values[np.arange(len(chosen)), chosen]).all()  # only real items
        assert weights[np.arange(len(chosen)), chosen].sum() == sol.weights[k] <= c
        assert ordered_sum(values[np.arange(len(chosen)), chosen]) == sol.values[k] == expected
    assert (np.diff(sol.best[lightest:]) >= 0).all()
    assert np.isneginf(sol.best[:lightest]).all()


@pytest.mark.parametrize("seed", range(6))
def test_float_values_match_brute_force_exactly(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    weights = rng.integers(1, 5, size=(5, 3))
    values = rng.normal(size=(5, 3))
    lightest = int(weights.min(1).sum())
    caps = [lightest, lightest + 2, lightest + 5, int(weights.sum())]
    sol = solve(weights, values, caps, cheapest=False)
    for k, c in enumerate(caps):
        assert sol.values[k] == brute_force(weights, values, c) == sol.best[c]


@pytest.mark.parametrize("seed", range(6))
def test_cheapest_allocation_weighs_its_capacity_and_never_falls(seed: int) -> None:
    weights, values = instance(seed, G=5)
    lightest = int(np.where(np.isfinite(values), weights, 99).min(1).sum())
    caps = list(range(lightest, int(weights.sum()) + 2))
    sol = solve(weights, values, caps)
    assert (sol.weights == sol.capacities).all() and (sol.capacities <= np.array(caps)).all()
    assert (np.diff(sol.weights) >= 0).all()
    assert (sol.values == sol.best[caps]).all()  # still optimal at the requested capacity


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_chunked_reconstruction_equals_full_table(chunk: int) -> None:
    rng = np.random.default_rng(7)
    G, M = 40, 6
    weights = rng.integers(1, 7, size=(G, M))
    weights[:, 0] = 1  # a one-layer item everywhere, so capacity G is feasible
    values = rng.normal(size=(G, M))
    caps = [G, G + 17, 3 * G, 5 * G, 7 * G]
    full = solve(weights, values, caps, chunk=G)
    chunked = solve(weights, values, caps, chunk=chunk)
    assert np.array_equal(full.best, chunked.best)
    assert np.array_equal(full.choices, chunked.choices)
    assert np.array_equal(full.values, chunked.values) and np.array_equal(full.weights, chunked.weights)


def test_large_instance_stays_feasible_and_optimal_at_full_capacity() -> None:
    rng = np.random.default_rng(3)
    G, L = 2000, 6
    weights = np.broadcast_to(np.arange(1, L + 1), (G, L))
    values = rng.normal(size=(G, L))
    sol = solve(weights, values, [G, G * L // 2, G * L])
    assert sol.values[-1] == pytest.approx(values.max(1).sum())  # unconstrained: best item of each group
    assert (sol.weights <= np.array([G, G * L // 2, G * L])).all()
    assert sol.weights[0] == G and (sol.choices[0] == 0).all()  # capacity G: the one-block item everywhere


def test_reduce_items_keeps_best_per_weight_and_drops_dominated() -> None:
    weights = np.array([[2, 1, 2, 3, 3]])
    values = np.array([[5.0, 4.0, 6.0, 6.0, -np.inf]])
    w, v, col = reduce_items(weights, values)
    assert w[0].tolist() == [1, 2] and v[0].tolist() == [4.0, 6.0] and col[0].tolist() == [1, 2]


def test_errors_say_what_to_do() -> None:
    weights = np.array([[1, 2], [1, 2]])
    values = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"below the lightest allocation.*>= 2"):
        solve(weights, values, [1])
    with pytest.raises(ValueError, match="no item with a finite value"):
        solve(weights, np.array([[1.0, 1.0], [-np.inf, -np.inf]]), [4])
    with pytest.raises(ValueError, match="non-negative integers"):
        solve(-weights, values, [4])
