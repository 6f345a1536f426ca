from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dynbench.analysis.tables import (
    SUMMARY_COLUMNS,
    format_flops,
    format_sig,
    pareto_mask,
    summary_frame,
    task_markdown,
)

BUDGETS = (1.0, 0.75, 0.5, 0.25)
# (method, method_label, budgets)
METHODS = (
    ("early_exit", "early_exit", BUDGETS),
    ("dense", "dense", (1.0,)),
    ("layer_skip", "layer_skip(pattern=uniform)", BUDGETS),
)


def _quality(method: str, budget: float, hib: bool) -> float:
    loss = {"dense": 0.0, "early_exit": 0.3 * (1 - budget) ** 1.5, "layer_skip": 0.5 * (1 - budget)}[method]
    return 0.8 - loss if hib else 20.0 + 20.0 * loss


def _flops(method: str, budget: float) -> float:
    # Early exit pays 2e7 FLOPs for its exit heads, so at budget 1.0 it is dominated by dense.
    return 1e9 * budget + (2e7 if method == "early_exit" else 0.0)


def make_rows(tasks=("cls", "lm"), hardware=("cpu", "cuda"), seeds=(0, 1), no_latency=("lm",)) -> pd.DataFrame:
    """Synthetic result rows; seed s shifts every measured value by (-1)^(s+1) * small noise."""
    recs = []
    for task in tasks:
        unit, hib = ("top1", True) if task == "cls" else ("ppl", False)
        for method, label, budgets in METHODS:
            for budget in budgets:
                for seed in seeds:
                    noise = 1 if seed % 2 else -1
                    for hw in hardware:
                        base = dict(
                            run_key=f"{task}-{label}-{seed}-{hw}", suite="test", task=task, task_version="1",
                            method=method, method_version="1", method_label=label, reconstructed=False,
                            budget=budget, is_full_budget=budget == 1.0, seed=seed, hardware=hw, n=100,
                            git_sha="0123456789abcdef", dirty=seed == 1, dynbench_version="0.1.0",
                            torch_version="2.13.0", machine="box", started_at=f"2025-01-0{seed + 1}T00:00:00",
                        )  # fmt: skip

                        def add(metric, value, unit_, higher, batch_size, base=base):
                            recs.append({**base, "metric": metric, "value": value, "unit": unit_,
                                         "higher_is_better": higher, "batch_size": batch_size})  # fmt: skip

                        add("quality", _quality(method, budget, hib) + noise * 0.01, unit, hib, 32)
                        add("flops_per_sample", _flops(method, budget), "flops", False, 32)
                        add("flops_ratio", _flops(method, budget) / 1e9, "ratio", False, 32)
                        add("mean_layers", 12 * budget, "layers", False, 32)
                        if task in no_latency:
                            continue
                        speed = 1.0 if hw == "cpu" else 0.25
                        lat1 = (10 * budget + 1) * speed + noise * 0.1
                        dense1 = 11 * speed
                        for bs, lat in ((1, lat1), (8, lat1 * 4)):
                            add("latency_ms", lat, "ms", False, bs)
                            add("throughput", bs / (lat / 1000), "samples/s", True, bs)
                            add("peak_mem_bytes", 2**20 * (50 + 50 * budget) * bs, "bytes", False, bs)
                            add("speedup_realized", dense1 / lat, "x", True, bs)
    return pd.DataFrame(recs)


def test_summary_shape_order_and_columns():
    summary = summary_frame(make_rows())
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    # 2 tasks x 2 hardware x (1 + 4 + 4) operating points.
    assert len(summary) == 2 * 2 * 9
    cls_cpu = summary[(summary.task == "cls") & (summary.hardware == "cpu")]
    assert cls_cpu["method"].tolist() == ["dense"] + ["early_exit"] * 4 + ["layer_skip"] * 4
    assert cls_cpu[cls_cpu.method == "early_exit"]["budget"].tolist() == [1.0, 0.75, 0.5, 0.25]
    assert summary["task"].tolist() == sorted(summary["task"].tolist())
    assert (summary["n_seeds"] == 2).all()


def test_summary_means_and_stds_over_seeds():
    summary = summary_frame(make_rows())
    row = summary[(summary.task == "cls") & (summary.hardware == "cpu") & (summary.method == "early_exit")]
    row = row[row.budget == 0.5].iloc[0]
    assert row["quality"] == pytest.approx(_quality("early_exit", 0.5, True))
    assert row["quality_std"] == pytest.approx(0.01 * math.sqrt(2))
    assert row["quality_unit"] == "top1" and row["quality_higher_is_better"] is True
    assert row["flops_per_sample"] == pytest.approx(5.2e8)
    assert row["latency_ms"] == pytest.approx(6.0)  # batch 1, mean of 5.9 and 6.1
    assert row["peak_mem_bytes"] == pytest.approx(2**20 * 75)  # batch 1, not batch 8
    assert row["throughput_batch_size"] == 8
    assert row["throughput"] == pytest.approx(np.mean([8 / (5.9 * 4 / 1000), 8 / (6.1 * 4 / 1000)]))
    assert row["display_label"] == "early_exit"
    # Hardware-independent metrics are the same on every hardware; latency is not.
    cuda = summary[(summary.task == "cls") & (summary.hardware == "cuda") & (summary.method == "early_exit")]
    cuda = cuda[cuda.budget == 0.5].iloc[0]
    assert cuda["quality"] == row["quality"] and cuda["flops_per_sample"] == row["flops_per_sample"]
    assert cuda["latency_ms"] == pytest.approx(1.5)


