"""The verdict rule: one region per claim, one interval per measurement, five outcomes."""

from __future__ import annotations

import math

import pytest

from dynbench.papers.registry import Expectation
from dynbench.papers.verdict import combine, judge, region

BETTER = Expectation(kind="positive")  # "A better than B at equal FLOPs": Δ > 0


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (0.8, 2.4, "reproduced"),  # a clear win: the whole interval above 0
        (-3.1, -0.2, "not reproduced"),  # a clear loss
        (-0.6, 1.1, "inconclusive"),  # the interval spans both
        (0.0, 1.0, "inconclusive"),  # touching 0 is not above it
        (None, None, "inconclusive"),  # one number without an interval is not evidence
        (math.nan, 1.0, "inconclusive"),
    ],
)
def test_a_shape_claim(low, high, verdict):
    assert judge(BETTER, low, high) == verdict


def test_a_different_scale_is_not_comparable_whatever_the_numbers():
    assert judge(BETTER, 0.8, 2.4, comparable=False) == "not comparable"
    assert judge(BETTER, None, None, comparable=False, measured=False) == "not comparable"
    assert judge(BETTER, None, None, measured=False) == "not measured"


def test_value_claims_use_their_tolerance_band():
    oracle = Expectation(kind="near", value=0.233, tolerance=0.1)
    assert region(oracle) == pytest.approx((0.133, 0.333, False))
    assert judge(oracle, 0.2, 0.3) == "reproduced"
    assert judge(oracle, 0.5, 0.6) == "not reproduced"
    assert judge(oracle, 0.3, 0.4) == "inconclusive"
    speed = Expectation(kind="at_least", value=1.5)
    assert judge(speed, 1.5, 1.9) == "reproduced" and judge(speed, 0.4, 0.6) == "not reproduced"
    flops = Expectation(kind="at_most", value=-42.7)
    assert judge(flops, -60.0, -45.0) == "reproduced" and judge(flops, -45.0, -40.0) == "inconclusive"
    learners = Expectation(kind="between", low=2.0, high=3.0)
    assert judge(learners, 2.2, 2.6) == "reproduced" and judge(learners, 3.1, 3.3) == "not reproduced"


def test_a_claim_at_every_budget_needs_every_budget():
    assert combine(["reproduced", "reproduced"]) == "reproduced"
    assert combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "not reproduced", "inconclusive"]) == "not reproduced"
    assert combine([]) == "not measured" and combine(["not measured"]) == "not measured"
