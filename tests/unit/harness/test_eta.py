"""The suite estimate: recorded phase times, matched by what each phase's cost depends on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynbench.config import SuiteSpec, parse_plugin_list
from dynbench.harness import eta as eta_mod
from dynbench.harness.eta import HISTORY_FILE, PhaseTimes, SuiteEta, format_duration, read_records, record_run
from dynbench.harness.planning import RunPlan, plan_suite


@pytest.fixture(autouse=True)
def _no_prior(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only this test's records count (the shipped reference-machine prior is left out)."""
    monkeypatch.setattr(eta_mod, "PRIOR_FILE", tmp_path / "no-prior.jsonl")


def suite_plans(methods: str = "dense,layer_skip", tasks: str = "toy-vision") -> list[RunPlan]:
    return plan_suite(SuiteSpec(methods=parse_plugin_list(methods), tasks=parse_plugin_list(tasks)).runs())


def test_record_and_read_back(tmp_path: Path):
    dense, skip = suite_plans()
    record_run(tmp_path, dense, PhaseTimes(backbone_s=30.0, backbone_trained=True, measure_s=4.0), 36.0)
    record_run(tmp_path, skip, PhaseTimes(fit_s=2.0, fit_trained=True, measure_s=8.0), 11.0)
    with open(tmp_path / HISTORY_FILE, "a") as f:
        f.write('{"cut off')  # a line cut by a kill is skipped, not fatal
    recs = read_records(tmp_path / HISTORY_FILE)
    assert [r["run_key"] for r in recs] == [dense.run_key, skip.run_key]
    assert recs[1]["budgets"] == len(skip.budgets) and recs[0]["fit_key"] == ""  # dense fits nothing


def test_estimate_counts_only_work_still_to_do(tmp_path: Path):
    dense, skip = suite_plans()
    history = tmp_path / HISTORY_FILE
    assert SuiteEta([dense, skip], tmp_path).remaining(None, 0.0, ()) == (0.0, 2)  # nothing known yet
    record_run(tmp_path, dense, PhaseTimes(backbone_s=30.0, backbone_trained=True, measure_s=4.0), 36.0)
    record_run(tmp_path, skip, PhaseTimes(fit_s=2.0, fit_trained=True, measure_s=8.0), 12.0)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    overhead = eta_mod.OVERHEAD_S + 2.0  # the median of 36 - 34 and 12 - 10
    eta = SuiteEta([dense, skip], tmp_path)  # cold cache: the backbone and the fit are still to make
    assert eta.run_seconds(dense) == pytest.approx(30.0 + 4.0 + overhead)
    assert eta.run_seconds(skip) == pytest.approx(2.0 + 8.0 + overhead)
    seconds, unknown = eta.remaining(dense, 10.0, ())  # 10 s into the first run
    dense_s, skip_s = 34.0 + overhead, 10.0 + overhead
    assert unknown == 0 and seconds == pytest.approx(dense_s - 10.0 + skip_s)
    assert eta.remaining(None, 0.0, [dense.run_key])[0] == pytest.approx(skip_s)
    (tmp_path / "backbones").mkdir()
    (tmp_path / "backbones" / f"{lines[0]['backbone_key']}.pt").touch()  # now cached: only loaded
    assert SuiteEta([dense, skip], tmp_path).run_seconds(dense) == pytest.approx(4.0 + overhead)
    assert SuiteEta([dense, skip], tmp_path, done=[dense.run_key]).remaining(None, 0, ())[0] == pytest.approx(skip_s)


def test_parallel_workers_share_the_work_left_but_never_beat_the_longest_run(tmp_path: Path):
    dense, skip = suite_plans()
    record_run(tmp_path, dense, PhaseTimes(backbone_s=30.0, backbone_trained=True, measure_s=4.0), 34.0)
    record_run(tmp_path, skip, PhaseTimes(fit_s=2.0, fit_trained=True, measure_s=8.0), 10.0)
    serial = SuiteEta([dense, skip], tmp_path)
    dense_s, skip_s = serial.run_seconds(dense), serial.run_seconds(skip)
    assert serial.remaining(None, 0.0, ())[0] == pytest.approx(dense_s + skip_s)
    two = SuiteEta([dense, skip], tmp_path, parallel=2)
    assert two.remaining(None, 0.0, ())[0] == pytest.approx(dense_s)  # the longest run: more than half the sum
    many = SuiteEta([dense, skip, dense, skip], tmp_path, parallel=3)
    assert many.remaining(None, 0.0, ())[0] == pytest.approx(max(dense_s, (2 * dense_s + 2 * skip_s) / 3))


def test_a_local_dask_cluster_estimates_with_its_workers(tmp_path: Path):
    from dynbench import api

    plans = suite_plans()
    assert api.estimate(plans, tmp_path, set(), "dask[workers=3]").parallel == 3
    assert api.estimate(plans, tmp_path, set(), "dask[address=tcp://127.0.0.1:1]").parallel == 1  # size unknown
    assert api.estimate(plans, tmp_path, set(), "subprocess").parallel == 1


def test_unseen_runs_borrow_from_the_closest_records(tmp_path: Path):
    (dense,) = suite_plans("dense")
    early, skip = suite_plans("early_exit,layer_skip")
    record_run(tmp_path, dense, PhaseTimes(backbone_s=30.0, backbone_trained=True, measure_s=4.0), 34.0)
    record_run(tmp_path, skip, PhaseTimes(fit_s=6.0, fit_trained=True, measure_s=8.0), 14.0)
    eta = SuiteEta([early], tmp_path)
    # measurement: per budget of the same task's runs (4 and 4 s); fit: any fit on the task (6 s)
    assert eta.run_seconds(early) == pytest.approx(4.0 * len(early.budgets) + 6.0 + 30.0 + eta_mod.OVERHEAD_S)


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 61, 3725)] == ["4 s", "1 min 01 s", "1 h 02 min"]


def test_the_prior_counts_until_local_records_exist_scaled_to_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    dense, skip = suite_plans()
    prior = tmp_path / "prior"
    record_run(prior, dense, PhaseTimes(backbone_s=20.0, backbone_trained=True, measure_s=2.0), 22.0)
    record_run(prior, skip, PhaseTimes(fit_s=1.0, fit_trained=True, measure_s=4.0), 5.0)
    monkeypatch.setattr(eta_mod, "PRIOR_FILE", prior / HISTORY_FILE)
    local = tmp_path / "cache"
    eta = SuiteEta([dense, skip], local)  # no local record: the reference machine's times
    assert eta.remaining(None, 0.0, ())[0] == pytest.approx(22.0 + 5.0 + 2 * eta_mod.OVERHEAD_S)
    record_run(local, dense, PhaseTimes(backbone_s=40.0, backbone_trained=True, measure_s=4.0), 44.0)
    eta.reload()  # this machine measured dense twice as slow: the prior's layer_skip is scaled by 2
    assert eta.factor == pytest.approx(2.0)
    assert eta.run_seconds(skip) == pytest.approx(2 * (1.0 + 4.0) + eta_mod.OVERHEAD_S)
