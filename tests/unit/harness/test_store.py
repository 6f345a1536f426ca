from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

from dynbench.harness.store import ResultStore, export_format
from dynbench.types import ROW_COLUMNS


def _row(key: str, metric: str, value: float) -> dict:
    row = {c: None for c in ROW_COLUMNS}
    row.update(run_key=key, metric=metric, value=value, budget=1.0, batch_size=1)
    return row


def test_write_is_atomic_and_marks_completion(tmp_path: Path):
    store = ResultStore(tmp_path)
    assert not store.has("r1") and store.rows().empty
    store.write("r1", [_row("r1", "quality", 0.5)], [{"run_key": "r1", "sample_id": 0}])
    store.write("r2", [_row("r2", "quality", 0.7), _row("r2", "latency_ms", 1.0)], [])
    assert store.has("r1") and store.run_keys() == ["r1", "r2"]
    assert not list(tmp_path.rglob("*.tmp"))
    rows = store.rows()
    assert list(rows.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS)
    assert len(rows) == 3 and rows["value"].tolist() == [0.5, 0.7, 1.0]
    assert len(store.samples()) == 1


def test_samples_without_rows_are_an_unfinished_run(tmp_path: Path):
    store = ResultStore(tmp_path)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "half.jsonl").write_text('{"run_key": "half"}\n')
    assert not store.has("half") and store.samples().empty


def test_rows_missing_columns_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="lack columns"):
        ResultStore(tmp_path).write("r", [{"metric": "quality"}], [])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export(tmp_path: Path, fmt: str):
    store = ResultStore(tmp_path / "res")
    with pytest.raises(ValueError, match="No result rows"):
        store.export(tmp_path / f"x.{fmt}", fmt)
    store.write("r1", [_row("r1", "quality", 0.5)], [])
    path = store.export(tmp_path / f"x.{fmt}", fmt)
    df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    assert df["value"].tolist() == [0.5] and "run_key" in df.columns
    with pytest.raises(ValueError, match=r"--format must be one of \['csv', 'parquet'\], got 'xls'"):
        store.export(tmp_path / "x.xls", "xls")


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [("rows.csv", None, "csv"), ("rows.parquet", None, "parquet"), ("rows.PQ", None, "parquet"),
     ("rows.tsv", "csv", "csv"), ("rows", "parquet", "parquet"), ("rows.csv", "csv", "csv")],
)  # fmt: skip
def test_export_format_follows_the_extension(name: str, fmt: str | None, expected: str):
    assert export_format(Path(name), fmt) == expected


@pytest.mark.parametrize(
    ("name", "fmt", "message"),
    [
        ("rows.txt", None, r"--out rows.txt: cannot tell the format from the extension '\.txt'; known extensions are "
         r"\.csv, \.parquet, \.pq\. .*--format \(csv or parquet\)"),
        ("rows", None, "a name without an extension"),
        ("rows.csv", "parquet", r"--format parquet disagrees with --out rows.csv, whose extension '\.csv' means csv"),
        ("rows.pq", "csv", r"--format csv disagrees with --out rows.pq"),
    ],
)  # fmt: skip
def test_an_unknown_or_mismatched_format_is_refused_naming_value_and_choices(name, fmt, message):
    with pytest.raises(ValueError, match=message) as info:
        export_format(Path(name), fmt)
    assert "\n" not in str(info.value)


def test_a_failed_export_leaves_no_file_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = ResultStore(tmp_path / "res")
    store.write("r1", [_row("r1", "quality", 0.5)], [])

    def disk_full(self, path, **kwargs):
        Path(path).write_text("half a tab")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.export(tmp_path / "out" / "rows.csv")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_truncated_rows_file_is_not_done_and_the_run_is_written_again(tmp_path: Path):
    """Rows files are renamed into place whole: a cut one was damaged later; the run is redone."""
    store = ResultStore(tmp_path)
    store.write("r1", [_row("r1", "quality", 0.5), _row("r1", "latency_ms", 1.0)], [{"run_key": "r1"}])
    rows = store.rows_path("r1")
    rows.write_text(rows.read_text()[:-30])  # cut mid-record, as a copy that stopped half-way
    assert not store.has("r1")
    assert not ResultStore(tmp_path, strict=True).has("r1")  # a question, not a read: never raises
    rows.write_text("")  # an empty rows file: no rows, not a finished run either
    assert not ResultStore(tmp_path).has("r1")
    store.write("r1", [_row("r1", "quality", 0.6)], [{"run_key": "r1"}])  # the rerun replaces it
    assert store.has("r1") and store.rows()["value"].tolist() == [0.6]
