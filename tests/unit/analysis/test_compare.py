from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from synthetic_results import MACHINE, folder, rows_of  # same folder, on sys.path

from dynbench.analysis import compare_render as render
from dynbench.analysis.compare import (
    GateConfig,
    compare,
    failing,
    gate_from_mapping,
    load_side,
    read_baseline,
    save_baseline,
)
from dynbench.cli import main


def statuses(changes) -> dict[str, str]:
    return {c.key[-1]: c.status for c in changes}


def test_identical_results_compare_unchanged_and_pass(tmp_path: Path) -> None:
    a, b = folder(tmp_path / "a", rows_of()), folder(tmp_path / "b", rows_of())
    changes = compare(load_side(a), load_side(b), strict=True)
    assert not failing(changes)
    assert statuses(changes)["latency_ms_iqr"] == "skipped"  # a spread is not compared
    assert {s for m, s in statuses(changes).items() if m != "latency_ms_iqr"} == {"unchanged"}
    assert main(["compare", str(a), str(b)]) == 0


def test_half_a_percent_more_flops_is_a_regression_that_names_the_row(tmp_path: Path, capsys) -> None:
    a, b = folder(tmp_path / "a", rows_of()), folder(tmp_path / "b", rows_of(flops=1.005e6))
    changes = compare(load_side(a), load_side(b))
    [bad] = failing(changes)
    assert bad.status == "regression" and bad.key[-1] == "flops_per_sample" and bad.relative == pytest.approx(0.005)
    assert main(["compare", str(a), str(b), "--format", "md"]) == 1
    md = capsys.readouterr().out
    assert "FAIL (1 failing)" in md
    assert (
        "| REGRESSION | toy-text / layer_skip | 0.5 | cpu | 1 | 0 | flops_per_sample | 1e+06 | 1.005e+06 | +0.500% |"
        in md
    )


def test_fewer_flops_is_an_improvement_that_fails_only_under_strict(tmp_path: Path) -> None:
    a, b = folder(tmp_path / "a", rows_of()), folder(tmp_path / "b", rows_of(flops=0.9e6))
    assert statuses(compare(load_side(a), load_side(b)))["flops_per_sample"] == "improvement"
    assert not failing(compare(load_side(a), load_side(b)))
    assert [c.key[-1] for c in failing(compare(load_side(a), load_side(b), strict=True))] == ["flops_per_sample"]


