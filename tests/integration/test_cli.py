"""The ``bench`` CLI end to end on the toy tasks, into a temporary results directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from dynbench.cli import display, main
from dynbench.types import METRICS

pytestmark = pytest.mark.slow

FAST = [
    "--set",
    "measure.min_time_s=0.02",
    "--set",
    "measure.min_iters=3",
    "--set",
    "measure.timing_inputs=4",
    "--set",
    "measure.memory_inputs=1",
    "--batch-sizes",
    "1,4",
    "--executor",
    "inline",
]


def run(tmp: Path, *args: str) -> int:
    return main(["run", "--out", str(tmp / "res"), *args, *FAST])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    code = run(tmp, "--methods", "dense,early_exit,layer_skip", "--tasks", "toy-vision,toy-text", "--limit", "24")
    assert code == 0
    return tmp


def test_rows_have_the_schema_and_every_metric(results: Path):
    rows_files = sorted((results / "res" / "runs").glob("*.jsonl"))
    assert len(rows_files) == 6
    rows = pd.concat(pd.read_json(p, lines=True) for p in rows_files)
    vocabulary = set(METRICS) | {"quality"}
    controller = {"controller_ms", "controller_share"}  # only for methods with controller modules (exit heads)
    for method, absent in (("early_exit", set()), ("layer_skip", controller)):
        sub = rows[(rows.method == method) & (rows.task == "toy-vision")]
        assert vocabulary - {"flops_count_gap"} - absent <= set(sub.metric) | {"flops_count_gap"}
        assert not absent & set(sub.metric)
        assert sub.budget.nunique() >= 2
    share = rows[(rows.method == "early_exit") & (rows.metric == "controller_share")].value
    assert len(share) and ((share > 0) & (share < 1)).all()
    assert (rows[rows.metric == "flops_count_gap"].value.abs() < 1e-9).all()
    assert rows.git_sha.notna().all() and set(rows.hardware) == {"cpu"}
    q = rows[(rows.metric == "quality") & (rows.task == "toy-text")]
    assert set(q.unit) == {"ppl"} and not q.higher_is_better.any()
    dense_flops = rows[(rows.method == "dense") & (rows.metric == "flops_ratio")].value
    assert (dense_flops == 1.0).all()


def test_rows_carry_intervals_and_every_timed_call_is_stored(results: Path):
    rows = pd.concat(pd.read_json(p, lines=True) for p in sorted((results / "res" / "runs").glob("*.jsonl")))
    over = {"quality": "samples", "quality_delta": "samples", "flops_ratio": "samples",
            "speedup_realized": "calls", "realization": "calls", "throughput": "calls", "latency_ms": "calls",
            "peak_mem_bytes": "exact", "flops_per_sample": "exact"}  # fmt: skip
    skip = rows[rows.method == "layer_skip"]
    for metric, kind in over.items():
        sub = skip[skip.metric == metric]
        assert len(sub) and set(sub.ci_over) == {kind}, metric
        assert ((sub.ci_low <= sub.value + 1e-12) & (sub.value <= sub.ci_high + 1e-12)).all(), metric
    assert not rows[rows.method == "dense"].metric.eq("quality_delta").any()  # dense against itself: no row
    assert rows.suspect.dtype == bool and set(rows.reference) == {"dense backbone"}
    for path in (results / "res" / "timings").glob("*.jsonl"):
        for rec in (json.loads(line) for line in path.read_text().splitlines()):
            n = len(rec["method_ms"])
            assert n and len(rec["dense_ms"]) == len(rec["inputs"]) == len(rec["method_flops"]) == n
            assert rec["attempts"] in (1, 2) and isinstance(rec["suspect"], bool)
    assert len(list((results / "res" / "timings").glob("*.jsonl"))) == 6


def test_realization_divides_mean_times_by_the_mean_flops_of_the_same_calls(results: Path):
    """Constant (layer_skip) and varying (early_exit) per-sample compute: both sides are means over
    the timed calls."""
    rows = pd.concat(pd.read_json(p, lines=True) for p in sorted((results / "res" / "runs").glob("*.jsonl")))
    for method in ("layer_skip", "early_exit"):
        (path,) = (results / "res" / "timings").glob(f"toy-vision__{method}__*.jsonl")
        for rec in (json.loads(line) for line in path.read_text().splitlines()):
            realized = np.mean(rec["dense_ms"]) / np.mean(rec["method_ms"])
            theoretical = np.mean(rec["dense_flops"]) / np.mean(rec["method_flops"])
            same = np.isclose(rows.budget, rec["budget"], rtol=0, atol=1e-12)  # read_json parses floats loosely
            at = rows[(rows.task == "toy-vision") & (rows.method == method) & same
                      & (rows.batch_size == rec["batch_size"])].set_index("metric").value  # fmt: skip
            assert at["speedup_realized"] == pytest.approx(realized, rel=1e-9)
            assert at["realization"] == pytest.approx(realized / theoretical, rel=1e-9)
            assert at["throughput"] == pytest.approx(rec["batch_size"] * 1000 / np.mean(rec["method_ms"]), rel=1e-9)


def test_sample_files_have_one_record_per_sample_and_budget(results: Path):
    for path in (results / "res" / "samples").glob("*.jsonl"):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        budgets = {r["budget"] for r in recs}
        assert len(recs) == 24 * len(budgets)
        assert {"sample_id", "flops", "layers", "score", "correct"} <= set(recs[0])


def test_second_run_skips_finished_runs(results: Path, capsys: pytest.CaptureFixture[str]):
    before = {p: p.stat().st_mtime_ns for p in (results / "res" / "runs").glob("*.jsonl")}
    assert (
        run(
            results,
            "--methods",
            "dense,early_exit,layer_skip",
            "--tasks",
            "toy-vision,toy-text",
            "--limit",
            "24",
        )
        == 0
    )
    assert "0 run(s) measured, 6 already in" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (results / "res" / "runs").glob("*.jsonl")}


def test_interrupted_sweep_resumes_only_missing_runs(results: Path, capsys: pytest.CaptureFixture[str]):
    victim = sorted((results / "res" / "runs").glob("*layer_skip*.jsonl"))[0]
    victim.unlink()  # as if the sweep was killed before this run finished
    assert (
        run(
            results,
            "--methods",
            "dense,early_exit,layer_skip",
            "--tasks",
            "toy-vision,toy-text",
            "--limit",
            "24",
        )
        == 0
    )
    assert "1 run(s) measured, 5 already in" in capsys.readouterr().out
    rows = pd.concat(pd.read_json(p, lines=True) for p in (results / "res" / "runs").glob("*.jsonl"))
    assert not rows.duplicated(["run_key", "budget", "batch_size", "metric"]).any()


def test_report_and_export(results: Path):
    out = results / "report"
    assert main(["report", str(results / "res"), "--out", str(out)]) == 0
    for task in ("toy-vision", "toy-text"):
        assert (out / task / "pareto_flops.png").stat().st_size > 1000
        assert (out / task / "table.md").exists()
        assert (out / task / "compute_hist.png").exists()
    index = (out / "index.html").read_text()
    assert "toy-vision/pareto_flops.png" in index
    assert main(["export", str(results / "res"), "--format", "csv", "--out", str(results / "rows.csv")]) == 0
    assert len(pd.read_csv(results / "rows.csv")) > 50


def test_unknown_method_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run(tmp_path, "--methods", "layer_skp", "--tasks", "toy-vision") == 2
    err = capsys.readouterr().err
    assert "Unknown method 'layer_skp'. Did you mean: layer_skip" in err  # the closest first
    assert not (tmp_path / "res").exists()


def test_bad_options_and_budgets_are_reported_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = run(
        tmp_path,
        "--methods",
        "layer_skip[patern=uniform],early_exit",
        "--tasks",
        "toy-visoin,toy-text",
        "--budgets",
        "2",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Unknown option 'patern'" in err and "Unknown task 'toy-visoin'" in err and "out of range" in err
    assert not (tmp_path / "res").exists()


def test_subprocess_executor(tmp_path: Path):
    args = [
        "run",
        "--out",
        str(tmp_path / "res"),
        "--methods",
        "layer_skip",
        "--tasks",
        "toy-text",
        "--limit",
        "8",
        *FAST[:-2],
        "--executor",
        "subprocess",
    ]
    assert main(args) == 0
    assert len(list((tmp_path / "res" / "runs").glob("*.jsonl"))) == 1


def test_ls_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["ls", "methods"]) == 0
    assert "layer_skip" in capsys.readouterr().out
    suite = tmp_path / "s.yaml"
    suite.write_text("methods: [dense]\ntasks: [toy-text]\n")
    assert main(["validate", str(suite)]) == 0
    suite.write_text("methods: [dnse]\ntasks: [toy-text]\n")
    assert main(["validate", str(suite)]) == 2


def test_missing_data_and_bad_task_options_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code = run(
        tmp_path, "--methods", "dense", "--tasks", f"fashion-mnist[path={tmp_path / 'nowhere'}],smollm2[seq_len=0]"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Task 'fashion-mnist' has no data" in err and "apt-get install dataset-fashion-mnist" in err
    assert "SmolLM2Config.seq_len must be >= 1, got 0" in err  # the plugin's own check, reported with the rest
    assert not (tmp_path / "res").exists()


def test_lm_eval_subcommand_without_arguments_prints_how_and_exits_2(capsys: pytest.CaptureFixture[str]):
    assert main(["lm-eval"]) == 2
    assert "bench lm-eval --model dynbench --model_args task=shakespeare" in capsys.readouterr().out


def test_summary_shows_bracketed_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Plugin options in brackets are labels, not Rich markup: ``layer_skip[pattern=uniform]``
    prints as written."""
    wide = Console(width=300, file=io.StringIO())  # wide enough whatever the timing intervals print
    monkeypatch.setattr(display, "console", wide)
    code = run(tmp_path, "--methods", "layer_skip[pattern=uniform]", "--tasks", "toy-vision", "--limit", "8")
    assert code == 0
    rows = [line for line in wide.file.getvalue().splitlines() if line.startswith("│ toy-vision")]
    assert rows and all("│ layer_skip[pattern=uniform] │" in line for line in rows)
