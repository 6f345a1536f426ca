"""The results store: one file of rows and one of per-sample records per run, written atomically.

Layout under the results directory::

    runs/<run_key>.jsonl       tidy rows (dynbench.types.ROW_COLUMNS), written last: its presence
    means the run finished samples/<run_key>.jsonl    per-sample records (sample id, FLOPs, layers,
    score, correct …) timings/<run_key>.jsonl    every timed call per (budget, batch size): method
    and dense durations in
                               interleaved pairs, the input each pair ran and its FLOPs (intervals,
                               comparisons)

Each file is written to a temporary name and renamed into place, so a killed sweep leaves no partial
file, a resumed sweep skips finished ``run_key``s, and many workers can write at once without a
lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dynbench.types import ROW_COLUMNS


def _write_jsonl_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, default=_json_default, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class ResultStore:
    """A directory of finished runs.

    Args:
        root: the results directory (created on first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def rows_path(self, run_key: str) -> Path:
        """Where a run's rows live."""
        return self.root / "runs" / f"{run_key}.jsonl"

    def samples_path(self, run_key: str) -> Path:
        """Where a run's per-sample records live."""
        return self.root / "samples" / f"{run_key}.jsonl"

    def timings_path(self, run_key: str) -> Path:
        """Where a run's timed-call records live."""
        return self.root / "timings" / f"{run_key}.jsonl"

    def has(self, run_key: str) -> bool:
        """Whether the run finished (its rows file exists)."""
        return self.rows_path(run_key).exists()

    def write(
        self,
        run_key: str,
        rows: list[dict[str, Any]],
        samples: list[dict[str, Any]],
        timings: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store a finished run: samples and timed calls first, rows last (rows mark completion)."""
        missing = [c for c in ROW_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise ValueError(f"Rows for run {run_key} lack columns {missing}; every row needs {list(ROW_COLUMNS)}.")
        _write_jsonl_atomic(self.samples_path(run_key), samples)
        if timings:
            _write_jsonl_atomic(self.timings_path(run_key), ({"run_key": run_key, **t} for t in timings))
        _write_jsonl_atomic(self.rows_path(run_key), rows)

    def run_keys(self) -> list[str]:
        """Finished runs, sorted."""
        folder = self.root / "runs"
        return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.exists() else []

    def rows(self) -> pd.DataFrame:
        """Every stored row as one tidy DataFrame.

        Columns in :data:`ROW_COLUMNS` order, extras after.
        """
        records = [r for key in self.run_keys() for r in _read_jsonl(self.rows_path(key))]
        df = pd.DataFrame.from_records(records)
        if df.empty:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        extra = [c for c in df.columns if c not in ROW_COLUMNS]
        return df[[c for c in ROW_COLUMNS if c in df.columns] + extra]

    def samples(self) -> pd.DataFrame:
        """Every stored per-sample record as one DataFrame."""
        folder = self.root / "samples"
        keys = set(self.run_keys())
        paths = sorted(p for p in folder.glob("*.jsonl") if p.stem in keys) if folder.exists() else []
        return pd.DataFrame.from_records([r for p in paths for r in _read_jsonl(p)])

    def timings(self) -> pd.DataFrame:
        """Every stored timed-call record (one per run, budget and batch size) as one DataFrame."""
        folder = self.root / "timings"
        keys = set(self.run_keys())
        paths = sorted(p for p in folder.glob("*.jsonl") if p.stem in keys) if folder.exists() else []
        return pd.DataFrame.from_records([r for p in paths for r in _read_jsonl(p)])

    def export(self, path: Path, fmt: str) -> Path:
        """Write all rows to one CSV or Parquet file.

        Raises:
            ValueError: unknown format, or no rows.
        """
        df = self.rows()
        if df.empty:
            raise ValueError(f"No result rows under {self.root}. Run `bench run --out {self.root}` first.")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "parquet":
            try:
                df.to_parquet(path, index=False)
            except ImportError as exc:
                raise ValueError(
                    f"Parquet export needs pyarrow: {exc}. Install it with `pip install 'dynbench[parquet]'`."
                ) from None
        else:
            raise ValueError(f"Unknown export format '{fmt}'. Use csv or parquet.")
        return path