def test_quality_moves_within_its_tolerance_only(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    near = folder(tmp_path / "b", rows_of(quality=3.0 * (1 + 5e-5)))  # inside rtol 1e-4
    far = folder(tmp_path / "c", rows_of(quality=3.01))  # higher perplexity: worse
    assert statuses(compare(load_side(a), load_side(near)))["quality"] == "unchanged"
    assert statuses(compare(load_side(a), load_side(far)))["quality"] == "regression"


def test_a_timing_change_inside_the_noise_passes_and_three_times_slower_fails(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    noisy = folder(tmp_path / "b", rows_of(latency=(1.1, 0.9, 1.3)))  # +10%, intervals overlap
    slow = folder(tmp_path / "c", rows_of(latency=(3.0, 2.95, 3.05), speedup=(0.6, 0.58, 0.62)))
    assert statuses(compare(load_side(a), load_side(noisy)))["latency_ms"] == "unchanged"
    changes = compare(load_side(a), load_side(slow))
    assert statuses(changes)["latency_ms"] == "regression" and statuses(changes)["speedup_realized"] == "regression"
    assert {c.key[-1] for c in failing(changes)} == {"latency_ms", "speedup_realized"}
    warn = compare(load_side(a), load_side(slow), GateConfig(timing_fail=False))  # the CI suite's gate
    assert not failing(warn) and statuses(warn)["latency_ms"] == "regression"


def test_absolute_times_are_compared_only_on_one_machine_and_ratios_always(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    other = [dict(r, machine="another box") for r in rows_of(latency=(3.0, 2.9, 3.1), speedup=(0.6, 0.58, 0.62))]
    changes = compare(load_side(a), load_side(folder(tmp_path / "b", other)))
    assert statuses(changes)["latency_ms"] == "skipped"
    assert statuses(changes)["speedup_realized"] == "regression"


def test_missing_and_new_runs_are_listed_and_missing_fails_under_strict(tmp_path: Path, capsys) -> None:
    extra = [dict(r, method_label="dense", method="dense", run_key="toy-text__dense__s0") for r in rows_of()]
    a = folder(tmp_path / "a", rows_of() + extra)
    b = folder(tmp_path / "b", rows_of() + [dict(r, seed=1, run_key="s1") for r in rows_of()])
    changes = compare(load_side(a), load_side(b))
    assert {c.status for c in changes if c.key[1] == "dense"} == {"missing"}
    assert {c.status for c in changes if c.key[5] == 1} == {"new"}
    assert not failing(changes) and failing(compare(load_side(a), load_side(b), strict=True))
    assert main(["compare", str(a), str(b), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "toy-text / dense" in out


def test_per_metric_and_per_benchmark_thresholds_from_a_gate(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    slow = folder(tmp_path / "b", rows_of(latency=(1.3, 1.28, 1.32)))  # +30%, intervals apart
    assert statuses(compare(load_side(a), load_side(slow)))["latency_ms"] == "regression"
    lax = gate_from_mapping({"metrics": {"latency*": {"threshold": 0.5}}})
    assert statuses(compare(load_side(a), load_side(slow), lax))["latency_ms"] == "unchanged"
    per_bench = gate_from_mapping({"benchmarks": {"toy-text/layer_*": {"latency_ms": {"kind": "ignore"}}}})
    assert statuses(compare(load_side(a), load_side(slow), per_bench))["latency_ms"] == "skipped"


def test_bad_gate_sections_name_the_key_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"Unknown key 'metric' in gate. Did you mean: metrics\?"):
        gate_from_mapping({"metric": {}})
    with pytest.raises(
        ValueError, match=r"Unknown rule field 'treshold' in gate.metrics.latency_ms. Did you mean: threshold"
    ):
        gate_from_mapping({"metrics": {"latency_ms": {"treshold": 0.1}}})
    with pytest.raises(ValueError, match=r"must be 'task/method_label'"):
        gate_from_mapping({"benchmarks": {"toy-text": {}}})
    with pytest.raises(ValueError, match=r"kind"):
        gate_from_mapping({"metrics": {"quality": {"kind": "fuzzy"}}})


def test_a_baseline_round_trips_and_compares_like_its_folder(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    path = tmp_path / "base" / "ci.jsonl"
    assert main(["baseline", "save", str(a), "--out", str(path)]) == 0
    header = json.loads(path.read_text().splitlines()[0])
    assert (
        header["format"] == "dynbench-baseline" and header["git_sha"] == ["a" * 40] and header["machines"] == [MACHINE]
    )
    assert len(read_baseline(path)) == len(rows_of())
    assert main(["compare", str(path), str(a), "--strict"]) == 0
    slower = folder(tmp_path / "b", rows_of(flops=2e6))
    assert main(["compare", str(path), str(slower)]) == 1


def test_outputs_json_and_junit_hold_every_pair(tmp_path: Path) -> None:
    a, b = folder(tmp_path / "a", rows_of()), folder(tmp_path / "b", rows_of(flops=2e6))
    base, new = load_side(a), load_side(b)
    changes = compare(base, new)
    doc = json.loads(render.as_json(changes, base, new))
    assert doc["verdict"] == "fail" and len(doc["changes"]) == len(rows_of())
    suite = ET.fromstring(render.junit(changes))
    assert suite.get("tests") == str(len(rows_of())) and suite.get("failures") == "1"
    [failure] = suite.iter("failure")
    assert "flops_per_sample" in [c.get("name") for c in suite if c.find("failure") is not None][0]
    assert "regression" in failure.get("message")


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "/nonexistent/a", "/nonexistent/b"],
        ["baseline", "save", "/nonexistent/a", "--out", "/tmp/x.jsonl"],
    ],
)
def test_bad_paths_exit_2(args: list[str], capsys) -> None:
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_file_that_is_not_a_baseline_exits_2(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "x.jsonl"
    bogus.write_text('{"hello": 1}\n')
    a = folder(tmp_path / "a", rows_of())
    assert main(["compare", str(bogus), str(a)]) == 2
    assert "is not a baseline file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a results folder"):
        save_baseline(bogus, tmp_path / "out.jsonl")
