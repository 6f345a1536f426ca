"""Preflight: where a command will write is checked before work, and the size estimate is honest."""

from __future__ import annotations

import errno
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.planning import plan_suite
from dynbench.harness.preflight import (
    EVAL_SAMPLES_UNKNOWN,
    RUN_BUDGET_BYTES,
    SAMPLE_RECORD_BYTES,
    Destinations,
    destination_problems,
    estimate_bytes,
    file_problem,
    write_failure,
)


def test_a_file_target_must_be_a_file_in_a_writable_folder(tmp_path: Path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert file_problem(tmp_path / "new" / "deeper" / "rows.csv", "--out") is None  # folders are made
    assert file_problem(a_file, "--out") is None  # replaced
    assert "is a folder, not a file" in (file_problem(tmp_path, "--out") or "")
    assert f"lies under {a_file}, which is a file" in (file_problem(a_file / "rows.csv", "--out") or "")
    assert list(tmp_path.iterdir()) == [a_file]  # the checks leave nothing behind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys is Linux's")
def test_a_file_in_a_folder_that_refuses_writes_is_a_problem():
    problem = file_problem(Path("/sys/rows.csv"), "--out")
    assert problem is not None and "its folder /sys is not writable" in problem and "\n" not in problem


def test_the_report_folder_of_a_run_is_checked_with_the_others(tmp_path: Path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    problems = destination_problems([], Destinations(tmp_path / "res", tmp_path / "cache", a_file / "reports"))
    assert len(problems) == 1 and problems[0].startswith(f"--report {a_file / 'reports'} lies under")


def test_a_failed_write_is_one_line_saying_what_to_do():
    full = OSError(errno.ENOSPC, "No space left on device", "/r/rows.csv")
    message = write_failure(Path("/r/rows.csv"), full, "--out")
    assert message == (
        "Could not write --out /r/rows.csv: No space left on device. Free some space or choose another place; "
        "nothing partial was left there."
    )
    denied = write_failure(Path("/r"), PermissionError(errno.EACCES, "Permission denied", "/r/t/a.png"), "--out")
    assert "Permission denied (/r/t/a.png). Choose another place" in denied and "\n" not in denied


def test_the_results_estimate_counts_the_samples_the_run_will_measure():
    """Not ``--limit`` alone: the quick profile's sample of the eval split is what gets written."""
    (plan,) = plan_suite([RunSpec(task=PluginSpec("toy-vision"), method=PluginSpec("dense"))])
    per_budget = len(plan.budgets)

    def out_bytes(spec: RunSpec) -> int:
        return estimate_bytes([replace(plan, spec=spec)], Destinations()).out

    assert out_bytes(plan.spec) == per_budget * (EVAL_SAMPLES_UNKNOWN * SAMPLE_RECORD_BYTES + RUN_BUDGET_BYTES)
    sampled = replace(plan.spec, profile="quick", eval_samples=100)  # what the planner sets for a quick run
    assert out_bytes(sampled) == per_budget * (100 * SAMPLE_RECORD_BYTES + RUN_BUDGET_BYTES)
    assert out_bytes(replace(sampled, limit=16)) == per_budget * (16 * SAMPLE_RECORD_BYTES + RUN_BUDGET_BYTES)
    assert out_bytes(replace(sampled, limit=5000)) == out_bytes(sampled)  # the smaller of the two caps
