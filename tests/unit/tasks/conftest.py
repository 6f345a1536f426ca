"""Fixtures shared by the task tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dynbench.api import RunOptions, load_results, run_suite
from dynbench.config import MeasureConfig, PluginSpec, SuiteSpec


@pytest.fixture
def tiny_dense_run(tmp_path: Path) -> Callable[..., tuple[pd.DataFrame, pd.DataFrame]]:
    """Run ``dense`` on one task at batch sizes 1 and 4 with minimal timing; return (rows, samples).

    The run must finish (one run done, none failed); its quality row must be a top-1 in [0, 1].
    """

    def run(task: PluginSpec, limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        suite = SuiteSpec(
            methods=(PluginSpec("dense"),),
            tasks=(task,),
            batch_sizes=(1, 4),
            limit=limit,
            measure=MeasureConfig(min_time_s=0.01, min_iters=2, timing_inputs=2, memory_inputs=1, warmup_max=1),
        )
        outcome = run_suite(suite, RunOptions(out=tmp_path / "res", cache_dir=tmp_path / "cache"))
        assert len(outcome.done) == 1 and not outcome.failed
        rows, samples = load_results(tmp_path / "res")
        quality = rows[rows.metric == "quality"]
        assert len(quality) == 1 and quality.unit.iloc[0] == "top1" and 0.0 <= quality.value.iloc[0] <= 1.0
        return rows, samples

    return run
