"""Rows and samples name a task by its label, so two configurations of one task stay apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynbench.api import RunOptions, load_results, run_suite
from dynbench.config import MeasureConfig, SuiteSpec, parse_plugin_list


@pytest.mark.slow  # two tiny training runs: seconds
def test_a_task_with_options_is_named_by_its_label_and_a_bare_task_by_its_name(tmp_path: Path):
    suite = SuiteSpec(
        methods=parse_plugin_list("dense"),
        tasks=parse_plugin_list("toy-text,toy-text[model.d_model=16]"),  # two model sizes of one task
        batch_sizes=(1,),
        limit=8,
        measure=MeasureConfig(min_time_s=0.01, min_iters=2, timing_inputs=2, memory=False, warmup_max=1),
    )
    outcome = run_suite(suite, RunOptions(out=tmp_path / "res", cache_dir=tmp_path / "cache", executor="inline"))
    assert len(outcome.done) == 2 and not outcome.failed
    rows, samples = load_results(tmp_path / "res")
    assert set(rows["task"]) == set(samples["task"]) == {"toy-text", "toy-text[model.d_model=16]"}
    flops = rows[rows["metric"] == "flops_per_sample"].set_index("task")["value"]
    assert flops["toy-text[model.d_model=16]"] < flops["toy-text"]  # a smaller model, its own rows
