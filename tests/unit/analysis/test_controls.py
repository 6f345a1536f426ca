from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dynbench.analysis.controls import WINS, compare_at_equal_flops, compare_to_controls, control_pairs
from dynbench.analysis.report import write_report
from dynbench.tasks.base import Perplexity, TopOneAccuracy


def test_pairs_come_from_the_rows_control_columns() -> None:
    frame = pd.DataFrame({
        "method_label": ["tinv", "tinv[policy=random]", "dht[policy=random]", "early_exit", "early_exit[rule=depth]",
                         "mod[capacities=0.5]", "mod[capacities=0.5,router=random]", "acm[init=random]", "dense"],
        "control_of": ["", "tinv", "dht", "", "early_exit", "", "mod[capacities=0.5]", "", ""],
        "control_kind": ["", "random", "random", "", "static", "", "random", "", ""],
    })  # fmt: skip
    pairs = [(p.learned, p.control, p.kind) for p in control_pairs(frame)]
    assert pairs == [
        ("early_exit", "early_exit[rule=depth]", "static"),
        ("mod[capacities=0.5]", "mod[capacities=0.5,router=random]", "random"),
        ("tinv", "tinv[policy=random]", "random"),
    ]  # dht's learned twin did not run; acm's init=random is no control
    assert control_pairs(frame.drop(columns=["control_of", "control_kind"])) == []  # rows from before the columns


# The control relation of the synthetic labels below, as the harness would record it.
CONTROL_OF = {"early_exit[rule=depth]": ("early_exit", "static"), "tinv[policy=random]": ("tinv", "random")}


def samples(points: dict[str, dict[float, tuple[float, np.ndarray]]], seeds=(0,), noise=0.0) -> pd.DataFrame:
    """Per-sample records of task ``t`` from ``label → budget → (flops per sample, scores)``, on two
    targets.

    Seed s adds ``noise · s`` to every score of the learned labels (no '[' in the label), so seeds
    differ.
    """
    recs = []
    for hw in ("cpu", "cuda"):
        for seed in seeds:
            for label, curve in points.items():
                for budget, (flops, scores) in curve.items():
                    shift = noise * seed if "[" not in label else 0.0
                    for i, score in enumerate(scores):
                        recs.append(
                            dict(
                                task="t",
                                method_label=label,
                                budget=budget,
                                seed=seed,
                                hardware=hw,
                                sample_id=i,
                                flops=flops,
                                score=(score + shift) if hw == "cpu" else -9.0,
                            )
                        )
    return pd.DataFrame(recs)


def summary(labels: list[str], budgets: dict[str, list[float]], higher: bool = True) -> pd.DataFrame:
    return pd.DataFrame([
        dict(task="t", method_label=label, budget=b, flops_ratio=b / 2, quality_higher_is_better=higher,
             control_of=CONTROL_OF.get(label, ("", ""))[0], control_kind=CONTROL_OF.get(label, ("", ""))[1])
        for label in labels for b in budgets[label]
    ])  # fmt: skip


RNG = np.random.default_rng(0)
N = 400


def correct(p: float) -> np.ndarray:
    return (RNG.random(N) < p).astype(float)


def test_control_is_the_mixture_at_equal_flops_and_the_verdict_resolves_from_the_interval() -> None:
    full = correct(0.9)
    cheap, mid = correct(0.5), correct(0.7)
    learned_mid = np.maximum(mid, correct(0.5))  # clearly better than the control's interpolated mixture
    points = {
        "early_exit": {1.0: (100.0, full), 0.9: (55.0, learned_mid), 0.8: (30.0, cheap.copy())},
        "early_exit[rule=depth]": {1.0: (100.0, full), 0.6: (60.0, mid), 0.2: (20.0, cheap)},
    }
    s = samples(points)
    table = compare_to_controls(s, summary(list(points), {k: list(v) for k, v in points.items()}), "t",
                                metric=TopOneAccuracy()).set_index("budget")  # fmt: skip
    assert list(table.index) == [0.9, 0.8]  # the full budget is dense on both sides
    # 55 FLOPs lies between the control's 20 (w = 5/40 of the samples there) and 60: a mixture of
    # both curves.
    w = (60 - 55) / (60 - 20)
    assert table.loc[0.9, "control_quality"] == pytest.approx(w * cheap.mean() + (1 - w) * mid.mean())
    assert table.loc[0.9, "verdict"] == "better" and table.loc[0.9, "ci_low"] > 0
    assert table.loc[0.9, "kind"] == "static" and table.loc[0.9, "ci_over"] == "samples"
    # 30 FLOPs: the learned scores equal the control's cheap curve there up to the mixture: no
    # resolvable difference
    w = (60 - 30) / (60 - 20)
    assert table.loc[0.8, "control_quality"] == pytest.approx(w * cheap.mean() + (1 - w) * mid.mean())
    assert table.loc[0.8, "verdict"] in {"worse", "tie"}
    assert table.loc[0.9, "flops_ratio"] == pytest.approx(0.45)  # read from the summary


