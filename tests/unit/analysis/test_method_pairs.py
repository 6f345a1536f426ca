"""Every method against every other at equal FLOPs (analysis/method_pairs.py), synthetic curves."""

from __future__ import annotations

import numpy as np
import pytest
from test_controls import samples, summary  # the control tests' synthetic curves (same folder)

from dynbench.analysis.method_pairs import method_pairs, pairs_markdown

RNG = np.random.default_rng(1)  # its own generator: drawing from test_controls' would shift its draws


def correct(p: float, n: int = 400) -> np.ndarray:
    return (RNG.random(n) < p).astype(float)


def curves():
    """acm = early_exit, far above layer_skip at half the FLOPs; dense and oracle: no curve."""
    full, good, bad = correct(0.9), correct(0.85), correct(0.4)
    return {
        "dense": {1.0: (100.0, full)},
        "acm": {1.0: (100.0, full), 0.5: (50.0, good)},
        "early_exit": {1.0: (100.0, full), 0.5: (50.0, good.copy())},
        "layer_skip": {1.0: (100.0, full), 0.5: (50.0, bad)},
        "oracle": {1.0: (100.0, full), 0.5: (50.0, full.copy())},
    }


POINTS = curves()


def frames():
    points = POINTS
    frame = summary(list(points), {k: list(v) for k, v in points.items()})
    frame["upper_bound"] = frame["method_label"] == "oracle"
    frame["quality_unit"] = "top1"
    return samples(points), frame


def test_every_ordered_pair_of_curves_is_compared_and_the_clearest_low_point_named() -> None:
    table = method_pairs(*frames(), "t").set_index(["method", "against"])
    labels = {"acm", "early_exit", "layer_skip"}  # not dense (no curve), not the oracle (an upper bound)
    assert set(table.index) == {(a, b) for a in labels for b in labels if a != b}
    row = table.loc[("acm", "layer_skip")]
    assert (row.points, row.better, row.worse, row.tie) == (1, 1, 0, 0)
    assert row.budget == 0.5 and row.flops_ratio == pytest.approx(0.25) and row.verdict == "better"
    assert row.delta == pytest.approx(POINTS["acm"][0.5][1].mean() - POINTS["layer_skip"][0.5][1].mean())
    assert row.ci_low > 0 and row.ci_over == "samples"
    assert table.loc[("layer_skip", "early_exit")].verdict == "worse"
    same = table.loc[("acm", "early_exit")]  # identical scores: a tie with a zero-width interval
    assert same.verdict == "tie" and same.delta == 0 and (same.better, same.worse, same.tie) == (0, 0, 1)


def test_the_markdown_counts_the_pairs_told_apart() -> None:
    text = pairs_markdown(*frames(), "t")
    assert "**2 pair(s) of methods are told apart**" in text  # {acm, layer_skip}, {early_exit, layer_skip}
    assert "| acm | layer_skip | 1 | 1 | 0 | 0 | 0 | 0.5 | 0.250 | +" in text
    assert text.count("\n| ") == 1 + 6  # the header and six ordered pairs


def test_points_above_the_low_compute_line_are_counted_but_not_picked() -> None:
    s, frame = frames()
    frame["flops_ratio"] = frame["budget"] * 0.9  # budget 0.5 → 0.45; every point still low
    assert (method_pairs(s, frame, "t")["budget"] == 0.5).all()
    frame["flops_ratio"] = frame["budget"] * 1.5  # budget 0.5 → 0.75: no low-compute point
    table = method_pairs(s, frame, "t")
    assert (table["verdict"] == "no point at ≤ 60% FLOPs").all() and table["budget"].isna().all()
    assert table.set_index(["method", "against"]).loc[("acm", "layer_skip")].better == 1


def test_fewer_than_two_curves_give_no_section() -> None:
    s, frame = frames()
    only = frame[frame["method_label"].isin(["dense", "acm", "oracle"])]
    assert pairs_markdown(s, only, "t") is None


def test_as_good_with_fewer_flops_is_a_tie_not_a_separation() -> None:
    full, good = correct(0.9), correct(0.85)
    points = {
        "acm": {1.0: (100.0, full), 0.5: (50.0, good)},
        "early_exit": {1.0: (100.0, full), 0.5: (40.0, good.copy())},  # same scores, cheaper
    }
    frame = summary(list(points), {k: list(v) for k, v in points.items()})
    frame["quality_unit"] = "top1"
    table = method_pairs(samples(points), frame, "t").set_index(["method", "against"])
    cheaper = table.loc[("early_exit", "acm")]
    assert cheaper.verdict == "as good, fewer FLOPs" and (cheaper.better, cheaper.tie) == (0, 1)
    assert "**0 pair(s) of methods are told apart**" in pairs_markdown(samples(points), frame, "t")
