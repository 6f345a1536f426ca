"""The bootstrap's fast mean path (stats._resampled_means) against the gathering path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynbench import stats


@pytest.mark.parametrize("shape", [(7,), (2000, 2), (333, 3)])
def test_resample_means_equal_the_gathered_means_of_the_same_draws(shape):
    values = np.random.default_rng(3).normal(size=shape).reshape(shape[0], -1)  # (n, k)
    fast = stats._resampled_means(values, 2500, seed=5)  # more than one chunk at n = 2,000
    slow = stats._resampled(values, lambda v: v.mean(axis=1), 2500, seed=5)
    assert fast.shape == slow.shape == (2500, values.shape[1])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_non_finite_values_keep_the_gathering_path():
    values = np.array([[1.0], [np.nan], [3.0], [4.0]])
    fast = stats._resampled_means(values, 200, seed=0)
    slow = stats._resampled(values, lambda v: v.mean(axis=1), 200, seed=0)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))  # NaN only where a NaN row was drawn
    assert np.isfinite(fast).any() and np.isnan(fast).any()


def test_a_paired_difference_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    a = (rng.random(4000) < 0.8).astype(float)
    b = (rng.random(4000) < 0.7).astype(float)
    ci = stats.bootstrap(np.column_stack([a, b]), lambda m: m[..., 0] - m[..., 1])
    assert ci.low < a.mean() - b.mean() < ci.high and ci.low > 0 and ci.n == 4000
    assert math.isnan(stats.bootstrap(np.array([1.0])).low)  # one row: no interval