def test_a_difference_inside_the_noise_is_a_tie() -> None:
    a = correct(0.8)
    b = a.copy()
    b[:2] = 1 - b[:2]  # two of 400 items differ
    points = {
        "tinv": {1.0: (100.0, a), 0.5: (50.0, a)},
        "tinv[policy=random]": {1.0: (100.0, a), 0.5: (50.0, b)},
    }
    table = compare_to_controls(samples(points), summary(list(points), {k: list(v) for k, v in points.items()}),
                                "t", metric=TopOneAccuracy())  # fmt: skip
    assert table["verdict"].tolist() == ["tie"] and table["ci_low"].iloc[0] < 0 < table["ci_high"].iloc[0]


def test_several_seeds_give_a_t_interval_over_per_seed_differences() -> None:
    base = correct(0.7)
    points = {
        "tinv": {1.0: (100.0, base), 0.5: (50.0, base + 0.1)},
        "tinv[policy=random]": {1.0: (100.0, base), 0.5: (50.0, base)},
    }
    s = samples(points, seeds=(0, 1, 2), noise=0.01)
    table = compare_to_controls(s, summary(list(points), {k: list(v) for k, v in points.items()}), "t",
                                metric=TopOneAccuracy())  # fmt: skip
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["ci_over"] == "3 seeds"
    assert row["delta"] == pytest.approx(0.11)  # 0.10, 0.11, 0.12 over the seeds
    assert row["ci_low"] == pytest.approx(0.11 - 4.302653 * 0.01 / np.sqrt(3), rel=1e-5)
    assert row["verdict"] == "better"


def test_perplexity_is_compared_in_nll_space_and_lower_is_better() -> None:
    nll_full, nll_learned, nll_control_cheap = np.full(N, 2.0), np.full(N, 2.1), np.full(N, 2.5)
    nll_learned = nll_learned + RNG.normal(0, 0.01, N)
    points = {
        "tinv": {1.0: (100.0, nll_full), 0.5: (40.0, nll_learned), 0.3: (10.0, nll_learned), 0.2: (200.0, nll_full)},
        "tinv[policy=random]": {1.0: (100.0, nll_full), 0.5: (20.0, nll_control_cheap)},
    }
    table = compare_to_controls(
        samples(points),
        summary(list(points), {k: list(v) for k, v in points.items()}, higher=False),
        "t",
        metric=Perplexity(),
    ).set_index("budget")
    # 40 FLOPs: control mixes 3/4 of the samples at 20 (NLL 2.5) and 1/4 at 100 (2.0): NLL 2.375
    assert table.loc[0.5, "control_quality"] == pytest.approx(np.exp(2.375))
    assert table.loc[0.5, "quality"] == pytest.approx(np.exp(nll_learned.mean()))
    assert table.loc[0.5, "delta"] > 0 and table.loc[0.5, "verdict"] == "better"
    assert table.loc[0.3, "verdict"] == "better, fewer FLOPs"  # cheaper than the cheapest control and better
    assert table.loc[0.2, "verdict"] == "as good, more FLOPs"  # costlier than every control point, same as full
    assert {"better", "better, fewer FLOPs", "as good, fewer FLOPs"} == WINS


def test_no_pairs_or_no_samples_give_an_empty_comparison() -> None:
    points = {"tinv": {1.0: (100.0, correct(0.9)), 0.5: (50.0, correct(0.8))}}
    frame = summary(list(points), {"tinv": [1.0, 0.5]})
    assert compare_to_controls(samples(points), frame, "t", metric=TopOneAccuracy()).empty
    assert compare_to_controls(pd.DataFrame(), frame, "t").empty
    assert compare_to_controls(samples(points), frame, "other-task").empty


