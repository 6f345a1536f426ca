from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dynbench.harness.store import ResultStore
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
    with pytest.raises(ValueError, match="Unknown export format"):
        store.export(tmp_path / "x.xls", "xls")
