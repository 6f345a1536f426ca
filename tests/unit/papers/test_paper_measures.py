"""Our numbers for claims, read from synthetic stored rows, and the verdicts they get."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from dynbench.papers.measures import metric_point, on_hardware, suite_rows, vs_dense
from dynbench.papers.registry import load_papers
from dynbench.papers.render import build, render

PAPER = load_papers()["transformer_inverse"]


def rows(seeds=(0, 1, 2), flops=0.55, acc_drop=0.002, mem=0.9, profile="full", task="fashion-mnist") -> pd.DataFrame:
    """Rows of dense and tinv (budget 0.5): FLOPs ratio, quality Δ and peak memory per seed."""
    recs = []
    for seed in seeds:
        jitter = 0.001 * seed
        for label, budget, full, ratio, delta, peak in (
            ("dense", 1.0, True, 1.0, 0.0, 100.0),
            ("tinv", 1.0, True, 1.0, 0.0, 100.0),
            ("tinv", 0.5, False, flops + jitter, -acc_drop + jitter, 100.0 * mem + seed),
        ):
            base = dict(task=task, method=label, method_label=label, budget=budget, is_full_budget=full, seed=seed,
                        hardware="cpu", profile=profile, limit=None, run_key=f"{label}-{seed}")  # fmt: skip
            recs += [
                {**base, "metric": "flops_ratio", "value": ratio, "batch_size": 32, "ci_low": ratio - 0.01,
                 "ci_high": ratio + 0.01},
                {**base, "metric": "quality_delta", "value": delta, "batch_size": 32, "ci_low": delta - 0.004,
                 "ci_high": delta + 0.004},
                {**base, "metric": "peak_mem_bytes", "value": peak, "batch_size": 1},
            ]  # fmt: skip
    return pd.DataFrame(recs)


def test_a_metric_over_seeds_gets_a_t_interval_and_one_seed_keeps_the_rows_own():
    three = metric_point(rows(), "fashion-mnist", "tinv", "lowest", "flops_ratio")
    assert three.budget == 0.5 and three.seeds == 3 and three.over == "3 seeds"
    assert three.value == pytest.approx(0.551) and three.low < 0.551 < three.high
    one = metric_point(rows(seeds=(0,)), "fashion-mnist", "tinv", "0.5", "flops_ratio")
    assert (one.low, one.high, one.over) == (pytest.approx(0.54), pytest.approx(0.56), "samples")
    assert metric_point(rows(), "fashion-mnist", "tinv", "0.25", "flops_ratio") is None  # not run: not measured


def test_changes_against_dense_are_percent_per_seed():
    flops = vs_dense(rows(), "fashion-mnist", "tinv", "lowest", "flops_per_sample")
    assert flops.value == pytest.approx(-44.9)
    memory = vs_dense(rows(), "fashion-mnist", "tinv", "lowest", "peak_mem_bytes")
    assert memory.value == pytest.approx(-9.0) and memory.seeds == 3


@pytest.mark.parametrize(
    ("flops", "verdict"),
    [(0.40, "reproduced"), (0.80, "not reproduced"), (0.573, "inconclusive")],  # a clear win, a loss, an overlap
)
def test_a_value_claim_judged_from_rows(flops, verdict):
    claim = next(c for c in PAPER.claims if c.id == "flops-42.7")
    comparable = dataclasses.replace(PAPER, claims=(dataclasses.replace(claim, comparable=True),))
    out = build(comparable, rows(flops=flops), pd.DataFrame())
    assert out.suite == "full" and out.claims[0].verdict == verdict


def test_a_different_scale_is_not_comparable_and_the_output_says_why():
    out = build(PAPER, rows(flops=0.40), pd.DataFrame())
    verdicts = {r.claim.id: r.verdict for r in out.claims}
    assert verdicts == {"flops-42.7": "not comparable", "memory-34.1": "not comparable",
                        "accuracy-0.3": "not comparable", "jetson-deployment": "not comparable"}  # fmt: skip
    text = render([out], "md")
    assert "not comparable: the paper's model and operating point are not given" in text
    assert "| tinv | 0.5 | 0.401 [" in text  # the table from the same rows


def with_jetson(frame: pd.DataFrame, dense_ms: float = 2.0, tinv_ms: float = 1.5) -> pd.DataFrame:
    """``frame`` and its runs priced on a modeled Jetson: a latency, a different FLOPs ratio."""
    jetson = frame.assign(hardware="jetson-agx-xavier", modeled=True, run_key=frame["run_key"] + "-jetson")
    jetson.loc[jetson["metric"] == "flops_ratio", "value"] = 9.0  # a value no CPU claim may read
    latency = jetson[jetson["metric"] == "peak_mem_bytes"].assign(metric="latency_ms")
    latency["value"] = [dense_ms if m == "dense" or full else tinv_ms
                        for m, full in zip(latency["method"], latency["is_full_budget"], strict=True)]  # fmt: skip
    return pd.concat([frame, jetson, latency], ignore_index=True)


def test_a_modeled_device_is_read_only_by_what_names_it():
    both = with_jetson(rows())
    assert both["modeled"].isna().any()  # the CPU rows predate the column: read as measured
    flops = vs_dense(on_hardware(both, ""), "fashion-mnist", "tinv", "lowest", "flops_per_sample")
    assert flops.value == pytest.approx(-44.9)  # the CPU's rows only, not the Jetson's 9.0
    assert set(on_hardware(both, "jetson-agx-xavier")["hardware"]) == {"jetson-agx-xavier"}
    out = build(PAPER, both, pd.DataFrame())
    jetson = next(r for r in out.claims if r.claim.id == "jetson-deployment")
    assert jetson.points[0].value == pytest.approx(-25.0) and jetson.points[0].seeds == 3
    assert jetson.verdict == "not comparable"  # modeled, and the paper prints no latency
    ti2 = dict(out.tables)[next(t for t in PAPER.tables if t.id == "TI2")]
    assert list(ti2["latency_ms"])[:2] == ["2.00 [2.00, 2.00]", "2.00 [2.00, 2.00]"]  # dense, then tinv at b=1
    md, tex, csv_ = (render([out], fmt) for fmt in ("md", "latex", "csv"))
    assert "Hardware: jetson-agx-xavier, modeled" in md
    assert "jetson-agx-xavier, modeled (dynbench" in tex
    assert 'TI2,tinv,0.5,latency_ms,"1.50 [1.50, 1.50]",,,,,,jetson-agx-xavier,fashion-mnist' in csv_


def test_the_output_says_which_runs_machines_and_commits_made_it():
    stamped = rows().assign(machine="vm | Linux | AMD EPYC x2 | device=AMD EPYC, cores=2", dirty=False,
                            started_at="2026-12-05T10:00:00+00:00")  # fmt: skip
    stamped["git_sha"] = ["e5324e1" + "0" * 33 if key.endswith("-2") else "c129ee2" + "0" * 33
                          for key in stamped["run_key"]]  # fmt: skip
    stamped.loc[stamped["run_key"] == "dense-0", "started_at"] = "2026-12-04T23:00:00+00:00"
    out = build(PAPER, stamped, pd.DataFrame())
    made = "6 runs on `vm | Linux | AMD EPYC x2` at commits c129ee2, e5324e1, started 2026-12-04 to 2026-12-05"
    assert out.made_from == made
    assert f"Made from {made}." in render([out], "md")
    assert render([out], "latex").startswith(f"% transformer_inverse: made from {made}")
    assert build(PAPER, rows(), pd.DataFrame()).made_from == "6 runs on an unrecorded machine"
    other = stamped.assign(method="acm", method_label="acm", run_key="acm-0")  # another paper's run, same task
    assert build(PAPER, pd.concat([stamped, other]), pd.DataFrame()).made_from == made  # not counted
    elsewhere = stamped.assign(hardware="a100", run_key=stamped["run_key"] + "-a100")  # a target tinv's suites skip
    assert build(PAPER, pd.concat([stamped, elsewhere]), pd.DataFrame()).made_from == made


def test_quick_runs_are_used_only_without_full_ones():
    quick = rows(profile="quick", task="toy-vision")
    assert suite_rows(PAPER, quick)[0] == "quick"
    both = pd.concat([quick, rows()], ignore_index=True)
    name, mine = suite_rows(PAPER, both)
    assert name == "full" and set(mine["task"]) == {"fashion-mnist"}
    text = render([build(PAPER, quick, pd.DataFrame())], "md")
    assert "a first look on small tasks (vision: `toy-vision` for `fashion-mnist`)" in text


def test_a_superseded_run_of_the_same_configuration_is_not_read_twice():
    old, new = rows(), rows(flops=0.40)
    old["started_at"], new["started_at"] = "2026-12-05T09:00:00+00:00", "2026-12-05T17:00:00+00:00"
    new["run_key"] = new["run_key"] + "-changed-suite"  # the same configuration under another key
    name, mine = suite_rows(PAPER, pd.concat([old, new], ignore_index=True))
    assert name == "full"
    assert set(mine["run_key"]) == set(new["run_key"])  # only the newer runs, one per configuration
    assert metric_point(mine, "fashion-mnist", "tinv", "lowest", "flops_ratio").value == pytest.approx(0.401)
    without_dates = pd.concat([old, new], ignore_index=True).drop(columns="started_at")
    assert len(suite_rows(PAPER, without_dates)[1]) == len(without_dates)  # nothing to order by: all kept
