"""A truncated or foreign file in a results folder is named and skipped; ``--strict``: exit 2."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from dynbench.cli import main
from dynbench.harness.store import BadResultFile, ResultStore
from dynbench.types import ROW_COLUMNS


def _row(key: str, value: float) -> dict:
    row = {c: None for c in ROW_COLUMNS}
    row.update(run_key=key, task="toy", method="dense", metric="quality", value=value, budget=1.0, batch_size=1)
    row.update(method_label="dense", hardware="cpu", seed=0, unit="accuracy", higher_is_better=True, n=1)
    return row


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """One good run, a truncated rows file, a foreign one, and a good run whose samples are cut."""
    store = ResultStore(tmp_path / "R")
    store.write("good", [_row("good", 0.5)], [{"run_key": "good", "sample_id": 0}])
    store.write("cut", [_row("cut", 0.7)], [{"run_key": "cut", "sample_id": 0}])
    rows = store.rows_path("cut")
    rows.write_text(rows.read_text()[:40])  # a copy that stopped half-way
    (store.root / "runs" / "foreign.jsonl").write_text('{"loss": 1.5, "step": 10}\n')
    store.write("nosamples", [_row("nosamples", 0.6)], [{"run_key": "nosamples", "sample_id": 0}])
    store.samples_path("nosamples").write_text('{"run_key": "nosamples", "sample_id": 0}\n{"run_key": "nosa')
    return store.root


def test_bad_files_are_skipped_with_a_warning_naming_each(results: Path, caplog: pytest.LogCaptureFixture):
    store = ResultStore(results)
    with caplog.at_level(logging.WARNING):
        rows, samples = store.rows(), store.samples()
    assert sorted(rows["run_key"]) == ["good", "nosamples"]
    assert samples["run_key"].tolist() == ["good"]
    bad = {p.name: why for p, why in store.bad_files.items()}
    assert set(bad) == {"cut.jsonl", "foreign.jsonl", "nosamples.jsonl"}
    assert "truncated" in bad["cut.jsonl"] and "lacks the fields" in bad["foreign.jsonl"]
    for path in store.bad_files:
        assert sum(str(path) in r.getMessage() for r in caplog.records) == 1  # once, though read twice


def test_strict_raises_naming_the_file(results: Path):
    with pytest.raises(BadResultFile, match=r"cut\.jsonl.*truncated"):
        ResultStore(results, strict=True).rows()


def test_a_record_of_another_run_is_foreign(tmp_path: Path):
    store = ResultStore(tmp_path)
    store.write("a", [_row("a", 0.5)], [])
    (tmp_path / "runs" / "copy.jsonl").write_text(store.rows_path("a").read_text())  # renamed copy: counted twice
    assert store.rows()["run_key"].tolist() == ["a"]
    assert "belongs to run 'a'" in store.bad_files[tmp_path / "runs" / "copy.jsonl"]


@pytest.mark.parametrize("command", ["report", "export"])
def test_cli_warns_and_goes_on_or_with_strict_exits_2_writing_nothing(
    command: str, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
):
    out = tmp_path / ("rep" if command == "report" else "rows.csv")
    assert main([command, str(results), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert str(results / "runs" / "cut.jsonl") in err and "truncated" in err
    assert not out.exists()
    with caplog.at_level(logging.WARNING):
        assert main([command, str(results), "--out", str(out)]) == 0
    assert any(str(results / "runs" / "foreign.jsonl") in r.getMessage() for r in caplog.records)
    assert out.exists()


def test_the_warning_reaches_the_terminal(results: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "dynbench.cli", "export", str(results), "--out", str(tmp_path / "rows.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"skipping {results / 'runs' / 'foreign.jsonl'}: line 1 lacks the fields" in proc.stderr
