from __future__ import annotations

from pathlib import Path

from synthetic_results import folder, rows_of  # same folder, on sys.path

from dynbench.analysis.compare import GateConfig, Rule
from dynbench.analysis.history import Point, build, detect, steps_frame, write_report
from dynbench.cli import main

TIMING = Rule("timing", threshold=0.05)


def commits(tmp_path: Path, versions: list[dict]) -> list[Path]:
    """One results folder per commit (sha ``c0…``, ``c1…``), each from ``rows_of(**version)``."""
    out = []
    for i, version in enumerate(versions):
        rows = [dict(r, git_sha=f"c{i}" + "0" * 39) for r in rows_of(**version)]
        out.append(folder(tmp_path / f"commit{i}", rows))
    return out


def pts(values: list[float], width: float = 0.02) -> list[Point]:
    return [Point(f"c{i}", v, v - width, v + width) for i, v in enumerate(values)]


def test_a_deterministic_metric_steps_at_the_commit_that_changed_it(tmp_path: Path) -> None:
    paths = commits(tmp_path, [{}, {}, {"flops": 1.2e6}, {"flops": 1.2e6}])
    history = build(paths)
    steps = steps_frame(history)
    [step] = steps[steps.metric == "flops_per_sample"].itertuples()
    assert (step.from_commit, step.to_commit) == ("c1000000", "c2000000")
    assert step.direction == "regression" and step.fails and abs(step.relative - 0.2) < 1e-12
    assert set(steps.metric) == {"flops_per_sample"}  # nothing else moved


def test_a_lasting_timing_shift_is_one_step_and_a_single_outlier_is_none() -> None:
    shift = detect(("k",), pts([1.0, 1.01, 0.99, 1.5, 1.49, 1.51]), TIMING, higher_is_better=False)
    assert [(s.index, s.direction) for s in shift] == [(3, "regression")]
    outlier = detect(("k",), pts([1.0, 1.01, 1.6, 0.99, 1.0]), TIMING, higher_is_better=False)
    assert [s.index for s in outlier] == []  # the spike's neighbours on both sides overlap
    noise = detect(("k",), pts([1.0, 1.03, 0.98, 1.02], width=0.05), TIMING, higher_is_better=False)
    assert noise == []


def test_two_shifts_are_both_found_and_directions_follow_the_metric() -> None:
    speedups = pts([2.0, 2.0, 1.0, 1.0, 1.5, 1.5])
    steps = detect(("k",), speedups, TIMING, higher_is_better=True)
    assert [(s.index, s.direction) for s in steps] == [(2, "regression"), (4, "improvement")]


def test_a_missing_point_is_skipped_and_a_warning_rule_does_not_fail() -> None:
    points = [*pts([1.0, 1.0]), None, *pts([2.0, 2.0])]
    [step] = detect(("k",), points, Rule("timing", fail=False), higher_is_better=False)
    assert (step.previous, step.index, step.fails) == (1, 3, False)


def test_the_cli_prints_steps_draws_a_report_and_fails_only_when_asked(tmp_path: Path, capsys) -> None:
    paths = [str(p) for p in commits(tmp_path, [{}, {"quality": 3.2}, {"quality": 3.2}])]
    assert main(["history", *paths, "--report", str(tmp_path / "H")]) == 0
    out = capsys.readouterr().out
    assert "| REGRESSION | toy-text / layer_skip | 0.5 | 1 | 0 | quality | `c0000000` → `c1000000` | 3 | 3.2 |" in out
    assert (tmp_path / "H" / "index.html").is_file() and (
        tmp_path / "H" / "toy-text__layer_skip.png"
    ).stat().st_size > 5000
    assert main(["history", *paths, "--fail-on-step"]) == 1
    steady = [str(p) for p in commits(tmp_path / "s", [{}, {}])]
    assert main(["history", *steady, "--fail-on-step"]) == 0
    assert main(["history", paths[0]]) == 2  # one input has no history
    assert "at least two" in capsys.readouterr().err


def test_absolute_times_of_different_machines_are_separate_series(tmp_path: Path) -> None:
    a = folder(tmp_path / "a", rows_of())
    b = folder(tmp_path / "b", [dict(r, machine="another box") for r in rows_of(latency=(3.0, 2.9, 3.1))])
    history = build([a, b], GateConfig())
    latency = [k for k in history.series if k[6] == "latency_ms"]
    assert len(latency) == 2 and not [s for s in history.steps if s.key[6] == "latency_ms"]
    written = write_report(history, tmp_path / "H")
    assert (tmp_path / "H" / "index.md") in written