def test_summary_missing_metrics_are_nan_columns():
    summary = summary_frame(make_rows(no_latency=("lm",)))
    lm = summary[summary.task == "lm"]
    for column in ("latency_ms", "speedup_realized", "throughput", "peak_mem_bytes"):
        assert lm[column].isna().all()
    assert lm["quality"].notna().all() and lm["quality_unit"].eq("ppl").all()
    no_timing = summary_frame(make_rows(tasks=("cls",), no_latency=("cls",), seeds=(0,)))
    assert no_timing["latency_ms"].isna().all() and no_timing["throughput_batch_size"].isna().all()
    assert no_timing["quality_std"].isna().all()


def test_summary_labels_for_oracle_and_reconstructed():
    rows = make_rows(tasks=("cls",), hardware=("cpu",), seeds=(0,))
    # The rows' upper_bound flag (set by the harness for methods that see the evaluation labels)
    # marks it.
    oracle = rows[rows.method == "early_exit"].assign(method="oracle", method_label="oracle", upper_bound=True)
    recon = rows[rows.method == "layer_skip"].assign(reconstructed=True)
    summary = summary_frame(pd.concat([rows, oracle, recon], ignore_index=True))
    labels = summary["display_label"].unique().tolist()
    assert labels[0] == "dense" and labels[-1] == "oracle (upper bound)"
    assert "layer_skip(pattern=uniform) (reconstructed)" in labels
    # The oracle is never Pareto-optimal, even though it ties early exit everywhere.
    assert not pareto_mask(summary, "flops_per_sample")[summary.method.eq("oracle").to_numpy()].any()


def test_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="lack columns"):
        summary_frame(pd.DataFrame({"task": ["a"]}))
    with pytest.raises(ValueError, match="latency_batch_size"):
        summary_frame(make_rows(), latency_batch_size=0)
    assert summary_frame(make_rows().iloc[:0]).empty


def test_pareto_mask_on_summary():
    summary = summary_frame(make_rows(tasks=("cls",), hardware=("cpu",)))
    front = summary[pareto_mask(summary, "flops_per_sample")]
    points = set(zip(front.method, front.budget))
    assert points == {("dense", 1.0), ("early_exit", 0.75), ("early_exit", 0.5), ("early_exit", 0.25),
                      ("layer_skip", 0.25)}  # fmt: skip


def test_formatters():
    assert format_flops(1.02e9) == "1.02 G"
    assert format_flops(7.7e8) == "770 M"
    assert format_flops(999.7e6) == "1.00 G"
    assert format_flops(float("nan")) == "–"
    # the examples: 3 significant digits, an SI prefix, a space
    assert [format_flops(v) for v in (35.6e9, 812e6, 1.2e12, 257_000, 512, 0)] == [
        "35.6 G", "812 M", "1.20 T", "257 k", "512", "0"
    ]  # fmt: skip
    assert format_sig(12.345) == "12.3"
    assert format_sig(0.012345) == "0.0123"
    assert format_sig(1234.5) == "1230"
    assert format_sig(9.996) == "10.0"


def test_task_markdown_formatting_and_front():
    md = task_markdown(make_rows(), "cls")
    assert "### Hardware: cpu" in md and "### Hardware: cuda" in md
    assert "top1 (%) ↑" in md
    lines = md.splitlines()
    ee_half = next(line for line in lines if line.startswith("| early_exit | 0.5 |"))
    cells = [c.strip() for c in ee_half.strip("|").split("|")]
    # two seeds: a t-interval over them (12.7 standard errors wide), not a standard deviation
    assert cells[2] == f"{_quality('early_exit', 0.5, True) * 100:.2f} [56.69, 82.10]"
    assert "520 M" in cells and "6.00 [4.73, 7.27]" in cells and "75.0" in cells  # memory: the same on both seeds
    assert "with 2 seeds it spans 12.7 standard errors" in md
    assert cells[-1] == "*"  # Pareto-optimal
    ls_half = next(line for line in lines if line.startswith("| layer_skip(pattern=uniform) | 0.5 |"))
    assert ls_half.rstrip().endswith("|  |")  # dominated: no marker
    assert "1.83× [1.45, 2.22]" in cells  # speedup: a ratio of the two seeds' mean times, t-interval
    assert "latency b1 (ms)" in md and "throughput b8 (samples/s)" in md and "peak mem b1 (MiB)" in md


