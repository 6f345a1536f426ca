from __future__ import annotations

import math

import pandas as pd
import pytest
from test_report import make_rows  # the report tests' synthetic rows (same folder, on sys.path)

from dynbench.analysis.random_baseline import WINS, baseline_pairs, compare_to_random
from dynbench.analysis.report import write_report


def summary(points: dict[str, list[tuple[float, float, float]]], higher: bool = True) -> pd.DataFrame:
    """A summary frame of one task from ``label -> [(budget, flops, quality)]``, on two hardware targets."""
    recs = []
    for hw in ("cpu", "cuda"):
        for label, pts in points.items():
            for budget, flops, quality in pts:
                recs.append(
                    dict(task="t", hardware=hw, method_label=label, budget=budget, flops_per_sample=flops,
                         flops_ratio=flops / 100, quality=quality if hw == "cpu" else -1.0,
                         quality_higher_is_better=higher)
                )  # fmt: skip
    return pd.DataFrame(recs)


def test_pairs_only_labels_whose_twin_is_present() -> None:
    labels = ["tinv", "tinv[policy=random]", "dht[policy=random]", "mod[capacity=0.5]",
              "mod[capacity=0.5,router=random]", "mod[capacity=0.5,random_scale=learned,router=random]",
              "acm[init=random]", "acm", "dense"]  # fmt: skip
    assert baseline_pairs(labels) == [
        ("mod[capacity=0.5]", "mod[capacity=0.5,random_scale=learned,router=random]"),
        ("mod[capacity=0.5]", "mod[capacity=0.5,router=random]"),
        ("tinv", "tinv[policy=random]"),
    ]  # dht's learned twin is missing; acm's init=random is not an allocation baseline


def test_learned_points_are_scored_against_the_interpolated_random_curve() -> None:
    frame = summary(
        {
            "tinv": [(1.0, 100, 0.9), (0.9, 60, 0.85), (0.5, 30, 0.8), (0.3, 20, 0.5), (0.2, 10, 0.2)],
            "tinv[policy=random]": [(1.0, 100, 0.9), (0.9, 50, 0.8), (0.5, 25, 0.7)],
        }
    )
    table = compare_to_random(frame, "t").set_index("budget")
    assert list(table.index) == [0.9, 0.5, 0.3, 0.2]  # the full budget is dense on both sides
    # 60 FLOPs lies between random's 50 (0.8) and 100 (0.9): 0.82; 30 between 25 (0.7) and 50 (0.8): 0.72.
    assert table.loc[0.9, "random_quality"] == pytest.approx(0.82)
    assert table.loc[0.9, "delta"] == pytest.approx(0.03) and table.loc[0.9, "verdict"] == "better"
    assert table.loc[0.5, "random_quality"] == pytest.approx(0.72) and table.loc[0.5, "verdict"] == "better"
    assert table.loc[0.3, "verdict"] == "not comparable" and math.isnan(table.loc[0.3, "random_quality"])
    assert table.loc[0.2, "verdict"] == "not comparable"  # cheaper than random's cheapest point but worse
    assert table.loc[0.9, "quality"] == 0.9 - 0.05  # the first hardware's quality, not cuda's placeholder


def test_lower_is_better_quality_and_domination_outside_the_range() -> None:
    frame = summary(
        {
            "dht": [(1.0, 100, 7.0), (0.8, 40, 7.5), (0.6, 10, 8.0), (0.4, 120, 9.9)],
            "dht[policy=random]": [(1.0, 100, 7.0), (0.8, 40, 8.0), (0.6, 20, 9.0)],
        },
        higher=False,
    )
    table = compare_to_random(frame, "t").set_index("budget")
    assert table.loc[0.8, "delta"] == pytest.approx(0.5) and table.loc[0.8, "verdict"] == "better"
    assert table.loc[0.6, "verdict"] == "better, fewer FLOPs"  # 8.0 at 10 FLOPs beats random's 9.0 at 20
    assert table.loc[0.4, "verdict"] == "worse, more FLOPs"
    assert {"better", "better, fewer FLOPs"} <= WINS and "worse, more FLOPs" not in WINS


def test_no_pairs_give_an_empty_comparison() -> None:
    frame = summary({"tinv": [(1.0, 100, 0.9), (0.5, 50, 0.8)]})
    assert compare_to_random(frame, "t").empty
    assert compare_to_random(frame, "other-task").empty


def test_report_shows_the_comparison_per_task(tmp_path) -> None:
    rows = make_rows(hardware=("cpu",), seeds=(0,))
    learned = rows[rows.method == "early_exit"].assign(method="tinv", method_label="tinv")
    random = learned.assign(method_label="tinv[policy=random]")
    random = random.assign(value=random["value"].where(random["metric"] != "quality", random["value"] - 0.05))
    lm = random["task"] == "lm"  # perplexity: lower is better, so the random baseline is worse when higher
    random.loc[lm & (random["metric"] == "quality"), "value"] += 0.1
    write_report(pd.concat([rows, learned, random], ignore_index=True), None, tmp_path)
    index = (tmp_path / "index.md").read_text()
    assert index.count("### Learned vs random allocation") == 2
    assert "**tinv** vs **tinv[policy=random]**: learned better at 3 of 3 budgets." in index
