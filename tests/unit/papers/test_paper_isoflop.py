"""MoD's isoFLOP study: the size sweep, the isoflop measure on synthetic rows, table M1."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from dynbench.papers.measures import isoflop_point, measure, suite_rows
from dynbench.papers.registry import PaperRegistryError, load_paper, load_papers
from dynbench.papers.render import build, render

PAPER = load_papers()["mod"]
SIZES = ("shakespeare", "shakespeare[model.d_model=64]", "shakespeare[model.d_model=96]")


def size_rows(points: dict[str, dict], seeds=(0, 1, 2), profile="full") -> pd.DataFrame:
    """Dense and MoD rows per size, ``{task: {label: {budget: (ppl, flops)}}}``, seed-jittered."""
    recs = []
    for seed in seeds:
        for task, labels in points.items():
            for label, budgets in labels.items():
                for budget, (ppl, flops) in budgets.items():
                    q = ppl + 0.01 * (seed - 1)  # a small spread over seeds: a t interval of about ±0.025
                    base = dict(task=task, method=label.split("[")[0], method_label=label, budget=budget,
                                is_full_budget=budget == 1.0, seed=seed, hardware="cpu", profile=profile, limit=None,
                                run_key=f"{task}-{label}-{seed}", batch_size=1, ci_low=None, ci_high=None,
                                upper_bound=False)  # fmt: skip
                    recs += [
                        {**base, "metric": "quality", "value": q, "unit": "ppl", "higher_is_better": False},
                        {**base, "metric": "flops_per_sample", "value": flops, "unit": "flops",
                         "higher_is_better": False},
                        {**base, "metric": "flops_ratio", "value": flops / points[task]["dense"][1.0][1],
                         "unit": "ratio", "higher_is_better": False},
                    ]  # fmt: skip
    return pd.DataFrame(recs)


def sweep(mod_ppl_small: float = 6.2, mod_ppl_default: float = 5.7) -> dict[str, dict]:
    """Three sizes; the default (d=128) is the best dense at 6.74 ppl."""
    return {
        "shakespeare": {"dense": {1.0: (6.74, 238e6)},
                        "mod": {1.0: (6.74, 238e6), 0.5: (mod_ppl_default + 0.3, 180e6),
                                0.125: (mod_ppl_default, 134e6)}},
        "shakespeare[model.d_model=96]": {"dense": {1.0: (7.3, 141e6)},
                                          "mod[capacities=0.125]": {1.0: (7.3, 141e6), 0.125: (mod_ppl_small, 80e6)}},
        "shakespeare[model.d_model=64]": {"dense": {1.0: (8.1, 69e6)},
                                          "mod[capacities=0.125]": {1.0: (8.1, 69e6), 0.125: (7.9, 40e6)}},
    }  # fmt: skip


def isoflop_claim(paper=PAPER):
    return next(c for c in paper.claims if c.id == "isoflop-66")


def test_the_registry_holds_the_size_sweep_table_m1_and_a_measured_isoflop_claim():
    assert set(PAPER.sweep_tasks("sizes", "full")) == set(SIZES)
    assert PAPER.sweep_tasks("sizes", "quick")[0] == "toy-text"  # the role's own task first: its runs are reused
    main, sizes = PAPER.run_suites("full")
    assert [t.label for t in main.tasks] == ["shakespeare"] and {t.label for t in sizes.tasks} == set(SIZES[1:])
    assert [m.label for m in sizes.methods] == ["dense", "mod[capacities=0.125]"] and sizes.seeds == (0, 1, 2)
    m1 = next(t for t in PAPER.tables if t.id == "M1")
    assert m1.sweep == "sizes" and m1.figure == "isoflop_bars"
    claim = isoflop_claim()
    assert claim.measure.kind == "isoflop" and not claim.comparable and claim.paper_value == pytest.approx(1.66)


def test_a_clear_win_gives_the_forward_flops_ratio_of_the_best_dense_to_the_cheapest_mod_as_good():
    rows = size_rows(sweep(mod_ppl_small=6.2))
    point = isoflop_point(rows, SIZES, ("mod", "mod[capacities=0.125]"), "dense")
    # the d=96 MoD (6.2 ppl) beats the best dense (d=128, 6.74) at 80 M FLOPs, d=64's (7.9) not
    assert point.value == pytest.approx(238e6 / 80e6) and point.where == "mod[capacities=0.125] on " + SIZES[2]
    assert point.budget == 0.125 and point.seeds == 3
    comparable = dataclasses.replace(PAPER, claims=(dataclasses.replace(isoflop_claim(), comparable=True),))
    out = build(comparable, rows, pd.DataFrame())
    assert out.suite == "full" and out.claims[0].points[0].value == pytest.approx(2.975)
    assert out.claims[0].verdict == "reproduced"  # FLOPs are exact here: the interval is a point, above 1.66


def test_a_larger_model_than_the_best_dense_does_not_count():
    points = sweep(mod_ppl_small=9.0, mod_ppl_default=9.0)  # no MoD as good at d<=128 …
    points["shakespeare[model.d_model=96]"]["dense"] = {1.0: (6.5, 300e6)}  # … a costlier dense is now the best …
    points["shakespeare"]["mod"][0.125] = (6.4, 134e6)  # … and a MoD of a cheaper size beats it
    point = isoflop_point(size_rows(points), SIZES, ("mod", "mod[capacities=0.125]"), "dense")
    assert point.value == pytest.approx(300e6 / 134e6) and point.where == "mod on shakespeare"


def test_no_mod_as_good_as_the_best_dense_is_not_measured_and_says_so():
    rows = size_rows(sweep(mod_ppl_small=7.2, mod_ppl_default=6.9))  # every MoD worse than 6.74 [6.72, 6.76]
    assert isoflop_point(rows, SIZES, ("mod", "mod[capacities=0.125]"), "dense") is None
    comparable = dataclasses.replace(PAPER, claims=(dataclasses.replace(isoflop_claim(), comparable=True),))
    out = build(comparable, rows, pd.DataFrame())
    assert out.claims[0].points == () and out.claims[0].verdict == "not measured"
    assert "no MoD model as good as the best dense one in these results" in render([out], "md")
    assert measure(PAPER, isoflop_claim().measure, "full", rows.iloc[0:0], pd.DataFrame()) == []


def test_table_m1_has_a_block_per_model_size_with_its_parameters():
    rows = size_rows(sweep())
    name, mine = suite_rows(PAPER, rows)
    assert name == "full" and set(mine["task"]) == set(SIZES)  # the sweep's sizes are the suite's rows
    frame = dict(build(PAPER, rows, pd.DataFrame()).tables)[next(t for t in PAPER.tables if t.id == "M1")]
    assert list(frame.columns[:4]) == ["model", "params", "method", "budget"]
    params = dict(zip(frame["model"], frame["params"]))
    assert params == {"shakespeare": "834,657", SIZES[1]: "220,769", SIZES[2]: "478,561"}
    text = render([build(PAPER, rows, pd.DataFrame())], "md")
    assert "| shakespeare[model.d_model=96] | 478,561 | mod[capacities=0.125] | 0.125 |" in text
    csv_rows = render([build(PAPER, rows, pd.DataFrame())], "csv").splitlines()
    assert any(line.startswith("mod,full,table,M1,dense,") and line.endswith(SIZES[1]) for line in csv_rows)


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = PAPER.path.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "mod.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    methods: [dense, \"mod[capacities=0.125]\"]\n", "    metods: [dense]\n",
         "Unknown option 'metods' for mod.yaml sweeps.sizes. Did you mean: methods?"),
        ("\"shakespeare[model.d_model=64]\"", "\"toy-vision[model.d_model=64]\"",
         "'toy-vision[model.d_model=64]' is not the role's task 'shakespeare'"),
        ("\"shakespeare[model.d_model=64]\"", "\"shakespeare[model.d_modle=64]\"", "Did you mean: d_model?"),
        ("    sweep: sizes\n", "    sweep: size\n", "Unknown sweep 'size'. Did you mean: sizes?"),
        ("sweeps:\n", "sweep:\n", "unknown key 'sweep'. Did you mean: sweeps?"),
    ],
)  # fmt: skip
def test_a_bad_sweep_fails_with_what_to_do(tmp_path: Path, old: str, new: str, message: str):
    with pytest.raises(PaperRegistryError) as err:
        load_paper(_write_variant(tmp_path, old, new))
    assert message in str(err.value)