def test_controller_time_is_a_column_only_where_measured():
    rows = make_rows(tasks=("cls",), hardware=("cpu",), seeds=(0,))
    assert "controller b1" not in task_markdown(rows, "cls")  # no controller rows: no column, no "not measured"
    ee = rows[(rows.metric == "latency_ms") & (rows.method == "early_exit")]
    ctrl = ee.assign(metric="controller_ms", value=ee.value * 0.25)
    md = task_markdown(pd.concat([rows, ctrl], ignore_index=True), "cls")
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert "controller b1 (ms)" in header and "`controller` = time per call" in md
    cells = [c.strip() for c in next(x for x in md.splitlines() if x.startswith("| early_exit | 0.5 |")).split("|")]
    assert cells[header.split("|").index(" controller b1 (ms) ")] == "1.48"  # a quarter of seed 0's 5.9 ms
    dense = next(x for x in md.splitlines() if x.startswith("| dense | 1 |"))
    assert "| – |" in dense  # dense has no controller


def test_task_markdown_lower_is_better_and_not_measured():
    md = task_markdown(make_rows(), "lm")
    assert "ppl ↓" in md and "latency" not in md.split("\n\n")[1].splitlines()[0]
    assert "Not measured on cpu: latency b1 (ms), speedup b1" in md
    dense = next(line for line in md.splitlines() if line.startswith("| dense | 1 |"))
    assert "| 20.00 [19.87, 20.13] |" in dense and dense.rstrip().endswith("| * |")
    with pytest.raises(ValueError, match="No result rows for task 'nope'"):
        task_markdown(make_rows(), "nope")


def test_single_seed_points_show_their_own_interval_and_the_suspect_flag():
    rows = make_rows(tasks=("cls",), hardware=("cpu",), seeds=(0,))
    rows = rows.assign(ci_low=np.nan, ci_high=np.nan, ci_over="", suspect=False)
    quality = (rows.metric == "quality") & (rows.method == "early_exit") & (rows.budget == 0.5)
    rows.loc[quality, ["ci_low", "ci_high", "ci_over"]] = [0.6, 0.7, "samples"]
    speed = (rows.metric == "speedup_realized") & (rows.method == "early_exit") & (rows.budget == 0.5)
    rows.loc[speed & (rows.batch_size == 1), "suspect"] = True
    summary = summary_frame(rows).set_index(["method_label", "budget"])
    point = summary.loc[("early_exit", 0.5)]
    assert (point["quality_ci_low"], point["quality_ci_high"], point["quality_ci_over"]) == (0.6, 0.7, "samples")
    assert point["suspect"] and not summary.loc[("early_exit", 0.75), "suspect"]
    md = task_markdown(rows, "cls")
    line = next(x for x in md.splitlines() if x.startswith("| early_exit | 0.5 |"))
    assert "[60.00, 70.00]" in line and "× ⚠" in line  # a suspect speedup is marked, not hidden
    assert "a bootstrap over the evaluation samples" in md and "⚠ = a realization above 1.1" in md


def test_terminal_summary_prints_quality_and_flops_as_the_report_does(monkeypatch):
    """One unit per quality and one FLOPs format: the same cells in the report and the terminal."""
    import io

    from rich.console import Console

    from dynbench.cli import display

    rows = make_rows(tasks=("cls", "lm"), hardware=("cpu",), seeds=(0,))
    wide = Console(width=250, file=io.StringIO())
    monkeypatch.setattr(display, "console", wide)
    display.print_summary(rows)
    terminal = [[c.strip() for c in x.split("│")[1:-1]] for x in wide.file.getvalue().splitlines() if "│" in x]
    for task, label, budget, unit in (("cls", "early_exit", "0.5", "top1 (%)"), ("lm", "dense", "1", "ppl")):
        md = task_markdown(rows, task).splitlines()
        header = [c.strip() for c in next(x for x in md if x.startswith("| method |")).split("|")]
        cells = [c.strip() for c in next(x for x in md if x.startswith(f"| {label} | {budget} |")).split("|")]
        quality, flops = cells[3], cells[header.index("FLOPs/sample")]  # cells[0]: the text before the first bar
        (line,) = [r for r in terminal if r[0] == task and r[2] == label and r[3] == budget]
        assert line[4] == f"{quality} {unit}" and line[5] == flops, (line, quality, flops)
    cls_dense = next(r for r in terminal if r[0] == "cls" and r[2] == "dense")
    assert cls_dense[4] == "79.00 top1 (%)" and cls_dense[5] == "1.00 G"  # a percentage, not 0.79; not 1e+03 M
