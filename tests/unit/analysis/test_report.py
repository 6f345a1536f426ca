from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from dynbench.analysis.report import markdown_to_html, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = (
    ("dense", "dense", (1.0,)),
    ("early_exit", "early_exit", (1.0, 0.75, 0.5, 0.25)),
    ("layer_skip", "layer_skip(pattern=uniform)", (1.0, 0.75, 0.5, 0.25)),
)


def make_rows(hardware=("cpu", "cuda"), seeds=(0, 1), no_latency=("lm",)) -> pd.DataFrame:
    """Result rows for a classification task (timed) and a language-model task (timing disabled)."""
    recs = []
    for task, unit, hib in (("cls", "top1", True), ("lm", "ppl", False)):
        for method, label, budgets in METHODS:
            for budget in budgets:
                loss = {
                    "dense": 0.0,
                    "early_exit": 0.3 * (1 - budget) ** 1.5,
                    "layer_skip": 0.5 * (1 - budget),
                }
                quality = 0.8 - loss[method] if hib else 20 + 20 * loss[method]
                flops = 1e9 * budget + (2e7 if method == "early_exit" else 0.0)
                for seed in seeds:
                    noise = 0.01 if seed % 2 else -0.01
                    for hw in hardware:
                        base = dict(
                            run_key=f"{task}-{label}-{seed}-{hw}", suite="t", task=task, task_version="1",
                            method=method, method_version="1", method_label=label, reconstructed=False,
                            budget=budget, is_full_budget=budget == 1.0, seed=seed, hardware=hw, n=10,
                            git_sha="0123456789abcdef0123", dirty=True, dynbench_version="0.1.0",
                            torch_version="2.13.0", machine="box", started_at="2025-01-01T00:00:00",
                        )  # fmt: skip
                        metrics = [("quality", quality + noise, unit, hib, 32),
                                   ("flops_per_sample", flops, "flops", False, 32)]  # fmt: skip
                        if task not in no_latency:
                            lat = 10 * budget + 1 + noise
                            metrics += [("latency_ms", lat, "ms", False, 1),
                                        ("peak_mem_bytes", 2**20 * (50 + 50 * budget), "bytes", False, 1),
                                        ("throughput", 1000 / lat, "samples/s", True, 1)]  # fmt: skip
                            if hw == "cuda":  # memory not tracked on this target
                                metrics = [m for m in metrics if m[0] != "peak_mem_bytes"]
                        for metric, value, u, higher, bs in metrics:
                            recs.append({**base, "metric": metric, "value": value, "unit": u,
                                         "higher_is_better": higher, "batch_size": bs})  # fmt: skip
    return pd.DataFrame(recs)


