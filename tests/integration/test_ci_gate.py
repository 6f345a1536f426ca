"""The CI gate end to end: a baseline saved from a run, then one line of a method changed so it runs
one more block — `bench compare --strict` fails with a table that names the method, the budget and
`flops_per_sample`; the unchanged code passes."""

from __future__ import annotations

from pathlib import Path

import pytest

import dynbench.methods.layer_skip as layer_skip
from dynbench.cli import main

SUITE = """\
name: gate-test
methods: [dense, layer_skip]
tasks: [toy-text]
seeds: [0]
profile: quick
limit: 16
batch_sizes: [1]
measure: {min_iters: 3, min_time_s: 0.01, timing_inputs: 4, warmup_max: 1, memory_inputs: 1}
gate:
  timing_fail: false
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(suite file, baseline file, cache)``: the suite run once and saved as the baseline."""
    root = tmp_path_factory.mktemp("gate")
    suite = root / "suite.yaml"
    suite.write_text(SUITE, encoding="utf-8")
    cache = root / "cache"
    run = ["run", "--config", str(suite), "--out", str(root / "R0"), "--cache-dir", str(cache), "--executor", "inline"]
    assert main(run) == 0
    baseline = root / "baseline.jsonl"
    assert main(["baseline", "save", str(root / "R0"), "--out", str(baseline)]) == 0
    return suite, baseline, cache


def rerun(setup, out: Path) -> None:
    suite, _, cache = setup
    assert (
        main(["run", "--config", str(suite), "--out", str(out), "--cache-dir", str(cache), "--executor", "inline"]) == 0
    )


def test_the_same_code_passes_the_gate(setup, tmp_path: Path, capsys) -> None:
    suite, baseline, _ = setup
    rerun(setup, tmp_path / "R")
    capsys.readouterr()
    assert main(["compare", str(baseline), str(tmp_path / "R"), "--suite", str(suite), "--strict"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK:")


def test_keeping_one_more_block_fails_the_gate_naming_the_run_and_the_metric(
    setup, tmp_path: Path, monkeypatch, capsys
) -> None:
    suite, baseline, _ = setup
    kept = layer_skip.n_kept
    monkeypatch.setattr(layer_skip, "n_kept", lambda budget, L, m: min(L, kept(budget, L, m) + 1))
    rerun(setup, tmp_path / "R")
    capsys.readouterr()
    args = ["compare", str(baseline), str(tmp_path / "R"), "--suite", str(suite), "--strict", "--format", "md"]
    assert main(args) == 1
    md = capsys.readouterr().out
    assert "FAIL" in md
    flops = [line for line in md.splitlines() if "| flops_per_sample |" in line]
    assert flops and all("toy-text / layer_skip | 0.5 |" in line for line in flops)
    assert flops[0].startswith("| REGRESSION |")