def test_report_shows_learned_vs_static_vs_random(tmp_path) -> None:
    from test_report import make_rows  # the report tests' synthetic rows (same folder, on sys.path)

    rows = make_rows(hardware=("cpu",), seeds=(0,))
    cls = rows[(rows.task == "cls") & (rows.method == "early_exit")]
    static = cls.assign(method_label="early_exit[rule=depth]", control_of="early_exit", control_kind="static")
    budgets = sorted(cls["budget"].unique())
    flops = {b: float(cls[(cls.budget == b) & (cls.metric == "flops_per_sample")]["value"].iloc[0]) for b in budgets}
    recs = []
    for label, p in (("early_exit", 0.9), ("early_exit[rule=depth]", 0.6)):
        for b in budgets:
            scores = correct(0.95 if b == 1.0 else p)
            recs += [
                dict(
                    run_key=f"cls-{label}",
                    task="cls",
                    method="early_exit",
                    method_label=label,
                    budget=b,
                    seed=0,
                    hardware="cpu",
                    sample_id=i,
                    flops=flops[b],
                    score=s,
                )
                for i, s in enumerate(scores)
            ]
    write_report(pd.concat([rows, static], ignore_index=True), pd.DataFrame(recs), tmp_path)
    index = (tmp_path / "index.md").read_text()
    assert index.count("### Learned vs static vs random") == 1
    assert "**early_exit** vs **early_exit[rule=depth]** (static control): learned better at 3 of 3 budgets" in index


def test_any_two_labels_compare_at_equal_flops() -> None:
    """Early exit against layer skipping (no control relation): the same paired comparison, kind
    left empty."""
    full, exit_half, skip_half = correct(0.9), correct(0.85), correct(0.5)
    points = {
        "early_exit[rule=depth]": {1.0: (100.0, full), 0.5: (50.0, exit_half)},
        "layer_skip": {1.0: (100.0, full), 0.5: (50.0, skip_half)},
    }
    frame = summary(list(points), {k: list(v) for k, v in points.items()})
    table = compare_at_equal_flops(samples(points), frame, "t", "early_exit[rule=depth]", "layer_skip",
                                   metric=TopOneAccuracy())  # fmt: skip
    row = table.iloc[0]
    assert (row["control"], row["kind"], row["budget"]) == ("layer_skip", "", 0.5)
    assert row["delta"] == pytest.approx(exit_half.mean() - skip_half.mean()) and row["verdict"] == "better"
    assert compare_to_controls(samples(points), frame, "t", metric=TopOneAccuracy()).empty  # not a control pair


def test_a_control_that_falls_with_more_flops_is_its_best_cheaper_point() -> None:
    """MoD's random routing at isoFLOP training scores better at lower capacity: a learned point
    between two of its budgets faces the cheaper, better one, not the mixture of both."""
    nll = {20.0: 2.2, 60.0: 2.6, 100.0: 2.0}  # the control's NLL per FLOPs: falls, then rises
    learned = np.full(N, 2.3) + RNG.normal(0, 0.01, N)  # at 40 FLOPs: beats the mixture (2.4), not 2.2
    points = {
        "mod": {1.0: (100.0, np.full(N, 2.0)), 0.25: (40.0, learned)},
        "mod[router=random]": {1.0: (100.0, np.full(N, 2.0)), 0.5: (60.0, np.full(N, nll[60.0])),
                               0.25: (20.0, np.full(N, nll[20.0]))},
    }  # fmt: skip
    s = summary(list(points), {k: list(v) for k, v in points.items()}, higher=False)
    row = compare_at_equal_flops(samples(points), s, "t", "mod", "mod[router=random]", metric=Perplexity()).iloc[0]
    assert row["control_quality"] == pytest.approx(np.exp(nll[20.0]))
    assert row["delta"] < 0 and row["verdict"] == "worse"
    # a control that rises with FLOPs keeps the mixture (the other tests), and so does this one
    # where its cheaper point is worse than the mixture
    points["mod[router=random]"][0.25] = (20.0, np.full(N, 3.0))
    row = compare_at_equal_flops(samples(points), s, "t", "mod", "mod[router=random]", metric=Perplexity()).iloc[0]
    assert row["control_quality"] == pytest.approx(np.exp((3.0 + 2.6) / 2))  # w = 1/2 at 40 FLOPs
    assert row["verdict"] == "better"
