"""A run whose eval split streams (``measure.eval_memory_mb=0``) stores what a kept one stores.

Every pass re-reads the split from the task when it streams; quality, FLOPs, per-sample records and
run keys must not notice. Timing and memory figures differ from run to run anyway and are left out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dynbench.cli import main

pytestmark = pytest.mark.slow

TIMED_UNITS = {"ms", "samples/s", "bytes"}
TIMED_METRICS = {"speedup_realized", "realization", "controller_share"}
RUN = [
    "run", "--methods", "dense,early_exit,mod,oracle", "--tasks", "toy-vision", "--seeds", "0",
    "--limit", "40", "--batch-sizes", "1,8",
    "--set", "measure.eval_batch_size=16",  # three batches, the last one short
    "--set", "measure.min_time_s=0.01", "--set", "measure.min_iters=2", "--set", "measure.timing_inputs=3",
    "--executor", "inline",
]  # fmt: skip


def read(results: Path, kind: str) -> pd.DataFrame:
    return pd.concat(pd.read_json(p, lines=True) for p in sorted((results / kind).glob("*.jsonl")))


def test_streamed_and_kept_runs_store_the_same_rows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DYNBENCH_CACHE", str(tmp_path / "cache"))
    assert main([*RUN, "--out", str(tmp_path / "kept")]) == 0
    assert main([*RUN, "--out", str(tmp_path / "streamed"), "--set", "measure.eval_memory_mb=0"]) == 0
    kept, streamed = read(tmp_path / "kept", "runs"), read(tmp_path / "streamed", "runs")
    assert sorted(set(kept.run_key)) == sorted(set(streamed.run_key))  # the key ignores how the split is held

    def stable(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows[~rows.unit.isin(TIMED_UNITS) & ~rows.metric.isin(TIMED_METRICS)]
        rows = rows.drop(columns=["started_at", "machine"])
        return rows.sort_values(["run_key", "metric", "budget", "batch_size"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(stable(kept), stable(streamed))
    key = ["run_key", "budget", "sample_id"]
    pd.testing.assert_frame_equal(
        read(tmp_path / "kept", "samples").sort_values(key).reset_index(drop=True),
        read(tmp_path / "streamed", "samples").sort_values(key).reset_index(drop=True),
    )
    assert len(kept[kept.metric == "quality"]) >= 4