def make_samples(rows: pd.DataFrame, n: int = 40) -> pd.DataFrame:
    """n per-sample records per (run, budget); dynamic methods spread their FLOPs about the mean."""
    rng = np.random.default_rng(0)
    runs = rows[rows.metric == "flops_per_sample"].drop_duplicates(["run_key", "budget"])
    frames = []
    for run in runs.itertuples():
        spread = rng.normal(0, 0.2, n) if run.method != "dense" else np.zeros(n)
        frames.append(
            pd.DataFrame(
                {
                    "run_key": run.run_key, "task": run.task, "method": run.method,
                    "method_label": run.method_label, "budget": run.budget, "seed": run.seed,
                    "hardware": run.hardware, "sample_id": np.arange(n), "flops": run.value * (1 + spread),
                    "layers": 12, "exit_layer": np.nan, "score": 1.0, "correct": 1.0,
                }
            )
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rows = make_rows()
    out = tmp_path_factory.mktemp("report")
    # Per-sample records for one task only: keeps the test fast and covers the "no samples" branch.
    return out, write_report(rows, make_samples(rows[rows.task == "cls"]), out)


def test_writes_every_expected_file(report):
    out, written = report
    expected = [
        "cls/pareto_flops.png", "cls/pareto_latency_cpu.png", "cls/pareto_latency_cuda.png",
        "cls/pareto_memory_cpu.png", "cls/compute_hist.png", "cls/table.md",
        "lm/pareto_flops.png", "lm/table.md", "index.md", "index.html",
    ]  # fmt: skip
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(expected)
    for path in written:
        assert path.is_file()
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    # The task without timing gets no latency or memory plots.
    assert not list((out / "lm").glob("pareto_latency_*")) and not list((out / "lm").glob("pareto_memory_*"))


def test_index_links_every_file_and_explains_gaps(report):
    out, written = report
    md = (out / "index.md").read_text(encoding="utf-8")
    page = (out / "index.html").read_text(encoding="utf-8")
    for path in written:
        rel = path.relative_to(out).as_posix()
        if rel.startswith("index."):
            continue
        assert f"]({rel})" in md
        assert f'src="{rel}"' in page or f'href="{rel}"' in page
    cls, lm = md.split("## lm")
    assert "not measured (no `peak_mem_bytes` rows at batch size 1 on cuda)" in cls
    assert "Not measured on cuda: FLOPs ratio, mean layers, speedup b1, realization b1, peak mem b1 (MiB)." in cls
    assert "not measured (no `latency_ms` rows at batch size 1 on cpu)" in lm
    assert "not measured (no `peak_mem_bytes` rows at batch size 1 on cuda)" in lm
    assert "Per-sample executed FLOPs:** not measured (no per-sample records)" in lm
    assert "not measured" in page
    assert "Provenance: git `0123456789ab` (dirty) · dynbench 0.1.0 · torch 2.13.0 · machine box" in md
    # Tables are rendered in the HTML and nothing in the page points outside the report directory.
    # Four summary tables and the cls task's methods against each other (lm has no samples).
    assert page.count("<table>") == 5 and "<td" in page
    assert "### Methods against each other" in cls and "### Methods against each other" not in lm
    for target in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert (out / target).is_file()


def test_table_file_has_heading_and_pareto_marker(report):
    out, _ = report
    table = (out / "cls" / "table.md").read_text(encoding="utf-8")
    assert table.startswith("# cls\n") and "| * |" in table and "top1 (%) ↑" in table


def test_report_is_deterministic_and_handles_missing_samples(tmp_path):
    rows = make_rows(hardware=("cpu",), seeds=(0,))
    # No FLOPs rows: the report has no plot at all (fast), only tables and "not measured" notes.
    rows = rows[(rows.task == "lm") & (rows.metric != "flops_per_sample")]
    first = write_report(rows, pd.DataFrame(), tmp_path / "a")
    second = write_report(rows, None, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    index = (tmp_path / "a" / "index.md").read_text(encoding="utf-8")
    assert "Quality vs FLOPs per sample:** not measured (no `flops_per_sample` rows)" in index
    assert "Not measured on cpu: FLOPs/sample" in index


def test_empty_rows_raise():
    with pytest.raises(ValueError, match="No result rows"):
        write_report(make_rows().iloc[:0], pd.DataFrame(), "unused")


def test_markdown_to_html_escapes_and_renders():
    page = markdown_to_html("# T <x>\n\n| a | b |\n|:---|---:|\n| x\\|y | `1<2` |\n\n- **k:** v\n", title="t")
    assert "<h1>T &lt;x&gt;</h1>" in page
    assert '<td style="text-align:left">x|y</td>' in page and "<code>1&lt;2</code>" in page
    assert "<li><strong>k:</strong> v</li>" in page


def test_a_synthetic_task_is_labelled_and_a_recorded_one_is_not(tmp_path):
    rows = make_rows(hardware=("cpu",), seeds=(0,))
    rows["synthetic_data"] = rows["task"] == "cls"
    write_report(rows, None, tmp_path)
    cls, lm = (tmp_path / "index.md").read_text(encoding="utf-8").split("## lm")
    assert "**Synthetic data**" in cls and "**Synthetic data**" not in lm
    del rows["synthetic_data"]  # rows written before the column existed: nothing claimed
    write_report(rows, None, tmp_path / "old")
    assert "Synthetic data" not in (tmp_path / "old" / "index.md").read_text(encoding="utf-8")
